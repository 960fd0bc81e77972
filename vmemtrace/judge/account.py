"""Do the probes' counts for one range add up? Pure logic over the events of log/events.py.

A probe that attached can still be blind: the compiler may inline every call site and keep an
out-of-line copy nobody calls (Debian 7.3's vmemmap_alloc_block_buf is hit 0 times while its
callers allocate 3072 pages). So a count is read only when the counts around it agree with what
the kernel must have done for the range; otherwise the reason is given, and the range is judged
by its page tables (kernel/kcore.py) or not at all.
"""

from dataclasses import dataclass

from vmemtrace.judge import geometry
from vmemtrace.log.sections import Sections


@dataclass(frozen=True)
class Account:
    """None where the probes' numbers can be read, else why not."""

    populate: str | None  # the per-compound-page layout: fresh and reused PTEs
    alloc: str | None  # the vmemmap pages allocated
    init: str | None  # the struct pages initialised

    @property
    def needs_walk(self) -> bool:
        return self.populate is not None or self.alloc is not None


def _sum(sections: Sections, key: str) -> int:
    return sections.totals[key]


def coverage_problem(shape: geometry.RangeShape, sections: Sections, populate: bool,
                     alloc: bool) -> str | None:
    """Every vmemmap page of the range must have been mapped while the probes watched: by a PTE
    that vmemmap_populate_address returned, or inside a block an allocator returned outside it
    (PMD blocks; base pages before 5.19)."""
    if not sections:
        return "no __populate_section_memmap call was seen for this range"
    ptes = _sum(sections, "ptes") if populate else 0
    blocks = _sum(sections, "direct_bytes") // shape.page_size if alloc else 0
    need = geometry.vmemmap_pages_naive_least(shape)  # a block a neighbour mapped is not seen
    if ptes + blocks < need:
        return (f"the probes saw {ptes + blocks} of the range's {need} vmemmap pages mapped "
                f"({ptes} PTEs, {blocks} pages in allocated blocks): the populate or allocator "
                "probes missed calls (inlined at their call sites)")
    return None


def blind_allocator(sections: Sections, allocators: list[str]) -> str | None:
    """A vmemmap_populate_address call without a page to reuse allocates unless its PTE was
    already there; in a section being added, some must have allocated."""
    plain, fresh = _sum(sections, "plain"), _sum(sections, "fresh")
    if plain and not fresh:
        return (f"{plain} vmemmap_populate_address calls had no page to reuse, yet no allocator "
                f"probe ({', '.join(allocators) or 'none'}) returned memory during them: blind "
                "(inlined at its call sites)")
    return None


def init_problem(shape: geometry.RangeShape, rng: dict | None, decoded: bool,
                 counted: bool, calls: bool = False) -> str | None:
    """memmap_init_zone_device() calls memmap_init_compound() once per compound page of its
    loop, and __init_zone_device_page() once per struct page it initialises (mm/mm_init.c)."""
    if rng is None:
        return "memmap_init_zone_device was not seen for this range"
    if shape.pfns_per_compound <= 1:
        return None  # every pfn of the loop, one by one: the loop's bounds are its arguments
    if not decoded and not counted:
        return "neither memmap_init_compound nor __init_zone_device_page can be probed here"
    heads = -(-geometry.init_loop_pages(shape) // shape.pfns_per_compound)
    if (decoded or calls) and rng["mic_calls"] != heads:
        return (f"memmap_init_compound was hit {rng['mic_calls']} times for the {heads} compound "
                "pages initialised" + (": blind" if not rng["mic_calls"] else ""))
    if not decoded and rng["izdp_calls"] < heads:
        return (f"__init_zone_device_page was hit {rng['izdp_calls']} times, fewer than the "
                f"{heads} compound pages initialised: blind")
    return None


def account(shape: geometry.RangeShape, sections: Sections, rng: dict | None,
            sources, allocators: list[str]) -> Account:
    """The account of one range; `sources` is probes.plan.Sources, `allocators` the allocator
    targets attached (named when they are blind)."""
    alloc: str | None
    populate: str | None
    if not sources.alloc:
        alloc = "no vmemmap allocator is probed on this kernel"
    else:
        alloc = (coverage_problem(shape, sections, sources.populate, True)
                 or blind_allocator(sections, allocators))
    if not sources.populate:
        populate = "vmemmap_populate_address is not probed on this kernel"
    else:
        # Fresh and reused PTEs are told apart by the allocators' returns.
        populate = coverage_problem(shape, sections, True, sources.alloc) or alloc
    init = init_problem(shape, rng, sources.init_decoded, sources.init_pages, sources.init_calls)
    return Account(populate, alloc, init)
