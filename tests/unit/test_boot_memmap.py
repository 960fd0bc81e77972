"""A range that shares a memory section with boot memory (mm/sparse.c section_activate(): a
piece smaller than a section in an early section reuses the boot memmap): geometry's numbers,
mem_section read through kcore, and the verdicts on real lab recordings of such ranges."""

import json
import random
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.unit.kcore_image import Image
from vmemtrace.judge import geometry
from vmemtrace.kernel.kcore import SectionTable, Walker

PPS = geometry.PAGES_PER_SECTION
MIB = 256  # pfns


def shape(start, nr, ppc, boot=(), altmap=False):
    return geometry.RangeShape(start, nr, ppc, altmap=altmap, boot_sections=frozenset(boot))


def test_the_lab_range_at_5184_mib():
    """`vmemtrace lab --pmem-start 5184M` on 6.12.117, mem-2M: the namespace's pgmap covers
    [5184 MiB, 8256 MiB); sections 40 and 64 hold boot RAM too. Measured in the guest: 2944
    vmemmap pages allocated (23 whole sections), 3456 distinct pages behind the range, 221184
    struct pages initialised (that kernel carries the fix)."""
    s = shape(5184 * MIB, 3072 * MIB, 512, boot={40, 64})
    assert list(geometry.boot_pieces(s)) == [(5184 * MIB, 64 * MIB), (8192 * MIB, 64 * MIB)]
    assert geometry.vmemmap_pages_expected(s) == 2944
    assert geometry.vmemmap_pages_expected(s) + geometry.boot_vmemmap_pages(s) == 3456
    assert geometry.boot_compound_pages(s) == 64
    assert geometry.struct_pages_init_expected(s) == 221184
    assert geometry.struct_pages_init_expected(s, boot_fix=False) == 1536 * 128
    naive = shape(5184 * MIB, 3072 * MIB, 1, boot={40, 64})
    assert geometry.vmemmap_pages_naive(naive) == 23 * 512
    assert geometry.boot_vmemmap_pages(naive) == 512


def brute(s: geometry.RangeShape):
    """Per section and per compound page, the way section_activate() and
    memmap_init_zone_device() go (ppc at most a subsection, so no compound page straddles a
    piece): (allocated, boot vmemmap pages, boot compound pages, init with the fix, without)."""
    eligible = geometry.eligibility(s)[0]
    alloc = boot_pages = boot_heads = init_fix = init_old = 0
    pfn, end = s.start_pfn, s.start_pfn + s.nr_pages
    while pfn < end:
        n = min(end, (pfn // PPS + 1) * PPS) - pfn
        on_boot = n < PPS and pfn // PPS in s.boot_sections
        pages = n * 64 // 4096
        if on_boot:
            boot_pages += pages
        elif eligible:
            alloc += n // s.pfns_per_compound * min(2, s.pfns_per_compound * 64 // 4096)
        else:
            alloc += pages
        for _head in range(pfn, pfn + n, s.pfns_per_compound):
            if s.pfns_per_compound == 1:
                init_fix += 1
                init_old += 1
                continue
            per = 128 if eligible else s.pfns_per_compound
            boot_heads += on_boot
            init_fix += s.pfns_per_compound if on_boot else per
            init_old += per
        pfn += n
    return alloc, boot_pages, boot_heads, init_fix, init_old


@pytest.mark.parametrize("seed", range(40))
def test_geometry_against_a_section_by_section_count(seed):
    rng = random.Random(seed)
    ppc = rng.choice([1, 8, 64, 512])
    start = rng.randrange(40 * PPS, 60 * PPS, 512)
    nr = rng.randrange(1, 12 * PPS // 512) * 512
    edges = {start // PPS, (start + nr - 1) // PPS}
    boot = {e for e in edges if rng.random() < 0.7}
    s = shape(start, nr, ppc, boot)
    closed = (geometry.vmemmap_pages_expected(s), geometry.boot_vmemmap_pages(s),
              geometry.boot_compound_pages(s), geometry.struct_pages_init_expected(s),
              geometry.struct_pages_init_expected(s, boot_fix=False))
    assert closed == brute(s), (start, nr, ppc, boot)


def test_a_whole_section_is_never_on_the_boot_memmap():
    """section_activate() reuses the boot memmap only for nr_pages < PAGES_PER_SECTION."""
    s = shape(40 * PPS, 2 * PPS, 512, boot={40, 41})
    assert list(geometry.boot_pieces(s)) == []
    assert geometry.vmemmap_pages_expected(s) == geometry.vmemmap_pages_expected(shape(40 * PPS, 2 * PPS, 512))


@pytest.mark.parametrize("entry_size", [16, 32])
def test_early_sections_are_read_from_mem_section(tmp_path, entry_size):
    """SECTION_IS_EARLY (bit 3 of section_mem_map) in mem_section[nr / per root][nr % per
    root], for both struct mem_section sizes (CONFIG_PAGE_EXTENSION adds two words)."""
    img = Image(4, 0xFFFF888000000000, 0xFFFFEA0000000000)
    present, early = 1 << 0, 1 << 3
    flags = {40: present | early | (7 << 6), 41: present, 300: present | early, 301: present}
    img.add_mem_sections(flags, entry_size)
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore"), SectionTable(entry_size)) as w:
        assert w.boot_sections([40, 41, 300, 301, 5000]) == [40, 300]
    with Walker(symbols, str(tmp_path / "kcore"), None) as w:  # layout unknown: not read
        assert w.boot_sections([40]) is None
    blind = {k: v for k, v in symbols.items() if k != "mem_section"}
    with Walker(blind, str(tmp_path / "kcore"), SectionTable(entry_size)) as w:
        assert w.boot_sections([40]) is None


BOOT_LOGS = FIXTURES / "events" / "boot-shared"


def boot_log(release_prefix: str, name: str) -> Path:
    found = [p for p in BOOT_LOGS.iterdir() if p.name.startswith(release_prefix)]
    assert len(found) == 1, found
    return found[0] / name


def replay_doc(path: Path):
    res = run_cli("replay", "--trust-unsealed", "--json", str(path))
    return res, json.loads(res.stdout)


def checks_of(doc):
    (dev,) = doc["devices"]
    return {c["name"]: c for c in dev["checks"]}, dev


@pytest.mark.parametrize("case", ["mem-2M", "mem-4K", "dev-2M"])
@pytest.mark.parametrize("audit", [False, True])
def test_recorded_boot_shared_ranges_pass_with_the_boot_pieces_counted_apart(case, audit):
    """Real 6.12.117 recordings (`vmemtrace lab --pmem-start 5184M`: the region's first and last
    sections hold boot RAM). Before vmemtrace read mem_section these failed tail-reuse,
    accounting and the cross-check."""
    res, doc = replay_doc(boot_log("6.12", f"{case}.audit.jsonl" if audit else f"{case}.jsonl"))
    assert res.returncode == 0, res.stderr
    checks, dev = checks_of(doc)
    assert checks["boot-memmap"]["status"] == "pass"
    assert "section 40" in checks["boot-memmap"]["detail"] and "section 64" in checks["boot-memmap"]["detail"]
    assert dev["verdict"] == "pass"
    s = shape(5184 * MIB, 3072 * MIB, 512 if case == "mem-2M" else 1, boot={40, 64})
    if audit:  # the walk counts every page behind the range, the boot memmap's too
        want = (geometry.vmemmap_pages_expected(s) + geometry.boot_vmemmap_pages(s) if case == "mem-2M"
                else geometry.vmemmap_span(s.start_pfn, s.nr_pages))
    else:
        want = geometry.vmemmap_pages_expected(s) if case == "mem-2M" else geometry.vmemmap_pages_naive(s)
    assert dev["vmemmap_pages"]["observed"] == want


def test_without_mem_section_a_partial_piece_is_not_guessed(tmp_path):
    """A doctored copy of the recording, boot_sections removed (as a log from a host whose
    kcore could not be read): the 64 MiB pieces were never populated while the probes watched,
    so nothing says whether they are on the boot memmap. The verdict is error, not fail."""
    src = boot_log("6.12", "mem-2M.jsonl")
    out = tmp_path / "mem-2M.jsonl"
    lines = []
    for line in src.read_text().splitlines():
        ev = json.loads(line)
        ev.pop("boot_sections", None)
        lines.append(json.dumps(ev))
    out.write_text("\n".join(lines) + "\n")
    res, doc = replay_doc(out)
    assert res.returncode == 2, res.stderr
    checks, dev = checks_of(doc)
    assert checks["boot-memmap"]["status"] == "error"
    assert "pfn 1327104" in checks["boot-memmap"]["detail"]
    assert dev["verdict"] == "error"


def test_a_kernel_without_the_init_fix_is_said_so(tmp_path):
    """6.12.117 carries "mm/mm_init: fix uninitialized struct pages for ZONE_DEVICE": its 64
    compound pages on the boot memmap get all 512 struct pages initialised. The numbers of a
    kernel without it (128 each) pass init-skip too, with the kernel's bug said; any other
    number fails. (A doctored copy: mic_pages set to the unfixed sum, mic_max to 128.)"""
    src = boot_log("6.12", "mem-2M.jsonl")
    s = shape(5184 * MIB, 3072 * MIB, 512, boot={40, 64})
    for pages, status in ((geometry.struct_pages_init_expected(s, boot_fix=False), "pass"),
                          (geometry.struct_pages_init_expected(s, boot_fix=False) + 128, "fail")):
        out = tmp_path / f"mem-2M-{pages}.jsonl"
        lines = []
        for line in src.read_text().splitlines():
            ev = json.loads(line)
            if ev["type"] == "range":
                ev.update(mic_pages=pages, mic_max=max(128, pages - 1535 * 128))
            lines.append(json.dumps(ev))
        out.write_text("\n".join(lines) + "\n")
        _, doc = replay_doc(out)
        checks, _ = checks_of(doc)
        assert checks["init-skip"]["status"] == status, checks["init-skip"]
        if status == "pass":
            assert "lacks" in checks["init-skip"]["detail"]


def test_the_misaligned_1g_namespace_is_a_true_fail():
    """The same region with -a 1G: the pgmap starts at 5184 MiB, so its 1 GiB compound pages are
    not 1 GiB aligned and the first starts on the boot memmap; the kernel then maps every PTE of
    the sections after it onto one page (reuse_compound_section()), the heads of the second and
    third compound pages included. The optimisation's promise (a head and first tail page of
    each compound page's own) is broken: tail-reuse fails on the kernel's doing."""
    res, doc = replay_doc(boot_log("6.12", "mem-1G.jsonl"))
    assert res.returncode == 1
    checks, dev = checks_of(doc)
    assert checks["tail-reuse"]["status"] == "fail"
    assert "compound page at pfn 1589248: 0 freshly allocated" in checks["tail-reuse"]["detail"]
    assert "the kernel's doing: the range starts 16384 pages past a section boundary" in \
        checks["tail-reuse"]["detail"]
    assert checks["accounting"]["status"] == "pass"  # geometry expects those 0 allocations too


MISALIGNED = FIXTURES / "events" / "misaligned"


@pytest.mark.parametrize("start,distinct,reused", [("5184M", 257, 11775), ("5100M", 81, 8191)])
def test_the_kernel_caused_1g_failure_with_both_witnesses_agreeing(start, distinct, reused):
    """`vmemtrace lab --pmem-start 5184M|5100M --case mem-1G` on 6.12.118, recorded as verify
    and audit write logs now (sealed): tail-reuse fails and names the kernel's doing; the probes
    and the walk agree, the one page behind the range that was never allocated for it counted
    once by each (docs/findings.md); the last compound page, cut short by the range, is judged
    by both for what it holds."""
    log = next(MISALIGNED.glob(f"{start}-6.12*")) / "mem-1G.jsonl"
    res = run_cli("replay", "--json", str(log))
    assert res.returncode == 1, res.stderr
    checks, dev = checks_of(json.loads(res.stdout))
    assert checks["tail-reuse"]["status"] == "fail"
    assert "the kernel's doing" in checks["tail-reuse"]["detail"]
    assert checks["cross-check"]["status"] == "pass", checks["cross-check"]
    assert "1 of them never allocated for the range" in checks["cross-check"]["detail"]
    walk = dev["page_table_walk"]
    assert (walk["distinct"], walk["reused"]) == (distinct, reused)
    # and, on its own, the compound pages are not 1 GiB aligned: the range's start is not
    offset = {"5184M": 64, "5100M": 1004}[start]
    assert checks["compound-alignment"]["status"] == "fail"
    assert f"{offset} MiB past a 1 GiB boundary" in checks["compound-alignment"]["detail"]


@pytest.mark.parametrize("name", ["mem-2M.jsonl", "mem-2M.audit.jsonl", "mem-1G.audit.jsonl"])
def test_the_misaligned_region_s_other_logs(name):
    """The same region: 2 MiB pages pass whole, probes and walk agreeing; the 1 GiB audit
    fails on the same kernel's doing."""
    log = next(MISALIGNED.glob("5184M-6.12*")) / name
    res = run_cli("replay", "--json", str(log))
    checks, dev = checks_of(json.loads(res.stdout))
    if name.startswith("mem-2M"):
        assert res.returncode == 0 and dev["verdict"] == "pass", res.stderr
        assert "compound-alignment" not in checks  # 2 MiB pages: the start is 2 MiB aligned
    else:
        assert res.returncode == 1 and "the kernel's doing" in checks["tail-reuse"]["detail"]


def test_a_compound_page_the_range_cuts_short_is_judged_for_what_it_holds():
    """The last 1 GiB compound page of a range that ends 960 MiB into it: 3840 PTEs expected,
    not 4096."""
    s = shape(6 * 1024 * MIB, 3008 * MIB, 262144)
    last = s.start_pfn + 2 * 262144
    assert geometry.vmemmap_pages_of_compound(last, s) == 3840
    assert geometry.vmemmap_pages_of_compound(s.start_pfn, s) == 4096


CXL = FIXTURES / "events" / "cxl"


@pytest.mark.parametrize("release", ["6.12.118+deb12-amd64", "7.3.4+deb13-amd64"])
def test_a_1g_device_on_a_cxl_region_off_a_1g_boundary_fails_on_alignment_alone(release):
    """`vmemtrace lab --pmem cxl --pmem-start 9472M` (tests/lab/guest_cxl_fault.py): the
    optimisation holds, probes and walk agree, but the compound pages start at the region,
    256 MiB past a 1 GiB boundary; the aligned window's device of the same size passes."""
    for name in ("cxl-mem-1G.jsonl", "cxl-mem-1G.audit.jsonl"):
        res = run_cli("replay", "--json", str(CXL / f"9472M-{release}" / name))
        assert res.returncode == 1, res.stderr
        checks, dev = checks_of(json.loads(res.stdout))
        failed = sorted(n for n, c in checks.items() if c["status"] == "fail")
        assert failed == ["compound-alignment"], checks
        assert "pfn 2424832 (9472 MiB), 256 MiB past a 1 GiB boundary" in \
            checks["compound-alignment"]["detail"]
        assert dev["cxl"] == {"region": "region0", "decoder": "decoder0.0", "memdevs": ["mem0"],
                              "mode": "pmem"}
        if "audit" not in name:
            assert checks["cross-check"]["status"] == "pass"
            assert checks["tail-reuse"]["status"] == checks["init-skip"]["status"] == "pass"
    aligned = CXL / "9216M-6.12.118+deb12-amd64" / "mem-1G.jsonl"
    res = run_cli("replay", "--json", str(aligned))
    assert res.returncode == 0, res.stderr
    checks, dev = checks_of(json.loads(res.stdout))
    assert "compound-alignment" not in checks and dev["cxl"]["region"] == "region0"
