"""What the kernel should do for one device range: the single source of every expected number.

Pure arithmetic, no I/O. Each function mirrors the kernel code named in its docstring
(mm/sparse-vmemmap.c, mm/memory_hotplug.c, mm/mm_init.c as of 6.12; the same logic since 5.19).
x86_64 constants are defaults; every one is a parameter.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from vmemtrace.judge.layouts import TWO_PAGES, Layout

PAGE_SIZE = 4096
STRUCT_PAGE_SIZE = 64
PAGES_PER_SECTION = 1 << 15  # 128 MiB sections (SECTION_SIZE_BITS 27)
PAGES_PER_SUBSECTION = 1 << 9  # 2 MiB subsections


@dataclass(frozen=True)
class RangeShape:
    """One pgmap range as the kernel sees it."""

    start_pfn: int
    nr_pages: int
    pfns_per_compound: int = 1  # 1 << pgmap->vmemmap_shift
    altmap: bool = False
    altmap_offset: int = 0  # vmem_altmap_offset(): pfns whose struct pages the altmap holds
    feature: bool = True  # the kernel carries the compound-devmap optimisation (5.19+)
    page_size: int = PAGE_SIZE
    struct_page_size: int = STRUCT_PAGE_SIZE
    pages_per_section: int = PAGES_PER_SECTION
    # Memory sections of the range present at boot (early_section(), SECTION_IS_EARLY): a piece
    # of the range in one of them reuses the boot memmap (boot_shared()).
    boot_sections: frozenset[int] = frozenset()
    # The kernel's vmemmap layout (judge/layouts.py): how many vmemmap pages a compound page keeps.
    layout: Layout = TWO_PAGES


def first_head(shape: RangeShape) -> int:
    """The pfn of the range's first compound page: where memmap_init_zone_device()'s loop starts
    (mm/mm_init.c: the range's start, past the pfns whose struct pages an altmap holds), from
    which it lays compound pages every pfns_per_compound, wherever that is."""
    return shape.start_pfn + shape.altmap_offset


def compound_offset(shape: RangeShape) -> int:
    """How many pfns past a boundary of its own size the range's first compound page starts: 0
    for naturally aligned compound pages, as a folio is everywhere else in mm."""
    return first_head(shape) % shape.pfns_per_compound


def eligibility(shape: RangeShape) -> tuple[bool, str]:
    """Mirrors vmemmap_can_optimize() (include/linux/mm.h): no altmap, sizeof(struct page) a
    power of two, and a compound page whose memmap is larger than the pages its layout keeps."""
    sp = shape.struct_page_size
    if not shape.feature:
        return False, "the kernel lacks the compound-devmap optimisation (before 5.19)"
    if shape.altmap:
        return False, "struct pages live on the device (altmap, ndctl -M dev)"
    if sp & (sp - 1):
        return False, f"sizeof(struct page) = {sp} is not a power of two"
    if shape.pfns_per_compound <= 1:
        return False, "no compound pages (4 KiB alignment)"
    per_compound = shape.pfns_per_compound * sp // shape.page_size
    kept = shape.layout.kept
    if per_compound <= kept:
        return False, (f"a compound page's memmap is {per_compound} vmemmap page(s), "
                       f"not more than the {kept} kept")
    return True, (f"compound pages of {shape.pfns_per_compound * shape.page_size >> 10} KiB, "
                  "no altmap")


def section_pieces(start_pfn: int, nr_pages: int,
                   pages_per_section: int = PAGES_PER_SECTION) -> Iterator[tuple[int, int]]:
    """The (pfn, nr_pages) of each __populate_section_memmap() call for a range: __add_pages()
    (mm/memory_hotplug.c) cuts it at every section boundary."""
    pfn, end = start_pfn, start_pfn + nr_pages
    while pfn < end:
        n = min(end - pfn, (pfn // pages_per_section + 1) * pages_per_section - pfn)
        yield pfn, n
        pfn += n


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def boot_shared(pfn: int, n: int, shape: "RangeShape") -> bool:
    """mm/sparse.c section_activate(): a piece smaller than a section, in a section that was
    present at boot (early_section()), reuses the boot memmap already there: no
    __populate_section_memmap() for it, so nothing allocated and nothing optimised. Only a
    range's first and last pieces can be such (the middle ones are whole sections)."""
    return n < shape.pages_per_section and pfn // shape.pages_per_section in shape.boot_sections


def partial_pieces(start_pfn: int, nr_pages: int,
                   pages_per_section: int = PAGES_PER_SECTION) -> list[tuple[int, int]]:
    """The range's pieces smaller than a section (at most its first and last): the only ones
    that can share their section with boot memory."""
    groups = piece_groups(start_pfn, nr_pages, pages_per_section)
    return [(pfn, n) for pfn, n, count in groups if count == 1 and n < pages_per_section]


def boot_pieces(shape: "RangeShape") -> Iterator[tuple[int, int]]:
    """The (pfn, nr_pages) pieces of the range that live on the boot memmap."""
    for pfn, n, count in piece_groups(shape.start_pfn, shape.nr_pages, shape.pages_per_section):
        if count == 1 and boot_shared(pfn, n, shape):
            yield pfn, n


def piece_groups(start_pfn: int, nr_pages: int,
                 pages_per_section: int = PAGES_PER_SECTION) -> Iterator[tuple[int, int, int]]:
    """section_pieces() grouped: (first pfn, nr_pages, count) where the middle pieces, all whole
    sections, come as one group (their pfns step by a section), so that sums over a range cost
    O(1) whatever its size (a TiB is 8192 sections, 52 address bits 2^25)."""
    pieces = section_pieces(start_pfn, nr_pages, pages_per_section)
    first = next(pieces, None)
    if first is None:
        return
    yield first[0], first[1], 1
    rest_start = first[0] + first[1]
    end = start_pfn + nr_pages
    whole = (end - rest_start) // pages_per_section
    if whole:
        yield rest_start, pages_per_section, whole
    tail = rest_start + whole * pages_per_section
    if tail < end:
        yield tail, end - tail, 1


def _reusing_sections(pfn: int, count: int, shape: "RangeShape") -> int:
    """How many of `count` whole sections from `pfn` (stepping by a section) start inside a
    compound page larger than a subsection (reuse_compound_section() true for them)."""
    ppc, pps = shape.pfns_per_compound, shape.pages_per_section
    if ppc <= PAGES_PER_SUBSECTION:
        return 0
    offset = (pfn - shape.start_pfn) % ppc
    if ppc <= pps:  # every section starts at the same offset into a compound page
        return count if offset else 0
    # Compound pages span m sections: of each m consecutive sections one starts a compound
    # page, if any does (offset a multiple of a section).
    m = ppc // pps
    if offset % pps:
        return count
    first_aligned = ((ppc - offset) % ppc) // pps
    aligned = 0 if first_aligned >= count else (count - first_aligned + m - 1) // m
    return count - aligned


PMD_SIZE = 2 << 20  # x86_64's vmemmap block (vmemmap_populate_hugepages())


def _block(byte: int) -> int:
    return byte // PMD_SIZE


def section_blocks(section: int, shape: RangeShape) -> range:
    """The 2 MiB blocks a whole section's memmap touches (vmemmap_base is 1 GiB aligned)."""
    size = shape.pages_per_section * shape.struct_page_size
    return range(_block(section * size), _block((section + 1) * size - 1) + 1)


def straddles(shape: RangeShape) -> bool:
    """A section's memmap is not whole 2 MiB blocks (sizeof(struct page) other than 64, e.g.
    72 with KMSAN or _last_cpupid outside the flags): blocks straddle sections."""
    return (shape.pages_per_section * shape.struct_page_size) % PMD_SIZE != 0


HUGE = -1  # a block mapped whole by one PMD


def _unoptimised_alloc(shape: RangeShape, huge: frozenset) -> int:
    """vmemmap pages arch/x86/mm/init_64.c vmemmap_populate() allocates for the range, its
    pieces added in ascending order (__add_pages()), `huge` the 2 MiB blocks mapped whole before
    it (the boot memmap, a neighbour's). A piece smaller than a section maps 4 KiB pages
    (vmemmap_populate_basepages(): nothing inside a block mapped whole, nothing already
    mapped); a whole section maps 2 MiB blocks (vmemmap_populate_hugepages(): a block mapped
    whole is skipped, one holding 4 KiB PTEs gets its missing pages, vmemmap_check_pmd()).
    O(1) over whole sections: only the blocks at a piece's edges, and those mapped before, can
    hold anything when it comes."""
    S, P, pps = shape.struct_page_size, shape.page_size, shape.pages_per_section
    per_block = PMD_SIZE // P
    state = {blk: HUGE for blk in huge}  # block -> HUGE, or the end page of its 4 KiB PTEs
    total = 0
    for pfn, n, count in piece_groups(shape.start_pfn, shape.nr_pages, pps):
        if count == 1 and boot_shared(pfn, n, shape):
            continue
        a, b = pfn * S, (pfn + n * count) * S
        pa, pb, first, last = a // P, _ceil(b, P), _block(a), _block(b - 1)
        inner = {blk for blk in state if first < blk < last}
        touched = {first, last} | inner
        if n < pps:
            touched = set(range(first, last + 1))  # a partial piece is a few blocks at most
        for blk in touched:
            lo, hi = max(pa, blk * per_block), min(pb, (blk + 1) * per_block)
            st = state.get(blk)
            if st == HUGE:
                continue
            if st is None and n >= pps:
                total += per_block
                state[blk] = HUGE
                continue
            lo = max(lo, st or 0)
            total += max(0, hi - lo)
            state[blk] = max(hi, st or 0)
        if n >= pps and last - first > 1:
            total += (last - first - 1 - len(inner)) * per_block
    return total


def _outer_blocks(shape: RangeShape) -> frozenset:
    """The range's edge blocks that also hold the memmap of a section outside the range, which
    a neighbour may have mapped whole before it (only where blocks straddle sections)."""
    pps, S = shape.pages_per_section, shape.struct_page_size
    if not straddles(shape) or shape.nr_pages == 0:
        return frozenset()
    lo_sec, hi_sec = shape.start_pfn // pps, (shape.start_pfn + shape.nr_pages - 1) // pps
    out = set()
    first, last = _block(shape.start_pfn * S), _block((shape.start_pfn + shape.nr_pages) * S - 1)
    if lo_sec > 0 and first in section_blocks(lo_sec - 1, shape):
        out.add(first)
    if last in section_blocks(hi_sec + 1, shape):
        out.add(last)
    return frozenset(out)


def _boot_blocks(shape: RangeShape) -> frozenset:
    """Blocks the boot memmap maps whole: every section present at boot (sparse_init()
    populates whole sections, 2 MiB blocks on x86_64 with PSE)."""
    pps = shape.pages_per_section
    return frozenset(b for pfn, _ in boot_pieces(shape) for b in section_blocks(pfn // pps, shape))


def vmemmap_pages_naive(shape: RangeShape) -> int:
    """vmemmap pages allocated without the optimisation, the range populated on its own:
    every struct page mapped once, none for the pieces on the boot memmap (boot_shared()). With
    64-byte struct pages a whole section is one 2 MiB block (512 pages) and a partial one its
    4 KiB pages; with other sizes blocks straddle sections (_unoptimised_alloc())."""
    if straddles(shape) or shape.boot_sections:
        return _unoptimised_alloc(shape, _boot_blocks(shape))
    return sum(count * _ceil(n * shape.struct_page_size, shape.page_size)
               for _, n, count in piece_groups(shape.start_pfn, shape.nr_pages, shape.pages_per_section))


def vmemmap_pages_naive_least(shape: RangeShape) -> int:
    """The fewest the allocator can give the range unoptimised: its edge blocks shared with a
    neighbouring section's memmap may already be mapped (vmemmap_pages_naive() otherwise)."""
    outer = _outer_blocks(shape)
    if not outer:
        return vmemmap_pages_naive(shape)
    return _unoptimised_alloc(shape, _boot_blocks(shape) | outer)


def reuse_compound_section(pfn: int, shape: RangeShape) -> bool:
    """mm/sparse-vmemmap.c reuse_compound_section(): a section starting inside a compound page
    larger than a subsection reuses the previous section's last tail page for all its PTEs."""
    offset = pfn - shape.start_pfn
    return offset % shape.pfns_per_compound != 0 and shape.pfns_per_compound > PAGES_PER_SUBSECTION


def heads_in_reused_sections(shape: RangeShape) -> bool:
    """Whether the kernel maps compound heads onto a reused page: reuse_compound_section()
    measures a section's offset from the range start, so where compound pages span sections and
    the range does not start on a section boundary, every section after the first starts inside
    a compound page and is mapped whole onto compound_section_tail_page()'s page, the heads that
    fall inside it included (docs/findings.md)."""
    return (shape.pfns_per_compound > shape.pages_per_section
            and shape.start_pfn % shape.pages_per_section != 0 and eligibility(shape)[0])


def fresh_pages_of_piece(pfn: int, n: int, shape: RangeShape) -> int:
    """Freshly allocated vmemmap pages of one section piece on the optimised path, mirroring
    vmemmap_populate_compound_pages(): per compound-page chunk, the pages the layout keeps (the
    head page, and the first tail page on the two-page layout); every other PTE reuses a page.
    The shared-tail layout sets a compound order only on whole sections
    (section_set_compound_order_range()): a smaller piece keeps its whole memmap."""
    size = n * shape.struct_page_size
    if shape.layout.whole_sections_only and n < shape.pages_per_section:
        return _ceil(size, shape.page_size)
    if reuse_compound_section(pfn, shape):
        return 0
    chunk = min(size, shape.pfns_per_compound * shape.struct_page_size)
    return _ceil(size, chunk) * min(shape.layout.kept, _ceil(chunk, shape.page_size))


def vmemmap_pages_expected(shape: RangeShape) -> int:
    """vmemmap pages the kernel should allocate for the range."""
    if not eligibility(shape)[0]:
        return vmemmap_pages_naive(shape)
    total = 0
    for pfn, n, count in piece_groups(shape.start_pfn, shape.nr_pages, shape.pages_per_section):
        if count == 1:
            total += 0 if boot_shared(pfn, n, shape) else fresh_pages_of_piece(pfn, n, shape)
        else:  # whole sections: those that reuse allocate nothing, the others all the same
            fresh = fresh_pages_of_piece(shape.start_pfn, n, shape)  # as a non-reusing one
            total += (count - _reusing_sections(pfn, count, shape)) * fresh
    return total


def vmemmap_span(start_pfn: int, nr_pages: int, struct_page_size: int = STRUCT_PAGE_SIZE,
                 page_size: int = PAGE_SIZE) -> int:
    """vmemmap pages that hold the struct pages of [start_pfn, start_pfn + nr_pages): what a
    page-table walk of the range visits (kernel/kcore.py, vmemmap_backing())."""
    first = start_pfn * struct_page_size // page_size
    last = _ceil((start_pfn + nr_pages) * struct_page_size, page_size)
    return last - first


def boot_vmemmap_pages(shape: RangeShape) -> int:
    """vmemmap pages of the pieces on the boot memmap: mapped (a page-table walk finds each one
    backed by a page of its own, the boot's unoptimised memmap) but not allocated for the range."""
    return sum(vmemmap_span(pfn, n, shape.struct_page_size, shape.page_size)
               for pfn, n in boot_pieces(shape))


def _heads_in(pfn: int, n: int, shape: RangeShape) -> int:
    """Compound pages whose head pfn lies in [pfn, pfn + n) (heads step from the range start)."""
    ppc = shape.pfns_per_compound
    return _ceil(pfn + n - shape.start_pfn, ppc) - _ceil(pfn - shape.start_pfn, ppc)


def on_boot_memmap(head_pfn: int, shape: RangeShape) -> bool:
    """Whether a compound page's head lies on the boot memmap (compound_nr_pages()'s test since
    the fix, early_section() of the head's section)."""
    return any(pfn <= head_pfn < pfn + n for pfn, n in boot_pieces(shape))


def boot_compound_pages(shape: RangeShape) -> int:
    """Compound pages whose head lies on the boot memmap: their vmemmap is the boot's, mapped by
    PMDs, with no tail page reused (the probes see no populate for them, the walk no PTEs). A
    2 MiB one cannot straddle the piece's end (pieces are whole subsections); a 1 GiB one can,
    where the namespace starts inside a boot section: the sections after it then start inside
    that compound page and map every PTE onto the boot memmap's last page
    (reuse_compound_section()), and so do the heads of the compound pages that follow: a
    layout the optimisation does not promise, which tail-reuse fails."""
    if shape.pfns_per_compound <= 1:
        return 0
    return sum(_heads_in(pfn, n, shape) for pfn, n in boot_pieces(shape))


def vmemmap_pages_of_compound(head_pfn: int, shape: RangeShape) -> int:
    """PTEs behind one compound page's struct pages: all of them, or for the last compound page
    where the range cuts it short (nd_pfn_init() truncating the end), those behind the part
    the range holds: vmemmap_populate_compound_pages() maps the range's memmap, no further."""
    n = min(shape.pfns_per_compound, shape.start_pfn + shape.nr_pages - head_pfn)
    return vmemmap_span(head_pfn, n, shape.struct_page_size, shape.page_size)


def vmemmap_pages_per_compound(shape: RangeShape) -> int:
    """PTEs (vmemmap pages) that map one compound page's struct pages."""
    return _ceil(shape.pfns_per_compound * shape.struct_page_size, shape.page_size)


def compound_pages(shape: RangeShape) -> int:
    return _ceil(shape.nr_pages, shape.pfns_per_compound)


def init_loop_pages(shape: RangeShape) -> int:
    """pfns memmap_init_zone_device() walks: with an altmap it starts past the pfns whose struct
    pages the altmap holds (start_pfn = altmap->base_pfn + vmem_altmap_offset(altmap))."""
    return shape.nr_pages - shape.altmap_offset


def compound_nr_pages(shape: RangeShape) -> int:
    """mm/mm_init.c compound_nr_pages(): struct pages memmap_init_compound() initialises per
    compound page: only the kept vmemmap pages' worth when optimised (128 on the two-page
    layout; the shared tail page is initialised once, when it is allocated)."""
    if eligibility(shape)[0]:
        return shape.layout.kept * (shape.page_size // shape.struct_page_size)
    return shape.pfns_per_compound


def struct_pages_init_naive(shape: RangeShape) -> int:
    """Without the optimisation every pfn of the loop gets its struct page initialised."""
    return init_loop_pages(shape)


def struct_pages_init_expected(shape: RangeShape, boot_fix: bool = True) -> int:
    """memmap_init_zone_device(): one __init_zone_device_page() per head, then
    memmap_init_compound(head, ..., compound_nr_pages()) initialises head + tails; that is
    compound_nr_pages() struct pages per compound page, or every pfn without compound pages.

    A compound page on the boot memmap (boot_compound_pages()) has all its tails initialised
    by kernels with the 2026 fix (kernel/compat.py BOOT_MEMMAP_INIT: compound_nr_pages() checks
    early_section() of the head); without it (boot_fix=False) only compound_nr_pages() of them,
    and the rest of that unoptimised memmap is left uninitialised."""
    loop = init_loop_pages(shape)
    if shape.pfns_per_compound <= 1:
        return loop
    total = _ceil(loop, shape.pfns_per_compound) * compound_nr_pages(shape)
    if boot_fix:
        total += boot_compound_pages(shape) * (shape.pfns_per_compound - compound_nr_pages(shape))
    return total


def saved_bytes(shape: RangeShape) -> int:
    return (vmemmap_pages_naive(shape) - vmemmap_pages_expected(shape)) * shape.page_size
