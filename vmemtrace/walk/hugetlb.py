"""The vmemmap of every hugetlb folio, walked through /proc/kcore (kernel/kcore.py) and summed into
one "hugetlb" event per hugepage size (log/events.py), which judge/hvo.py judges.

A folio's row says how its vmemmap pages are mapped: how many distinct pages lie behind its PTEs,
how many tail PTEs map the head's page or the page behind the first tail, whether the head's entry
is writable and how many tails' are (HVO remaps them read-only). Folios with the same row are one
row with a count, so a terabyte of 2 MiB pages is a few rows.
"""

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmemtrace.kernel import btf, hugetlb
from vmemtrace.kernel.kcore import PageTables, Walker
from vmemtrace.log.rows import HUGETLB_ROW
from vmemtrace.probes.targets import FUNCTIONS


def folio_row(tables: PageTables, head: int, pages: int, struct_page_size: int) -> tuple:
    """One folio's counts (log/rows.py HUGETLB_ROW after its first two), and the pfns behind its
    head and its first tail (None where unmapped)."""
    hits = list(tables.vmemmap_mappings(head, pages, struct_page_size))
    mapped = [h for h in hits if h is not None]
    first = hits[0]
    second = hits[1] if len(hits) > 1 else None
    head_pfn = first[0] if first else None
    tail_pfn = second[0] if second else None
    tails = [h for h in hits[1:] if h is not None]
    row = (len(hits), len(mapped), len({h[0] for h in mapped}),
           sum(h[1] == "pte" for h in mapped), int(bool(first and first[2])),
           sum(h[0] == head_pfn for h in tails),
           sum(h[0] == tail_pfn for h in tails) if tail_pfn != head_pfn else 0,
           sum(h[2] for h in tails))
    return row, head_pfn, tail_pfn


def hvo_facts(facts) -> dict:
    """What judge/hvo.py reads of the kernel beside the walk: HVO's config symbol, switches, and
    whether struct zone has vmemmap_tails[] (None without BTF to tell)."""
    layout = btf.try_layout(facts.btf, lambda _: None, "", FUNCTIONS)  # read once per process
    config = (facts.config or {}).get("HUGETLB_PAGE_OPTIMIZE_VMEMMAP") if facts.config else None
    if facts.config is not None and config is None:
        config = "n"  # a readable config without the line: not built (it needs HUGETLB_PAGE)
    return {**hugetlb.switches().as_json(), "config": config,
            "zone_vmemmap_tails": None if layout is None else layout.zone_vmemmap_tails}


@dataclass(frozen=True)
class Snapshot:
    """The hugetlb pools and folios at one moment: what a command changed is the difference."""

    pools: dict[int, int]  # size in KiB -> nr_hugepages
    heads: dict[int, int]  # head pfn -> pages
    stale: list[int]  # pfns that read as a hugetlb head without being one (kernel/hugetlb.py)


def snapshot() -> Snapshot:
    pools = hugetlb.pools()
    folios = hugetlb.read_folios(list(pools))
    return Snapshot(pools, dict(folios.heads), folios.stale)


def walk_sizes(walker: Walker, facts, struct_page_size: int,
               progress: Callable[[str], None]) -> Iterator[dict]:
    """audit: one "hugetlb" event per hugepage size with folios in its pool, each walked."""
    now = snapshot()
    yield from _events(walker, facts, struct_page_size, progress, now, None)


def walk_changes(walker: Walker, facts, struct_page_size: int, before: Snapshot,
                 progress: Callable[[str], None]) -> Iterator[dict]:
    """verify: per hugepage size whose folios a command allocated or freed, the new folios
    walked, and the vmemmap of those freed walked again (restored: mm/hugetlb_vmemmap.c
    hugetlb_vmemmap_restore_folio())."""
    yield from _events(walker, facts, struct_page_size, progress, snapshot(), before)


def _events(walker: Walker, facts, struct_page_size: int, progress: Callable[[str], None],
            now: Snapshot, before: Snapshot | None) -> Iterator[dict]:
    hvo = hvo_facts(facts)
    tables = walker.tables()
    zones = hugetlb.populated_zones()
    for size_kb in sorted(set(now.pools) | set(before.pools if before else ())):
        pages = size_kb * 1024 // hugetlb.PAGE_SIZE
        heads = sorted(h for h, n in now.heads.items() if n == pages)
        if before is None:
            if not heads and not now.pools.get(size_kb):
                continue
            new, gone = heads, []
        else:
            new = [h for h in heads if before.heads.get(h) != pages]
            gone = sorted(h for h, n in before.heads.items()
                          if n == pages and now.heads.get(h) != n)
            if not new and not gone:
                continue
        progress(f"walking the vmemmap of {len(new)} hugetlb folios of {size_kb} kB"
                 + (f", and of {len(gone)} freed" if gone else ""))
        ev = {"type": "hugetlb", "size_kb": size_kb, "pfns_per_folio": pages,
              "nr_hugepages": now.pools.get(size_kb, 0),
              **walked(tables, new, pages, struct_page_size),
              "zones": zones, "hvo": hvo, "struct_page_size": struct_page_size,
              "page_size": hugetlb.PAGE_SIZE, "existing": before is None}
        if before is not None:
            restored = walked(tables, gone, pages, struct_page_size)
            ev.update({"pool_before": before.pools.get(size_kb, 0), "freed": len(gone),
                       "restored_rows": restored["rows"], "restored_distinct": restored["distinct"],
                       "stale_heads": len(stale_inside(now.stale, gone, pages))})
        yield ev


def stale_inside(stale: list[int], heads: list[int], pages: int) -> list[int]:
    """The stale heads that lie in these folios (freed ones: their struct pages not cleaned)."""
    starts = set(heads)
    return [pfn for pfn in stale if pfn - pfn % pages in starts]


def walked(tables: PageTables, heads: list[int], pages: int, struct_page_size: int) -> dict:
    """The folios' rows, the pages that hold all the tails of a folio (HVO's shared tail page,
    where the kernel has one) with how many folios map each, and the distinct pages behind
    them all."""
    rows: dict[tuple, list[int]] = {}
    head_pages: Counter[int] = Counter()
    tail_pages: Counter[int] = Counter()
    distinct = 0
    for head in heads:
        row, head_pfn, tail_pfn = folio_row(tables, head, pages, struct_page_size)
        entry = rows.setdefault(row, [0, head])
        entry[0] += 1
        distinct += row[2]
        if head_pfn is not None:
            head_pages[head_pfn] += 1
        counts = dict(zip(HUGETLB_ROW[2:], row, strict=True))
        one_page = counts["ptes"] > 2 and counts["on_first_tail"] == counts["ptes"] - 1
        if tail_pfn is not None and tail_pfn != head_pfn and one_page:
            tail_pages[tail_pfn] += 1
    # A page behind the tails of several folios is counted once (the shared tail page).
    shared = sorted([pfn, n] for pfn, n in tail_pages.items())
    distinct -= sum(n - 1 for _, n in shared)
    distinct -= sum(n - 1 for n in head_pages.values() if n > 1)
    return {"folios": len(heads),
            "rows": sorted([count, first, *row] for row, (count, first) in rows.items()),
            "shared_tails": shared, "heads_shared": sum(n for n in head_pages.values() if n > 1),
            "distinct": distinct}
