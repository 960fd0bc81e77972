"""From the pages behind a range's vmemmap (kernel/kcore.py) to events the ledger folds.

Pure. The walk sees the result, not the act: a vmemmap page is "fresh" when no earlier vmemmap
page of the range is backed by the same physical page, "reused" otherwise (per compound page
too: _compound()). That is exactly what
vmemmap_populate_compound_pages() leaves behind (mm/sparse-vmemmap.c): per compound page the
head's vmemmap page and the first tail vmemmap page are allocated, every further tail vmemmap
page maps the first tail page again (Documentation/mm/vmemmap_dedup.rst, "device-dax").
The compound events carry the same keys as the live ones (log/events.py), so one verdict judges both.
"""

from collections.abc import Iterable, Iterator

from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.pfnset import PfnSet

Backing = Iterable[tuple[int, str] | None]  # per vmemmap page: (backing pfn, level) or None


class Walked:
    """A walk's events: the "walk" event, then the summary of its compound pages."""

    def __init__(self, walk: dict, compounds: CompoundPages):
        self.walk, self.compounds = walk, compounds

    def __iter__(self) -> Iterator[dict]:
        yield self.walk
        if len(self.compounds):
            yield self.compounds.as_event()


def walk_events(start_pfn: int, nr_pages: int, pfns_per_compound: int, altmap: bool,
                backing: Backing, struct_page_size: int, page_size: int,
                paging: int) -> Walked:
    """One "walk" event for the range, then the summary ("compounds", source "walk") of one
    compound event per compound page whose memmap spans whole vmemmap pages, all mapped by PTEs: only
    vmemmap_populate_address() lays a compound page out page by page; a PMD-mapped vmemmap
    (altmap, or a range without compound pages) cannot share tail pages, exactly as the live
    probes, which only see PTEs, report no compound pages for it. `backing` is read once, in
    order; what is kept is one compound page's pages at a time, the set of backing pages (a bitmap)
    and the compound pages' summary (log/compounds.py)."""
    per_compound = pfns_per_compound * struct_page_size // page_size
    laid = pfns_per_compound > 1 and per_compound >= 1
    levels: dict[str, int] = {}
    seen, reused, count = PfnSet(), 0, 0
    compounds = CompoundPages("walk")
    chunk: list[tuple[tuple[int, str] | None, bool]] = []
    head = start_pfn

    def lay_out():
        if chunk and all(p is None or p[1] == "pte" for p, _ in chunk):
            compounds.append(_compound(head, start_pfn, pfns_per_compound, chunk))

    for b in backing:
        count += 1
        new = False
        if b is not None:
            levels[b[1]] = levels.get(b[1], 0) + 1
            new = seen.add(b[0])
            reused += not new
        if laid:
            chunk.append((b, new))
            if len(chunk) == per_compound:
                lay_out()
                head, chunk = head + pfns_per_compound, []
    if laid:
        lay_out()  # the last compound page, where the range cuts it short (nd_pfn_init())
    walk = {"type": "walk", "start_pfn": start_pfn, "nr_pages": nr_pages,
            "pfns_per_compound": pfns_per_compound, "altmap": altmap, "vmemmap_pages": count,
            "mapped": sum(levels.values()), "distinct": len(seen), "reused": reused,
            "levels": levels, "struct_page_size": struct_page_size, "page_size": page_size,
            "paging": paging}
    return Walked(walk, compounds)


def _compound(head_pfn: int, range_start: int, pfns_per_compound: int,
              pages: list[tuple[tuple[int, str] | None, bool]]) -> dict:
    """One compound page's vmemmap as the walk can tell it: a page is "fresh" where its backing
    page is first seen in the range, as a probe sees a page allocated for it; a backing page
    seen before, in this compound page or an earlier one, is reused (so a page the kernel maps
    from another compound page is reused, as the probes count it). The first tail page's pfn is
    kept where it is fresh, as the BPF program keeps it; the PTEs out of index order are the
    mapped ones after a hole."""
    pfns = [b[0] if b else None for b, _ in pages]
    fresh = sum(1 for b, new in pages if b is not None and new)
    head, tail = pfns[0], pfns[1] if len(pfns) > 1 else None
    tail_fresh = len(pages) > 1 and pages[1][1] and tail != head
    # As the BPF program counts them in address order: a mapped index after an unmapped one
    # was not the next, and max_index is the highest mapped index + 1.
    present = [i for i, p in enumerate(pfns) if p is not None]
    out_of_order = sum(1 for k, i in enumerate(present) if i != (present[k - 1] + 1 if k else 0))
    return {"type": "compound", "source": "walk", "head_pfn": head_pfn,
            "range_start_pfn": range_start, "pfns_per_compound": pfns_per_compound,
            "ptes": sum(1 for p in pfns if p is not None), "fresh": fresh,
            "reused": sum(1 for p in pfns if p is not None) - fresh,
            "existing": 0,  # a walk cannot tell pre-existing PTEs from new ones
            "head_fresh": int(head is not None and pages[0][1]),
            "tail_fresh": int(tail_fresh),
            "tail_pfn": tail if tail_fresh else 0,
            "on_tail": sum(1 for p in pfns[2:] if p is not None and p == tail) if tail_fresh else 0,
            "max_index": present[-1] + 1 if present else 0, "out_of_order": out_of_order}
