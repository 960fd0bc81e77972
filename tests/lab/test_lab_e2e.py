"""End to end: real Debian kernels booted in qemu, real namespaces, vmemtrace run inside.

One lab run covers every kernel with recorded fixtures (tests/fixtures/kernels/); its JSON is what every test here reads.
"""

import json
import re
import shutil

import pytest

from tests.conftest import SERIES, run_cli
from vmemtrace.lab import cases, image
from vmemtrace.probes.targets import BY_NAME, TARGETS

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    args = ["lab", "--json"]
    for s in SERIES:
        args += ["--kernel", s]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    for doc, series in zip(docs, SERIES):
        assert re.match(re.escape(series) + r"[.-]", doc["kernel"]), (series, doc["kernel"])
    return {s: d for s, d in zip(SERIES, docs)}


def targets(doc):
    return doc["check"]["targets"]


def test_6_12_populate_address_traceable_compound_pages_inlined(lab):
    t = targets(lab["6.12"])
    assert t["vmemmap_populate_address"]["availability"] == "traceable"
    assert t["vmemmap_populate_compound_pages"]["availability"] == "inlined"
    assert lab["6.12"]["check"]["feature"]["present"] is True


def test_6_1_populate_address_notrace_init_traceable(lab):
    t = targets(lab["6.1"])
    assert t["vmemmap_populate_address"]["availability"] == "notrace"
    assert t["memmap_init_zone_device"]["availability"] == "traceable"
    assert lab["6.1"]["check"]["feature"]["present"] is True


@pytest.mark.parametrize("series", SERIES)
def test_probes_attach_by_trampoline_where_btf_has_the_function(lab, series):
    """Every lab kernel has BPF trampolines and BTF: each traceable target with programs is
    planned as fentry (and fexit), and attached so in every case (a trampoline the kernel
    refused would have fallen back to kprobes and shown in the verdict's strategy); a clone
    stays a counting kprobe."""
    doc = lab[series]
    assert doc["check"]["trampolines"]["possible"] is True, doc["check"]["trampolines"]
    for name, t in targets(doc).items():
        if t["availability"] == "traceable" and BY_NAME[name].programs:
            assert t["strategy"] == BY_NAME[name].trampoline_attach, (name, t)
        elif t["availability"] == "clone":
            assert t["strategy"] in ("count", "unused"), (name, t)
    assert targets(doc)["memmap_init_zone_device"]["strategy"] == "fentry+fexit"
    # Skipped runs are read where the kernel counts them for every kind attached: trampolines
    # from 5.12, kprobes (7.3's clones) from 6.7 (kernel/compat.py).
    counted = series != "5.10"
    for case in doc["cases"]:
        assert case["result"]["strategy"] == doc["check"]["strategy"], case["case"]
        assert ("skipped_runs" in case["result"]["bpf_errors"]) == counted, case["case"]


def test_5_10_feature_absent(lab):
    assert lab["5.10"]["check"]["feature"]["present"] is False


@pytest.mark.parametrize("series", SERIES)
def test_classification_agrees_with_grep(lab, series):
    """The guest also grepped the raw files: classify from those lines independently."""
    doc = lab[series]
    ev = doc["evidence"]
    ksyms = {line.split()[2] for line in ev["kallsyms"]}
    aff = {line.split()[0] for line in ev["available_filter_functions"]}
    for t in TARGETS:
        got = targets(doc)[t.name]["availability"]
        clones = [s for s in ksyms if re.fullmatch(re.escape(t.name) + r"\.\w+(\.\d+)*", s)]
        if t.name in ksyms:
            assert got == ("traceable" if t.name in aff else "notrace"), t.name
        elif clones:
            assert got == "clone", t.name
        else:
            assert got in ("inlined", "absent"), t.name


@pytest.mark.parametrize("series", SERIES)
def test_every_case_creates_its_namespace_and_check_can_trace(lab, series):
    doc = lab[series]
    assert doc["check_exit"] == 0, doc.get("check_error")
    assert doc["bcc_libraries"] >= 3  # libbcc, libLLVM, libclang-cpp: loaded from RAM (lab/libdisk.py)
    assert [c["case"] for c in doc["cases"]] == list(cases.DEFAULT_CASES)
    for entry in doc["cases"]:
        case, result = cases.CASES[entry["case"]], entry["result"]
        assert result["verdict"] == "pass", result
        assert entry["namespace"]["map"] == case.map_mode
        assert entry["namespace"]["align"] == case.align
        assert entry["namespace"]["chardev"] == "dax0.0"
        assert result["devices"][0]["align"] == case.align


def cases_of(doc):
    return {c["case"]: c["result"] for c in doc["cases"]}


@pytest.mark.parametrize("series", ("6.12", "7.3"))
def test_verify_numbers_by_probes(lab, series):
    r = cases_of(lab[series])
    for case, vm, init in (("mem-2M", 3072, 196608), ("mem-1G", 6, 384)):
        (d,) = r[case]["devices"]
        assert r[case]["verdict"] == "pass"
        assert d["vmemmap_pages"] == {"naive": 12288, "expected": vm, "observed": vm}
        assert d["struct_pages_initialized"]["observed"] == init
        assert d["optimized"] is True
        assert {c["name"]: c["status"] for c in d["checks"]}["tail-reuse"] == "pass"
    for case in ("dev-2M", "mem-4K"):
        (d,) = r[case]["devices"]
        assert r[case]["verdict"] == "pass" and d["optimized"] is False
        assert d["vmemmap_pages"]["observed"] == 12288
    for case, result in r.items():  # every number from the probes, their counts adding up
        (d,) = result["devices"]
        # 6.7+ counts probe runs skipped for recursion, and the tracer reads the count back
        assert result["bpf_errors"].get("skipped_runs") == 0, (case, result["bpf_errors"])
        assert d["probe_account"] == {"populate": None, "alloc": None, "init": None}, case
        assert d["unjudged"] == [], case


def test_7_3_probe_plan(lab):
    """Debian 7.3: vmemmap_alloc_block_buf probeable but inlined at its call sites; the init
    functions only as clones, whose hits are counted; the facts from BTF."""
    doc = lab["7.3"]
    t = targets(doc)
    assert t["memmap_init_compound"]["availability"] == "clone"
    assert t["memmap_init_compound"]["strategy"] == "count"
    assert t["__init_zone_device_page"]["strategy"] == "count"
    assert t["vmemmap_alloc_block"]["strategy"] == "fentry+fexit"
    facts = doc["check"]["facts_from"]
    assert {k: facts[k] for k in ("layout", "section_pgmap", "vpa_ptpfn")} == {
        "layout": "BTF", "section_pgmap": "BTF", "vpa_ptpfn": "BTF"}
    # every argument read by name in BTF; the clones (never in BTF) are counted, not read
    assert facts["arguments"] in ("BTF", "BTF and version"), facts
    assert doc["check"]["kallsyms_data"]["init_top_pgt"] is True  # listed as "T" there


def statuses(device):
    return {c["name"]: c["status"] for c in device["checks"]}


def test_6_1_verify_sees_reuse_by_the_page_table_walk(lab):
    """6.1's populate functions are notrace: verify walks each range's vmemmap page tables
    once memmap_init_zone_device returns, and says so in its strategy."""
    doc = lab["6.1"]
    assert doc["check"]["strategy"]["vmemmap_populate_address"] == "walk"
    assert doc["check"]["page_table_walk"]["possible"] is True
    r = cases_of(doc)
    for case, vm in (("mem-2M", 3072), ("mem-1G", 6)):
        (d,) = r[case]["devices"]
        assert r[case]["strategy"]["vmemmap_populate_address"] == "walk"
        checks = {c["name"]: c for c in d["checks"]}
        assert checks["tail-reuse"]["status"] == "pass"
        assert checks["tail-reuse"]["detail"].endswith("(page-table walk)")
        assert checks["init-skip"]["status"] == "pass"
        assert d["vmemmap_pages"] == {"naive": 12288, "expected": vm, "observed": vm}
    assert r["mem-1G"]["devices"][0]["struct_pages_initialized"]["observed"] == 384
    for case in ("dev-2M", "mem-4K"):
        (d,) = r[case]["devices"]
        assert r[case]["verdict"] == "pass" and d["optimized"] is False
        assert d["vmemmap_pages"]["observed"] == 12288
        no_false = next(c for c in d["checks"] if c["name"] == "no-false-optimisation")
        assert no_false["status"] == "pass" and "no vmemmap PTE reused" in no_false["detail"]


def _numbers(device):
    return {k: device[k] for k in ("device", "start_pfn", "nr_pages", "compound_pages", "altmap",
                                    "expected_optimized", "optimized")} | {
        "vmemmap": device["vmemmap_pages"]}


@pytest.mark.parametrize("series", SERIES)
def test_audit_after_each_case_reports_what_verify_reported(lab, series):
    """audit walks the devices that exist after the case: the same range, the same vmemmap
    numbers as live verify, tail-reuse and accounting judged, init-skip skipped."""
    for entry in lab[series]["cases"]:
        audit, result = entry["audit"], entry["result"]
        assert entry["audit_exit"] == 0 and audit["verdict"] == "pass", audit
        (a,), (v,) = audit["devices"], result["devices"]
        assert _numbers(a) == _numbers(v), entry["case"]
        s = statuses(a)
        assert s["init-skip"] == "skip" and s["accounting"] == "pass"
        if v["expected_optimized"]:
            assert s["tail-reuse"] == "pass"
        else:
            assert s["no-false-optimisation"] == "pass"


@pytest.mark.parametrize("series", ("6.12", "7.3"))
def test_verify_cross_check_passes(lab, series):
    for case, result in cases_of(lab[series]).items():
        (d,) = result["devices"]
        cross = next(c for c in d["checks"] if c["name"] == "cross-check")
        assert cross["status"] == "pass", (case, cross)
        assert f"{d['vmemmap_pages']['observed']} distinct vmemmap pages" in cross["detail"]


def test_5_10_verify_passes_as_feature_absent(lab):
    for case, result in cases_of(lab["5.10"]).items():
        (d,) = result["devices"]
        assert result["verdict"] == "pass", case
        assert d["optimized"] is False and d["expected_optimized"] is False
        assert statuses(d)["feature-present"] == "skip"
        # 5.10 still logs its own count with pr_info: an independent witness of ours.
        assert d["kernel_log"]["pages"] == d["struct_pages_initialized"]["observed"], case


def test_guest_that_does_not_boot_shows_its_console(lab, tmp_path):
    """A truncated kernel image: the guest dies early; one error line plus the console tail."""
    release = lab["6.12"]["kernel"]
    root = image.cache_dir() / "root"
    broken = tmp_path / "vmlinuz-broken"
    with open(root / "boot" / f"vmlinuz-{release}", "rb") as src, open(broken, "wb") as dst:
        dst.write(src.read(2 << 20))
    modules = root / "lib/modules" / release
    headers = root / "usr/src" / f"linux-headers-{release}"  # its build link is the guest's path
    res = run_cli("lab", "--kernel", str(broken), "--modules", str(modules), "--headers",
                  str(headers), "--case", "mem-2M", "--timeout", "120")
    assert res.returncode == 2
    assert "console|" in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert re.match(r"vmemtrace: the \S+ guest (did not (boot or crashed|finish)|kernel panicked)", last), last
    assert shutil.which("qemu-system-x86_64")


def test_a_debian_package_by_name_boots_that_exact_build_from_the_cache(lab):
    """After the module's lab run everything is cached: no build step is announced."""
    release = lab["6.1"]["kernel"]
    res = run_cli("lab", "--kernel", f"linux-image-{release}", "--exec", "uname -r")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == release
    assert "debootstrap" not in res.stderr and "installing" not in res.stderr
    assert "packing" not in res.stderr  # nor is BCC's library disk packed again


@pytest.mark.parametrize("package", ["linux-image-6.1.0-9999-amd64", "linux-image-7.3.9999+deb13-amd64"])
def test_an_unknown_debian_package_is_one_line_and_exit_2(lab, package):
    res = run_cli("lab", "--kernel", package, "--exec", "true")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vmemtrace: unknown kernel package {package}: the lab's "), res.stderr
    assert "Traceback" not in res.stderr


def test_a_kernel_you_built_traces_with_its_build_tree(lab, tmp_path):
    """`--kernel PATH --modules DIR --headers DIR`: the modules copied into the guest root, the
    build tree mounted for BCC. Stands in for a kernel built by hand: Debian's 6.12 image, its
    modules without their build link, and its split headers merged into one build tree, booted
    from another cache whose root has none of that kernel's files: a hard-linked copy of the
    lab's root without its 6.12 image, modules and headers (a second debootstrap would take two
    minutes of the suite to build the same Debian packages)."""
    import subprocess

    release = lab["6.12"]["kernel"]
    root = image.cache_dir() / "root"
    kernel = tmp_path / "bzImage"
    shutil.copy(root / "boot" / f"vmlinuz-{release}", kernel)
    modules = tmp_path / "modules" / release
    shutil.copytree(root / "lib/modules" / release, modules, symlinks=True,
                    ignore=lambda d, names: ["build", "source", image.KERNEL_MARKER])
    build = tmp_path / "linux"
    abi = release.rsplit("-", 1)[0]
    subprocess.run(["cp", "-a", str(root / f"usr/src/linux-headers-{abi}-common"), str(build)], check=True)
    subprocess.run(["cp", "-a", "--remove-destination", f"{root}/usr/src/linux-headers-{release}/.",
                    str(build)], check=True)
    shutil.copy(root / f"usr/src/linux-headers-{abi}-common/Makefile", build / "Makefile")
    cache = tmp_path / "cache" / "vmemtrace"
    cache.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(root), str(cache / "root")], check=True)
    for own in (f"boot/vmlinuz-{release}", f"lib/modules/{release}", f"usr/src/linux-headers-{release}",
                f"usr/src/linux-headers-{abi}-common"):
        # unlinked, never written: the copies share their files with the lab's root
        path = cache / "root" / own
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for verdict in image.cache_dir().glob("kvm-probe-*"):  # whether KVM boots it: asked once
        shutil.copy(verdict, cache)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    res = run_cli("lab", "--json", "--kernel", str(kernel), "--modules", str(modules),
                  "--headers", str(build), "--case", "mem-2M", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["kernel"] == release and doc["check"]["headers"] == f"/lib/modules/{release}/build"
    (case,) = doc["cases"]
    assert case["result"]["verdict"] == "pass"
    assert case["result"]["devices"][0]["vmemmap_pages"]["observed"] == 3072
