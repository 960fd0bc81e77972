"""Classification of probe targets on the recorded kernels, against docs/kernels.md's table."""

import json

import pytest

from tests.conftest import kernel_root, run_cli
from vmemtrace.probes import plan as P
from vmemtrace.probes.readiness import assess, check_report, read_facts


def report(prefix):
    facts = read_facts(kernel_root(prefix), with_bcc=False)
    return check_report(facts, assess(facts))


def test_6_12_traces_the_populate_path():
    t = report("6.12")["targets"]
    assert t["vmemmap_populate_address"]["availability"] == P.TRACEABLE
    assert t["vmemmap_populate_address"]["strategy"] == "kprobe+kretprobe"
    assert t["vmemmap_populate_compound_pages"]["availability"] == P.INLINED
    assert t["vmemmap_populate_compound_pages"]["strategy"] == "fallback"
    assert t["memmap_init_zone_device"]["strategy"] == "kprobe+kretprobe"
    # This build has it only as a clone, and memmap_init_compound's nr_pages tell the same
    # with one hit per compound page: not attached (so never alerted on as "not attached").
    assert t["__init_zone_device_page"]["availability"] == P.CLONE
    assert t["__init_zone_device_page"]["strategy"] == P.UNUSED


def test_6_1_populate_functions_are_notrace():
    r = report("6.1")
    t = r["targets"]
    for name in ("vmemmap_populate_address", "__populate_section_memmap", "vmemmap_alloc_block_buf"):
        assert t[name]["availability"] == P.NOTRACE, name
        assert t[name]["strategy"] == "unavailable", name
    assert t["memmap_init_zone_device"]["availability"] == P.TRACEABLE
    assert t["memmap_init_compound"]["availability"] == P.TRACEABLE
    assert r["feature"]["present"] is True


def test_6_1_notrace_populate_is_read_by_the_walk_where_kcore_is_there(tmp_path):
    """The fixture tree has no /proc/kcore: the walk is refused by name. Give it one (the
    kallsyms excerpt carries the data symbols with their addresses) and the two targets whose
    result is in the page tables take the walk; the rest stays unavailable."""
    import shutil

    t = report("6.1")["targets"]
    assert "no page-table walk either: no /proc/kcore" in t["vmemmap_populate_address"]["reason"]
    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.1"), root)
    (root / "proc/kcore").write_bytes(b"")
    facts = read_facts(root, with_bcc=False)
    assert facts.walk_blocker is None
    r = check_report(facts, assess(facts))
    assert r["page_table_walk"]["possible"] is True
    assert {n for n, how in r["strategy"].items() if how == P.WALK_STRATEGY} == {
        "vmemmap_populate_address", "vmemmap_alloc_block_buf", "vmemmap_alloc_block",
        "altmap_alloc_block_buf"}
    assert r["strategy"]["__populate_section_memmap"] == "unavailable"


def test_5_10_lacks_the_feature():
    r = report("5.10")
    assert r["feature"]["present"] is False
    assert "5.19" in r["feature"]["evidence"]
    t = r["targets"]
    assert t["vmemmap_populate_address"]["availability"] == P.ABSENT
    assert t["memmap_init_compound"]["availability"] == P.ABSENT
    assert t["memmap_init_zone_device"]["availability"] == P.TRACEABLE


def test_blacklisted_target_is_not_attached(tmp_path):
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.12"), root)
    (root / "sys/kernel/debug/kprobes/blacklist").write_text(
        "0xffffffff961fde10-0xffffffff961fdf00\tvmemmap_populate_address\n")
    t = {s.name: s for s in assess(read_facts(root, with_bcc=False)).plan}
    assert t["vmemmap_populate_address"].availability == P.BLACKLISTED
    assert t["vmemmap_populate_address"].strategy == "unavailable"


@pytest.mark.parametrize("replacement", [
    "# CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP is not set",
    "",  # what an arm64 or s390 config holds: the symbol has no prompt, so no line at all
])
def test_arch_gate_unset_means_no_feature(tmp_path, replacement):
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.12"), root)
    cfg = next((root / "boot").glob("config-*"))
    cfg.write_text(cfg.read_text().replace("CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP=y", replacement))
    r = check_report(read_facts(root, with_bcc=False), assess(read_facts(root, with_bcc=False)))
    assert r["feature"]["present"] is False
    assert "ARCH_WANT_OPTIMIZE_DAX_VMEMMAP is not set" in r["feature"]["evidence"]


def test_no_arch_gate_before_6_4():
    """6.1 has no gate symbol in its config (Debian's 6.1.0-56, measured), and optimises."""
    from vmemtrace.kernel import compat

    assert compat.arch_gate((6, 1, 0)) is None
    assert compat.arch_gate((6, 4, 0)) == "ARCH_WANT_OPTIMIZE_VMEMMAP"
    assert compat.arch_gate((6, 12, 0)) == "ARCH_WANT_OPTIMIZE_DAX_VMEMMAP"
    r = check_report(read_facts(kernel_root("6.1"), with_bcc=False),
                     assess(read_facts(kernel_root("6.1"), with_bcc=False)))
    assert r["feature"]["present"] is True


def test_check_json_on_fixture_names_missing_headers(series):
    """The fixture trees carry no kernel headers: check must say so and exit 2, in one line."""
    res = run_cli("check", "--json", "--root", str(kernel_root(series)))
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["kernel"].startswith(series)
    assert doc["headers"] is None
    assert any("no kernel headers" in b for b in doc["blockers"])
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("vmemtrace: cannot trace:")


def test_7_3_counts_the_init_clones_and_probes_every_allocator():
    r = report("7.3")
    t = r["targets"]
    assert t["memmap_init_compound"]["availability"] == P.CLONE
    assert t["memmap_init_compound"]["strategy"] == P.COUNT
    assert t["__init_zone_device_page"]["strategy"] == P.COUNT
    assert "its hits counted" in t["memmap_init_compound"]["reason"]
    for name in ("vmemmap_alloc_block_buf", "vmemmap_alloc_block", "altmap_alloc_block_buf"):
        assert t[name]["strategy"] == "kprobe+kretprobe", name
    assert r["kallsyms_data"]["init_top_pgt"] is True  # "T" in 7.3's kallsyms
    assert r["config"]["source"] == "/lib/modules/7.3.4+deb13-amd64/config"


def test_a_kernel_where_nothing_can_be_seen_cannot_trace(tmp_path):
    """6.1 without the kallsyms data symbols (no walk) and with the init functions blacklisted:
    only memmap_init_zone_device is left, which names ranges but judges nothing. It used to say
    can_trace true, and every verify then "passed" on nothing."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.1"), root)
    ks = root / "proc/kallsyms"
    ks.write_text("".join(l + "\n" for l in ks.read_text().splitlines()
                          if l.split()[2] not in ("init_top_pgt", "page_offset_base", "vmemmap_base")))
    (root / "sys/kernel/debug/kprobes/blacklist").write_text(
        "0xffffffff81000000-0xffffffff81000100\tmemmap_init_compound\n"
        "0xffffffff81000100-0xffffffff81000200\t__init_zone_device_page\n")
    facts = read_facts(root, with_bcc=False)
    r = check_report(facts, assess(facts))
    assert r["can_trace"] is False
    assert any("nothing could be verified" in b for b in r["blockers"])


@pytest.mark.parametrize("arch_symbol,machine,gate,present,says", [
    # arm64 selects no gate: the kernel provably does not optimise, and that is the answer
    ("CONFIG_ARM64=y", "aarch64", "", False, "does not optimise since 87a7ae75d738"),
    # riscv selects the gate (6.11+) and optimises: vmemtrace cannot look there
    ("CONFIG_RISCV=y", "riscv64", "CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP=y", True, "optimises since 6.11"),
    # book3s64: radix or hash decides, which no file here says
    ("CONFIG_PPC64=y", "ppc64le", "CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP=y", None, "radix"),
])
def test_other_architectures_are_refused_with_what_their_kernel_does(tmp_path, arch_symbol, machine,
                                                                      gate, present, says):
    """Probes and walk are x86_64's: a kernel of another architecture (its config says which)
    is refused in one line naming what that kernel does, never traced as if it were x86."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.12"), root)
    cfg = next((root / "boot").glob("config-*"))
    text = cfg.read_text().replace("CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP=y", gate)
    cfg.write_text(text + arch_symbol + "\n")
    facts = read_facts(root, with_bcc=False)
    assert facts.machine == machine
    r = check_report(facts, assess(facts))
    assert r["feature"]["present"] is present
    assert r["blockers"][0].startswith(f"vmemtrace observes x86_64 kernels only; on {machine}")
    assert says in r["blockers"][0]
    assert "x86_64 paging only" in r["page_table_walk"]["reason"]
    res = run_cli("check", "--root", str(root))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert machine in res.stderr


def test_trampolines_need_x86_64_btf_a_jit_and_the_trampoline_code():
    from vmemtrace.kernel import trampoline
    from vmemtrace.kernel.kallsyms import Kallsyms

    has = Kallsyms({trampoline.SYMBOL}, {}, {})
    ok = dict(machine="x86_64", version=(6, 12), config={"BPF_JIT": "y"}, syms=has,
              btf="/sys/kernel/btf/vmlinux", btf_read=True)
    assert trampoline.blocker(**ok) is None
    for change, says in ((dict(machine="aarch64"), "x86_64 only"),
                         (dict(version=(5, 4)), "older than 5.5"),
                         (dict(btf=None), "no kernel BTF"),
                         (dict(btf_read=False), "could not be read"),
                         (dict(config={}), "without CONFIG_BPF_JIT"),
                         (dict(syms=Kallsyms(set(), {}, {})), "not in kallsyms")):
        assert says in trampoline.blocker(**{**ok, **change}), change


def test_the_fixture_kernels_say_why_they_use_kprobes():
    """The recorded trees carry no BTF: check says so, and the plan keeps kprobes."""
    r = report("6.12")
    assert r["trampolines"] == {"possible": False,
                                "reason": "no kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)"}
    assert r["targets"]["memmap_init_zone_device"]["reason"].endswith(
        "kprobes, not a BPF trampoline: no kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)")


def test_without_kprobes_a_kernel_with_trampolines_can_still_trace():
    import dataclasses

    facts = read_facts(kernel_root("6.12"), with_bcc=False)
    config = {k: v for k, v in facts.config.items() if k != "KPROBES"}
    no_kprobes = dataclasses.replace(facts, config=config)
    assert any("CONFIG_KPROBES" in b for b in assess(no_kprobes).blockers)
    with_trampolines = dataclasses.replace(
        no_kprobes, trampoline_blocker=None,
        btf_functions=frozenset({"memmap_init_zone_device", "memmap_init_compound",
                                 "__populate_section_memmap", "vmemmap_populate_address",
                                 "vmemmap_alloc_block"}))
    ready = assess(with_trampolines)
    assert not any("KPROBES" in b for b in ready.blockers), ready.blockers
    strategy = {s.name: s.strategy for s in ready.plan}
    assert strategy["memmap_init_zone_device"] == "fentry+fexit"
    assert strategy["memmap_init_compound"] == "fentry"
    assert strategy["vmemmap_alloc_block_buf"] == "unavailable"  # not in that BTF, no kprobes


def test_perf_buffers_refused_is_a_reason_not_to_trace():
    """Asked of the running kernel (a CPU that does not exist is always refused), said as a
    blocker; a recorded root is never asked."""
    import dataclasses

    from vmemtrace.kernel import perf

    said = perf.output_blocker(cpu=1 << 20)
    assert said.startswith("perf_event_open of a BPF output event (the perf buffers) is refused: ")
    facts = read_facts(kernel_root("6.12"), with_bcc=False)
    assert facts.perf_blocker is None
    assert said in assess(dataclasses.replace(facts, perf_blocker=said, privileged=True)).blockers


def test_check_says_whether_probes_may_attach_by_trampoline():
    res = run_cli("check", "--root", str(kernel_root("7.3")))
    (line,) = [l for l in res.stdout.splitlines() if l.startswith("BPF trampolines")]
    assert line.split(None, 2)[2] == "no: no kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)"


def test_attach_kprobe_plans_kprobes_where_trampolines_would_attach():
    import dataclasses

    from vmemtrace.probes.targets import FUNCTIONS

    facts = dataclasses.replace(read_facts(kernel_root("6.12"), with_bcc=False),
                                trampoline_blocker=None, btf_functions=frozenset(FUNCTIONS))
    auto = {s.name: s for s in assess(facts).plan}
    kprobe = {s.name: s for s in assess(facts, attach="kprobe").plan}
    by_trampoline = [n for n, s in auto.items() if s.strategy in P.TRAMPOLINE]
    assert by_trampoline  # the real 6.12 root attaches these by trampoline
    for name in by_trampoline:
        assert kprobe[name].strategy not in P.TRAMPOLINE and P.is_attached(kprobe[name].strategy)
        assert kprobe[name].reason.endswith("not a BPF trampoline: --attach kprobe"), kprobe[name]
