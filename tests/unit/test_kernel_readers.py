"""The readers on excerpts of real kernels' files (captured in lab guests)."""

import gzip
from pathlib import Path

import pytest

from tests.conftest import SERIES, kernel_root
from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import config, ftrace, kallsyms, release


def test_parse_version():
    assert release.parse_version("6.12.117+deb12-amd64") == (6, 12, 117)
    assert release.parse_version("6.1.0-56-amd64") == (6, 1, 0)
    assert release.parse_version("5.10.0-46-amd64") == (5, 10, 0)
    with pytest.raises(ValueError):
        release.parse_version("vmlinuz")


def test_config_reads_set_and_unset_options():
    root = kernel_root("6.1")
    opts, source = config.read_config(root, release.read_release(root))
    assert source == "/boot/config-6.1.0-56-amd64"
    assert opts["KPROBES"] == "y"
    assert opts["DEV_DAX"] == "m"
    assert opts["KPROBE_EVENTS_ON_NOTRACE"] == "n"  # "# CONFIG_... is not set"
    assert config.enabled(opts, "DEV_DAX") is True
    assert config.enabled(opts, "KPROBE_EVENTS_ON_NOTRACE") is False
    assert config.enabled(opts, "NO_SUCH_OPTION") is False
    assert config.enabled(None, "KPROBES") is None


def test_config_prefers_proc_config_gz(tmp_path):
    (tmp_path / "proc").mkdir()
    text = (kernel_root("6.12") / "boot").glob("config-*").__next__().read_text()
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(text.encode()))
    opts, source = config.read_config(tmp_path, "whatever")
    assert source == "/proc/config.gz"
    assert opts["ARCH_WANT_OPTIMIZE_DAX_VMEMMAP"] == "y"


def test_config_absent(tmp_path):
    assert config.read_config(tmp_path, "6.1.0-56-amd64") == (None, None)


def test_kallsyms_local_global_and_data_symbols():
    syms = kallsyms.read_kallsyms(kernel_root("6.1"))
    assert syms.has_function("vmemmap_populate_address")  # "t": static, still in kallsyms
    assert syms.has_function("memmap_init_zone_device")  # "T"
    assert syms.has_data("init_top_pgt") and syms.has_data("__pgtable_l5_enabled")
    assert not syms.has_function("vmemmap_populate_compound_pages")


def test_kallsyms_clone_is_not_the_function():
    syms = kallsyms.read_kallsyms(kernel_root("6.12"))
    assert not syms.has_function("__init_zone_device_page")
    assert syms.clones_of("__init_zone_device_page") == ["__init_zone_device_page.constprop.0"]


def test_kallsyms_wanted_filter_and_module_column():
    text = ("ffffffffc0a01000 t dax_pmem_probe\t[dax_pmem]\n"
            "ffffffff8b64ab90 T memmap_init_zone_device\n"
            "ffffffff8b64ab90 t foo.isra.0\n")
    syms = kallsyms.parse_kallsyms(text, wanted={"memmap_init_zone_device", "foo"})
    assert syms.text == {"memmap_init_zone_device"}
    assert syms.clones_of("foo") == ["foo.isra.0"]
    # names that only start or end like a wanted one are other symbols; data keeps its address
    text = ("ffffffff8b000000 T memmap_init_zone_device_x\n"
            "ffffffff8b000010 T __memmap_init_zone_device\n"
            "ffffffff8b000020 t foo.cold\n"
            "ffffffff8c000000 D vmemmap_base\n"
            "ffffffff8c000008 d vmemmap_base.1\n")
    syms = kallsyms.parse_kallsyms(text, wanted={"memmap_init_zone_device", "foo", "vmemmap_base"})
    assert syms.text == set() and syms.clones_of("foo") == ["foo.cold"]
    assert syms.addresses == {"vmemmap_base": 0xffffffff8c000000}


def test_kallsyms_wanted_search_equals_full_parse():
    for series in SERIES:
        text = (kernel_root(series) / "proc/kallsyms").read_text()
        full = kallsyms.parse_kallsyms(text)
        wanted = {"memmap_init_zone_device", "memmap_init_compound", "vmemmap_populate_address",
                  "__init_zone_device_page", "init_top_pgt", "vmemmap_base"}
        some = kallsyms.parse_kallsyms(text, wanted)
        assert some.text == full.text & wanted
        assert some.clones == {k: v for k, v in full.clones.items() if k in wanted}
        assert some.addresses == {k: v for k, v in full.addresses.items() if k in wanted}


def test_filter_functions_and_tracefs():
    root = kernel_root("6.1")
    assert ftrace.tracefs(root) == root / "sys/kernel/tracing"
    funcs = ftrace.read_filter_functions(root)
    assert "memmap_init_zone_device" in funcs
    assert "vmemmap_populate_address" not in funcs  # notrace on Debian 6.1
    assert ftrace.parse_filter_functions("foo [mod]\nbar\n\n") == {"foo", "bar"}
    text = "foo_x\nx_foo\nbar [mod]\nbar\nbaz\n"
    assert ftrace.parse_filter_functions(text, {"foo", "bar", "qux"}) == {"bar"}
    assert ftrace.parse_filter_functions(text, {"baz"}) == {"baz"}
    assert ftrace.read_filter_functions(Path("/nonexistent")) is None


def test_kprobe_blacklist_format():
    text = "0xffffffff81000000-0xffffffff81000010\tdo_int3\n0xffffffff81000100-0xffffffff81000110\tnotify_die\n"
    assert ftrace.parse_kprobe_blacklist(text) == {"do_int3", "notify_die"}


def test_leftover_kprobe_events_of_dead_bcc_tracers():
    """kprobe_events lines as BCC's legacy interface writes them (bcc src/cc/libbpf.c)."""
    from vmemtrace.kernel import leftovers

    text = ("r64:kprobes/r_memmap_init_zone_device_bcc_4242 memmap_init_zone_device\n"
            "p:kprobes/p_vmemmap_populate_address_bcc_17 vmemmap_populate_address\n"
            "p:kprobes/p_memmap_init_compound_constprop_0_bcc_99 memmap_init_compound.constprop.0\n"
            "p:kprobes/p_do_sys_open_bcc_4242 do_sys_open\n"
            "p:kprobes/myprobe memmap_init_zone_device\n")
    found = leftovers.stale(text, ["memmap_init_zone_device", "vmemmap_populate_address",
                                   "memmap_init_compound"], alive=lambda pid: pid == 17)
    assert [(f.event, f.pid) for f in found] == [
        ("r_memmap_init_zone_device_bcc_4242", 4242),
        ("p_memmap_init_compound_constprop_0_bcc_99", 99)]
    assert str(found[0]) == ("kprobes/r_memmap_init_zone_device_bcc_4242 on "
                             "memmap_init_zone_device (pid 4242, gone)")


def test_kmsg_cursor_returns_at_eof(tmp_path):
    """Where the log gives EOF rather than EAGAIN (a plain file here), the cursor returns what
    it read instead of looping (it used to allocate without bound)."""
    from vmemtrace.kernel.kmsg import KmsgCursor

    log = tmp_path / "kmsg"
    log.write_text("")
    cursor = KmsgCursor(str(log))
    with open(log, "a") as fh:
        fh.write("6,1,2,-;memmap_init_zone_device initialised 786432 pages in 28ms\n")
    assert cursor.messages() == ["memmap_init_zone_device initialised 786432 pages in 28ms"]
    assert cursor.messages() == []
    cursor.close()


def _broken_root(tmp_path, series, rel, content):
    """A copy of a recorded kernel's tree with one file replaced (a directory when content is
    None)."""
    import shutil

    from tests.conftest import kernel_root

    root = tmp_path / "k"
    shutil.copytree(kernel_root(series), root)
    path = root / rel.format(release=(root / "proc/sys/kernel/osrelease").read_text().strip())
    if path.exists():
        path.unlink() if path.is_file() else shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return root


@pytest.mark.parametrize("rel,content,message", [
    ("boot/config-{release}", b"CONFIG_KPROBES=y\n\xff\xfe CONFIG_X=\x80\n", None),
    ("boot/config-{release}", None, "cannot read it"),
    ("proc/config.gz", __import__("gzip").compress(b"CONFIG_KPROBES=y\n" * 100, mtime=0)[:40], "/proc/config.gz"),
    ("proc/sys/kernel/osrelease", b"", "not a kernel release"),
    ("proc/sys/kernel/osrelease", b"\xff\xfegarbage\n", "not a kernel release"),
    ("sys/kernel/debug/kprobes/blacklist", b"0x1-0x2\t\xff\xfe\n", None),
    ("sys/kernel/debug/kprobes/blacklist", None, None),
    ("sys/kernel/security/lockdown", b"\xff[none]\n", None),
])
def test_kernel_readers_never_trace_back(tmp_path, rel, content, message):
    """Bad kernel files: one line naming the file and exit 2, or read as well as they can be;
    never a traceback (each of these used to give one, or click's "Aborted!" and exit 1)."""
    from tests.conftest import run_cli

    res = run_cli("check", "--root", str(_broken_root(tmp_path, "6.12", rel, content)))
    assert "Traceback" not in res.stderr and "Aborted" not in res.stderr, res.stderr
    assert res.returncode == 2  # the fixture trees have no headers: never "can trace"
    assert res.stderr.count("\n") == 1, res.stderr
    if message:
        assert message in res.stderr, res.stderr


def test_nr_memmap_pages_not_a_number():
    from vmemtrace.kernel.vmstat import parse_nr_memmap_pages

    with pytest.raises(VmemtraceError, match="/proc/vmstat: nr_memmap_pages is not a count"):
        parse_nr_memmap_pages("nr_free_pages 1\nnr_memmap_pages abc\n")


def test_an_empty_kallsyms_is_its_own_diagnosis(tmp_path):
    """What systemd's ProtectKernelTunables= leaves of /proc/kallsyms: an empty file. Said as
    such, not as every probe target "inlined"."""
    from tests.conftest import run_cli

    root = _broken_root(tmp_path, "6.12", "proc/kallsyms", b"")
    res = run_cli("check", "--root", str(root))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "cannot read /proc/kallsyms: it reads empty" in res.stderr
    assert "ProtectKernelTunables" in res.stderr


def test_each_reason_not_to_trace_has_a_code():
    from vmemtrace.probes.readiness import Blocker, cannot_trace

    err = cannot_trace([Blocker("no_headers", "no kernel headers"), Blocker("no_bcc", "no BCC")])
    assert err.reason == "no_headers" and str(err) == "cannot trace: no kernel headers; no BCC"
