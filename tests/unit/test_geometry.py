"""geometry: the expected numbers, against the patch series' arithmetic, docs/kernels.md's measured
numbers, and properties that must hold for any range (hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vmemtrace.judge import geometry as g

GiB_PFNS = (1 << 30) >> 12
TWO_MiB, ONE_GiB = 512, 262144


def shape(nr, ppc, **kw):
    return g.RangeShape(start_pfn=5 * GiB_PFNS, nr_pages=nr, pfns_per_compound=ppc, **kw)


def test_lab_notes_numbers_3GiB():
    s2, s1g, s4k = shape(3 * GiB_PFNS, TWO_MiB), shape(3 * GiB_PFNS, ONE_GiB), shape(3 * GiB_PFNS, 1)
    assert (g.vmemmap_pages_naive(s2), g.vmemmap_pages_expected(s2)) == (12288, 3072)
    assert g.struct_pages_init_expected(s2) == 196608 and g.compound_pages(s2) == 1536
    assert (g.vmemmap_pages_expected(s1g), g.struct_pages_init_expected(s1g)) == (6, 384)
    assert g.vmemmap_pages_expected(s4k) == 12288 and g.struct_pages_init_expected(s4k) == 786432
    dev = shape(3 * GiB_PFNS, TWO_MiB, altmap=True, altmap_offset=12800)
    assert g.eligibility(dev)[0] is False
    assert g.struct_pages_init_expected(dev) == 1511 * 512  # measured: 1511 x 512


def test_patch_series_per_TiB():
    tib = 1 << 28  # pfns in 1 TiB
    s2 = shape(tib, TWO_MiB)
    assert g.vmemmap_pages_naive(s2) * 4096 == 16 << 30
    assert g.vmemmap_pages_expected(s2) * 4096 == 4 << 30
    assert g.vmemmap_pages_expected(shape(tib, ONE_GiB)) * 4096 == 8 << 20
    assert g.compound_nr_pages(s2) == 128


def test_1GiB_page_spans_eight_sections():
    pieces = list(g.section_pieces(5 * GiB_PFNS, GiB_PFNS))
    assert len(pieces) == 8
    s = shape(GiB_PFNS, ONE_GiB)
    fresh = [g.fresh_pages_of_piece(p, n, s) for p, n in pieces]
    assert fresh == [2, 0, 0, 0, 0, 0, 0, 0]  # later sections reuse the previous tail page


def test_unaligned_range_start_is_cut_at_the_section_boundary():
    start = 5 * GiB_PFNS + 3 * TWO_MiB  # 6 MiB into a section
    pieces = list(g.section_pieces(start, g.PAGES_PER_SECTION))
    assert pieces == [(start, g.PAGES_PER_SECTION - 3 * TWO_MiB), (5 * GiB_PFNS + g.PAGES_PER_SECTION, 3 * TWO_MiB)]


def test_partial_compound_page_at_the_end():
    # 3 GiB + 1 MiB at 2 MiB pages: the last chunk is half a compound page, still 2 fresh pages.
    s = shape(3 * GiB_PFNS + 256, TWO_MiB)
    assert g.vmemmap_pages_expected(s) == 3072 + 2
    assert g.vmemmap_pages_naive(s) == 12288 + 4


def test_eligibility_reasons():
    assert "altmap" in g.eligibility(shape(GiB_PFNS, TWO_MiB, altmap=True))[1]
    assert "4 KiB" in g.eligibility(shape(GiB_PFNS, 1))[1]
    assert "lacks" in g.eligibility(shape(GiB_PFNS, TWO_MiB, feature=False))[1]
    assert "power of two" in g.eligibility(shape(GiB_PFNS, TWO_MiB, struct_page_size=72))[1]
    assert not g.eligibility(shape(GiB_PFNS, 128))[0]  # 128 x 64 B = 2 vmemmap pages: nothing to save
    assert g.eligibility(shape(GiB_PFNS, 256))[0]


ranges = st.builds(
    lambda start_sub, nr_sub, shift, altmap: (start_sub * 512, nr_sub * 512, 1 << shift, altmap),
    st.integers(min_value=2560, max_value=1 << 22),  # subsection-aligned starts above 5 GiB
    st.integers(min_value=1, max_value=1 << 14),  # up to 16 GiB
    st.sampled_from([0, 9, 18]),  # 4 KiB, 2 MiB, 1 GiB: what device-dax offers on x86_64
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(ranges)
def test_properties(r):
    start, nr, ppc, altmap = r
    start -= start % ppc if ppc <= nr else 0  # device-dax ranges are aligned to their pages
    s = g.RangeShape(start, nr, ppc, altmap=altmap)
    pieces = list(g.section_pieces(start, nr))
    # The pieces partition the range and none crosses a section boundary.
    assert sum(n for _, n in pieces) == nr
    assert all(p // g.PAGES_PER_SECTION == (p + n - 1) // g.PAGES_PER_SECTION for p, n in pieces)
    assert all(a + m == b for (a, m), (b, _) in zip(pieces, pieces[1:]))
    naive, expected = g.vmemmap_pages_naive(s), g.vmemmap_pages_expected(s)
    assert naive == -(-nr * 64 // 4096) or len(pieces) > 1
    assert 0 < expected <= naive
    assert g.saved_bytes(s) == (naive - expected) * 4096 >= 0
    eligible = g.eligibility(s)[0]
    assert eligible == (not altmap and ppc > 128)
    if not eligible:
        assert expected == naive
        assert g.struct_pages_init_expected(s) == (nr if ppc == 1 else -(-nr // ppc) * ppc)
    else:
        # Two vmemmap pages kept per compound page (or per piece of one, for partial ones).
        assert expected >= 2
        if start % ppc == 0 and nr % ppc == 0:
            assert expected == 2 * g.compound_pages(s)
            assert g.struct_pages_init_expected(s) == 128 * g.compound_pages(s)
        assert g.struct_pages_init_expected(s) <= 128 * -(-nr // ppc)


def kernel_loop(shape, mapped_before=()):
    """What arch/x86/mm/init_64.c vmemmap_populate() allocates, written out page by page: each
    __populate_section_memmap() piece in ascending order; a piece smaller than a section maps
    4 KiB pages (vmemmap_populate_basepages(): none already mapped, none inside a 2 MiB block
    mapped whole), a whole section walks its 2 MiB blocks (vmemmap_populate_hugepages()): one
    with no PMD gets a whole block, one mapped whole is skipped (vmemmap_check_pmd()), one
    holding PTEs gets its missing 4 KiB pages. `mapped_before`: blocks a neighbour (or the boot
    memmap) mapped whole first."""
    S, P, per = shape.struct_page_size, shape.page_size, 512
    huge, ptes, total = set(mapped_before), set(), 0
    for pfn, n in g.section_pieces(shape.start_pfn, shape.nr_pages):
        if g.boot_shared(pfn, n, shape):
            continue
        a, b = pfn * S, (pfn + n) * S
        if n < g.PAGES_PER_SECTION:
            for page in range(a // P, -(-b // P)):
                if page // per not in huge and page not in ptes:
                    ptes.add(page)
                    total += 1
            continue
        addr = a
        while addr < b:
            blk = addr // (2 << 20)
            nxt = min((blk + 1) * (2 << 20), b)
            if blk in huge:
                pass
            elif not any(p // per == blk for p in ptes):
                huge.add(blk)
                total += per
            else:
                for page in range(addr // P, -(-nxt // P)):
                    if page not in ptes:
                        ptes.add(page)
                        total += 1
            addr = nxt
    return total


def _brute_expected(shape):
    """vmemmap_pages_expected() as one loop over every section piece (the kernel's own order)."""
    if not g.eligibility(shape)[0]:
        return kernel_loop(shape)
    return sum(g.fresh_pages_of_piece(pfn, n, shape)
               for pfn, n in g.section_pieces(shape.start_pfn, shape.nr_pages))


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 1 << 22).map(lambda p: p * g.PAGES_PER_SUBSECTION),
       sections=st.integers(1, 40), extra=st.integers(0, 63),
       shift=st.sampled_from([0, 9, 12, 15, 18, 20]), sps=st.sampled_from([56, 64, 72, 80]))
def test_closed_form_sums_equal_the_loop(start, sections, extra, shift, sps):
    """The O(1) sums over whole sections equal the loop over every piece, for compound pages
    smaller than, equal to and larger than a section, at any subsection-aligned start."""
    nr = sections * g.PAGES_PER_SECTION + extra * g.PAGES_PER_SUBSECTION
    shape = g.RangeShape(start, nr, pfns_per_compound=1 << shift, struct_page_size=sps)
    assert g.vmemmap_pages_expected(shape) == _brute_expected(shape)
    assert g.vmemmap_pages_naive(shape) == kernel_loop(shape)


@settings(max_examples=400, deadline=None)
@given(start=st.integers(8, 1 << 16).map(lambda p: p * g.PAGES_PER_SUBSECTION),
       sections=st.integers(0, 12), extra=st.integers(0, 63),
       sps=st.sampled_from([56, 64, 72, 80]), boot=st.sets(st.sampled_from(["first", "last"])),
       neighbours=st.sets(st.sampled_from(["below", "above"])))
def test_unoptimised_allocation_is_the_kernels_loop(start, sections, extra, sps, boot, neighbours):
    """For 56, 64, 72 and 80-byte struct pages: vmemmap_pages_naive() is what the kernel's loop
    allocates for the range alone, vmemmap_pages_naive_least() what it allocates when the
    neighbouring sections had mapped the 2 MiB blocks they share with it, and whatever the
    neighbours did the count lies between the two. Pieces on the boot memmap included."""
    nr = sections * g.PAGES_PER_SECTION + extra * g.PAGES_PER_SUBSECTION
    if nr == 0:
        return
    pps = g.PAGES_PER_SECTION
    edges = {"first": start // pps, "last": (start + nr - 1) // pps}
    shape = g.RangeShape(start, nr, 1, struct_page_size=sps,
                         boot_sections=frozenset(edges[e] for e in boot))
    boot_blocks = {b for pfn, _ in g.boot_pieces(shape) for b in g.section_blocks(pfn // pps, shape)}
    alone = kernel_loop(shape, boot_blocks)
    assert g.vmemmap_pages_naive(shape) == alone
    outer = set()
    if "below" in neighbours:
        outer |= set(g.section_blocks(edges["first"] - 1, shape))
    if "above" in neighbours:
        outer |= set(g.section_blocks(edges["last"] + 1, shape))
    crowded = kernel_loop(shape, boot_blocks | outer)
    assert g.vmemmap_pages_naive_least(shape) <= crowded <= alone
    if neighbours == {"below", "above"}:
        assert g.vmemmap_pages_naive_least(shape) == crowded
    if sps == 64:  # blocks are sections: nothing a neighbour does changes the count
        assert crowded == alone == g.vmemmap_pages_naive_least(shape)


def test_a_72_byte_section_alone_gets_two_whole_blocks():
    """The issue's example: a 128 MiB section of 72-byte struct pages has a 2.25 MiB memmap;
    the allocator hands out whole 2 MiB blocks, 1024 pages where the memmap spans 576."""
    s = g.RangeShape(40 * g.PAGES_PER_SECTION, g.PAGES_PER_SECTION, 1, struct_page_size=72)
    assert g.vmemmap_span(s.start_pfn, s.nr_pages, 72) == 576
    assert g.vmemmap_pages_naive(s) == 1024 == kernel_loop(s)
    # its second block also holds section 41's memmap: mapped by that neighbour first, it is not allocated again
    assert g.vmemmap_pages_naive_least(s) == 512


def test_sums_over_the_whole_physical_space_take_a_few_steps(monkeypatch):
    """2^40 pages (52 address bits) are 2^25 sections: summed by groups, not one by one (a log
    claiming such a range used to keep replay busy for minutes)."""
    calls = []
    real = g.fresh_pages_of_piece
    monkeypatch.setattr(g, "fresh_pages_of_piece", lambda *a: calls.append(a) or real(*a))
    shape = g.RangeShape(1 << 18, (1 << 40) - (1 << 19), pfns_per_compound=1 << 18)
    assert g.vmemmap_pages_expected(shape) == 2 * (shape.nr_pages >> 18)
    assert len(calls) <= 3
