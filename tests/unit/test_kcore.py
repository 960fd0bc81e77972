"""The page-table walker on kcore-format images built by tests/unit/kcore_image.py: 4- and 5-level
paging, 4 KiB PTE and 2 MiB PMD vmemmap mappings, KASLR-moved bases, and its refusals."""

import random
import struct
from pathlib import Path

import pytest

from tests.unit.kcore_image import Image
from vmemtrace.errors import VmemtraceError
from vmemtrace.judge import geometry, verdict
from vmemtrace.kernel.kcore import Kcore, Walker, kcore_path, layout, walk_blocker
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.walk.backing import walk_events


def list_walk(*args):
    """walk_events' events as a list (the walk event and its compound pages' summary)."""
    return list(walk_events(*args))


# Default and KASLR-moved bases (Documentation/arch/x86/x86_64/mm.rst: the direct map and the
# vmemmap move in 1 GiB (PUD) steps under CONFIG_RANDOMIZE_MEMORY).
BASES = {4: [(0xFFFF888000000000, 0xFFFFEA0000000000), (0xFFFF9A3C40000000, 0xFFFFD31D80000000)],
         5: [(0xFF11000000000000, 0xFFD4000000000000), (0xFF3A9C0000000000, 0xFFE1400000000000)]}
SHAPES = [(levels, mapping) for levels in (4, 5) for mapping in ("pte", "pmd")]
START_PFN = 0x140000  # 5 GiB, where the lab's pmem starts
DATA_PHYS = 0x150000000  # device/RAM pages backing the vmemmap (never read by the walk)


def compound_layout(img: Image, start_pfn: int, n_compound: int, per_compound: int, rng):
    """vmemmap_populate_compound_pages()' result: per compound page two fresh pages, every
    further tail vmemmap page on the first tail page. Fresh pages at random physical spots."""
    free = rng.sample(range(0x1000), 2 * n_compound)
    for c in range(n_compound):
        head_va = img.vmemmap_va(start_pfn + c * per_compound * 64)
        head, tail = (DATA_PHYS + p * 4096 for p in free[2 * c:2 * c + 2])
        img.map_4k(head_va, head)
        for i in range(1, per_compound):
            img.map_4k(head_va + i * 4096, tail)


@pytest.mark.parametrize("levels,mapping", SHAPES)
@pytest.mark.parametrize("kaslr", [0, 1])
def test_walk_returns_the_backing_page_of_every_vmemmap_page(tmp_path, levels, mapping, kaslr):
    rng = random.Random(levels * 10 + kaslr)
    pob, vmb = BASES[levels][kaslr]
    img = Image(levels, pob, vmb)
    nr_pages = 4 * 512 if mapping == "pte" else 2 * 32768  # 4 compound pages / 2 PMD blocks
    if mapping == "pte":
        compound_layout(img, START_PFN, 4, 8, rng)
    else:
        for block in range(2):  # one section = one 2 MiB PMD block of struct pages
            img.map_2m(img.vmemmap_va(START_PFN + block * 32768), DATA_PHYS + block * (2 << 20))
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore")) as w:
        assert w.layout.levels == levels
        assert (w.layout.page_offset_base, w.layout.vmemmap_base) == (pob, vmb)
        got = list(w.backing(START_PFN, nr_pages, 64))
    want = [img.expected[img.vmemmap_va(START_PFN) + i * 4096] for i in range(len(got))]
    assert got == [(phys >> 12, level) for phys, level in want]
    assert len(got) == nr_pages * 64 // 4096


@pytest.mark.parametrize("levels", [4, 5])
def test_walked_compound_layout_passes_the_same_checks_as_live_probes(tmp_path, levels):
    """The walk's events go through the ledger and verdict: tail-reuse and accounting pass,
    and one remapped tail page makes tail-reuse fail, naming its compound page."""
    from vmemtrace.judge.ledger import fold

    rng = random.Random(levels)
    img = Image(levels, *BASES[levels][1])
    compound_layout(img, START_PFN, 8, 8, rng)
    # Break compound page 5: its last tail vmemmap page gets a page of its own.
    bad_head = START_PFN + 5 * 512
    img.map_4k(img.vmemmap_va(bad_head) + 7 * 4096, DATA_PHYS + 0x2000 * 4096)
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore")) as w:
        backing = list(w.backing(START_PFN, 8 * 512, 64))
    events = list_walk(START_PFN, 8 * 512, 512, False, backing, 64, 4096, 5)
    walk, summary = events
    assert (walk["vmemmap_pages"], walk["mapped"], walk["distinct"], walk["reused"]) == (64, 64, 17, 47)
    assert walk["levels"] == {"pte": 64}
    compounds = CompoundPages.from_event(summary).kept()  # all in one section: kept whole
    assert [c["head_pfn"] for c in compounds] == [START_PFN + i * 512 for i in range(8)]
    header = {"type": "header", "kernel": "test", "version": [6, 12, 0], "strategy": {}, "walk": "audit",
              "feature": {"present": True, "evidence": "test image"}}
    doc = verdict.evaluate(fold([header] + events))
    checks = {c["name"]: c for c in doc["devices"][0]["checks"]}
    assert checks["tail-reuse"]["status"] == "fail"
    assert f"compound page at pfn {bad_head}" in checks["tail-reuse"]["detail"]
    assert checks["accounting"]["status"] == "fail"  # 17 distinct pages, not 16
    assert checks["init-skip"]["status"] == "skip"


def test_unmapped_vmemmap_is_none_and_fails_range_complete(tmp_path):
    from vmemtrace.judge.ledger import fold

    img = Image(4, *BASES[4][0])
    compound_layout(img, START_PFN, 2, 8, random.Random(1))
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore")) as w:
        backing = list(w.backing(START_PFN, 3 * 512, 64))  # one compound page more than mapped
    assert backing[16:] == [None] * 8 and None not in backing[:16]
    header = {"type": "header", "kernel": "test", "version": [6, 12, 0], "strategy": {}, "walk": "audit",
              "feature": {"present": True, "evidence": "test image"}}
    doc = verdict.evaluate(fold([header] + list_walk(START_PFN, 3 * 512, 512, False, backing,
                                                       64, 4096, 4)))
    checks = {c["name"]: c for c in doc["devices"][0]["checks"]}
    assert checks["range-complete"]["status"] == "fail"
    assert "8 of the range's 24 vmemmap pages are not mapped" in checks["range-complete"]["detail"]


@pytest.mark.parametrize("levels", [4, 5])
def test_paging_depth_from_the_direct_map_when_the_symbol_is_gone(tmp_path, levels):
    img = Image(levels, *BASES[levels][1], l5_symbol=False)
    img.map_4k(img.vmemmap_va(START_PFN), DATA_PHYS)
    symbols = img.write(tmp_path / "kcore")
    assert "__pgtable_l5_enabled" not in symbols
    with Kcore(str(tmp_path / "kcore")) as k:
        assert layout(k, symbols).levels == levels


def test_expected_numbers_match_geometry_for_a_walked_1g_layout(tmp_path):
    """A 1 GiB compound page's 4096 vmemmap pages: 2 fresh, 4094 on the first tail page,
    as geometry expects for one compound page."""
    img = Image(5, *BASES[5][0])
    compound_layout(img, 0x180000, 1, 4096, random.Random(3))
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore")) as w:
        backing = list(w.backing(0x180000, 262144, 64))
    walk = list_walk(0x180000, 262144, 262144, False, backing, 64, 4096, 5)
    shape = geometry.RangeShape(0x180000, 262144, 262144)
    assert walk[0]["distinct"] == geometry.vmemmap_pages_expected(shape) == 2
    (c,) = CompoundPages.from_event(walk[1]).kept()
    assert (c["fresh"], c["reused"], c["on_tail"]) == (2, 4094, 4094)


def test_refusals_are_one_line(tmp_path):
    img = Image(4, *BASES[4][0])
    img.map_4k(img.vmemmap_va(START_PFN), DATA_PHYS)
    symbols = img.write(tmp_path / "kcore")
    (tmp_path / "notelf").write_bytes(b"\0" * 128)
    with pytest.raises(VmemtraceError, match="not a little-endian ELF64 core file"):
        Kcore(str(tmp_path / "notelf"))
    with pytest.raises(VmemtraceError, match="CONFIG_PROC_KCORE"):
        Kcore(str(tmp_path / "missing"))
    no_sym = {k: v for k, v in symbols.items() if k != "vmemmap_base"}
    with pytest.raises(VmemtraceError, match="vmemmap_base is not in /proc/kallsyms"):
        Walker(no_sym, str(tmp_path / "kcore"))
    with pytest.raises(VmemtraceError, match="hides addresses"):
        Walker(dict(symbols, init_top_pgt=0), str(tmp_path / "kcore"))
    with Kcore(str(tmp_path / "kcore")) as k:
        with pytest.raises(VmemtraceError, match="is in no segment"):
            k.read(0xFFFFFFFF90000000, 8)


def test_walk_blocker_reads_the_root(tmp_path):
    full = {"init_top_pgt": 1, "page_offset_base": 2, "vmemmap_base": 3}
    assert "x86_64 paging only" in walk_blocker(tmp_path, full, "aarch64")
    assert "CONFIG_PROC_KCORE" in walk_blocker(tmp_path, full, "x86_64")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kcore").write_bytes(b"")
    assert "CONFIG_KALLSYMS_ALL" in walk_blocker(tmp_path, {"init_top_pgt": 1}, "x86_64")
    assert "hides addresses" in walk_blocker(tmp_path, dict(full, vmemmap_base=0), "x86_64")
    (tmp_path / "sys/kernel/security").mkdir(parents=True)
    (tmp_path / "sys/kernel/security/lockdown").write_text("none integrity [confidentiality]\n")
    assert "confidentiality" in walk_blocker(tmp_path, full, "x86_64")
    (tmp_path / "sys/kernel/security/lockdown").write_text("[none] integrity confidentiality\n")
    assert walk_blocker(tmp_path, full, "x86_64") is None


def test_pmd_mapped_compound_pages_yield_no_compound_layout(tmp_path):
    """The altmap path (ndctl -M dev) maps a 2 MiB-aligned device's vmemmap with PMDs even
    though its pgmap has compound pages: like the live probes, the walk reports no per-compound
    layout for it, only the distinct pages behind it."""
    img = Image(5, *BASES[5][1])
    img.map_2m(img.vmemmap_va(START_PFN), DATA_PHYS)
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore")) as w:
        backing = list(w.backing(START_PFN, 32768, 64))
    events = list_walk(START_PFN, 32768, 512, True, backing, 64, 4096, 5)
    assert len(events) == 1
    assert (events[0]["distinct"], events[0]["reused"], events[0]["levels"]) == (512, 0, {"pmd": 512})


@pytest.mark.parametrize("phentsize", [0, 8])
def test_a_core_file_with_impossible_program_headers_is_one_line(tmp_path, phentsize):
    img = Image(4, 0xFFFF888000000000, 0xFFFFEA0000000000)
    img.write(tmp_path / "kcore")
    data = bytearray((tmp_path / "kcore").read_bytes())
    struct.pack_into("<H", data, 54, phentsize)  # e_phentsize
    (tmp_path / "kcore").write_bytes(bytes(data))
    with pytest.raises(VmemtraceError, match=f"program headers of {phentsize} bytes"):
        Kcore(str(tmp_path / "kcore"))


def test_a_masked_or_renamed_kcore(tmp_path, monkeypatch):
    """A container runtime masks /proc/kcore with /dev/null: said so, with the way out; the live
    system's kcore can be named by VMEMTRACE_KCORE (the host's /proc mounted elsewhere)."""
    full = {"init_top_pgt": 1, "page_offset_base": 2, "vmemmap_base": 3}
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kcore").symlink_to("/dev/null")
    assert "masked by a character device" in walk_blocker(tmp_path, full, "x86_64")
    monkeypatch.setenv("VMEMTRACE_KCORE", str(tmp_path / "host/proc/kcore"))
    assert kcore_path(tmp_path) == tmp_path / "proc/kcore"  # a recorded tree keeps its own
    assert kcore_path(Path("/")) == tmp_path / "host/proc/kcore"
    assert "which VMEMTRACE_KCORE names" in walk_blocker(Path("/"), full, "x86_64")


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("c_bit,symbol", [(47, "sme_me_mask"), (51, "sme_me_mask"),
                                          (47, "physical_mask")])
def test_the_memory_encryption_bit_is_not_an_address_bit(tmp_path, levels, c_bit, symbol):
    """AMD SME/SEV hosts set the C-bit in every table entry: the walker takes it out (by
    sme_me_mask, or the kernel's physical_mask); without either it would read the next table
    at a wrong address."""
    rng = random.Random(c_bit + levels)
    pob, vmb = BASES[levels][1]
    img = Image(levels, pob, vmb, c_bit=c_bit, mask_symbol=symbol)
    compound_layout(img, START_PFN, 4, 8, rng)
    symbols = img.write(tmp_path / "kcore")
    with Walker(symbols, str(tmp_path / "kcore")) as w:
        got = list(w.backing(START_PFN, 4 * 512, 64))
    want = [img.expected[img.vmemmap_va(START_PFN) + i * 4096] for i in range(len(got))]
    assert got == [(phys >> 12, level) for phys, level in want]
    blind = {k: v for k, v in symbols.items() if k != symbol}
    with pytest.raises(VmemtraceError):
        with Walker(blind, str(tmp_path / "kcore")) as w:
            list(w.backing(START_PFN, 4 * 512, 64))
