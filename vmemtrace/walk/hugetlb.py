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
    # a readable config without the line: not built (it needs HUGETLB_PAGE)
    config = None if facts.config is None else facts.config.get("HUGETLB_PAGE_OPTIMIZE_VMEMMAP", "n")
    return {**hugetlb.switches().as_json(), "config": config,
            "zone_vmemmap_tails": None if layout is None else layout.zone_vmemmap_tails}


@dataclass(frozen=True)
class Snapshot:
    """The hugetlb pools and folios at one moment: what a command changed is the difference."""

    pools: dict[int, int]  # size in KiB -> nr_hugepages
    heads: dict[int, int]  # head pfn -> pages


def snapshot() -> Snapshot:
    pools = hugetlb.pools()
    folios = hugetlb.read_folios(list(pools))
    return Snapshot(pools, dict(folios.heads))


def walk_sizes(walker: Walker, facts, struct_page_size: int,
               progress: Callable[[str], None]) -> Iterator[dict]:
    """audit: one "hugetlb" event per hugepage size with folios in its pool, each walked."""
    yield from _events(walker, facts, struct_page_size, progress, snapshot(), None)


def walk_changes(walker: Walker, facts, struct_page_size: int, before: Snapshot,
                 progress: Callable[[str], None]) -> Iterator[dict]:
    """verify: per hugepage size whose folios a command allocated or freed, the new folios
    walked, and the vmemmap of those freed walked again (restored: mm/hugetlb_vmemmap.c
    hugetlb_vmemmap_restore_folio())."""
    yield from _events(walker, facts, struct_page_size, progress, snapshot(), before)


class Watch:
    """The exporter's view of the hugetlb pools: every folio walked again whenever a pool or
    HVO's switches change, and the folios freed since the last walk walked again (restored).
    The folios that came between two walks with HVO on at both, and the switches unchanged,
    were allocated with HVO on: where all of a size's folios did, the size is judged as verify
    judges (not `existing`). HVO turned off and on again between two polls would go unseen."""

    def __init__(self, walker: Walker, facts, struct_page_size: int,
                 progress: Callable[[str], None]):
        self.walker, self.facts, self.page, self.progress = walker, facts, struct_page_size, progress
        self.state: tuple | None = None  # (pools, switches) at the last walk
        self.last: Snapshot | None = None
        self.watched: set[int] = set()  # heads seen arrive with HVO on before and after

    def poll(self) -> list[dict] | None:
        """The events of a new walk where something changed since the last one, else None."""
        switches = hugetlb.switches()
        state = (hugetlb.pools(), switches)
        if state == self.state:
            return None
        now = snapshot()
        if now.pools != state[0] or hugetlb.pools() != state[0]:
            return None  # a pool growing or shrinking while read: walked once it holds still
        on_throughout = (self.state is not None and switches == self.state[1]
                         and switches.sysctl == 1)
        self.watched = allocated_with_hvo_on(self.watched, self.last, now, on_throughout)
        events = list(_events(self.walker, self.facts, self.page, self.progress, now, self.last,
                              whole=True))
        for ev in events:
            pages = ev["pfns_per_folio"]
            ev["existing"] = not {h for h, n in now.heads.items() if n == pages} <= self.watched
        self.state, self.last = state, now
        return events


def allocated_with_hvo_on(known: set[int], last: Snapshot | None, now: Snapshot,
                          on_throughout: bool) -> set[int]:
    """The heads known to have been allocated with HVO on: those known so far that still exist,
    and those that came since the last walk where HVO was on at it and now, its switches
    unchanged."""
    heads = set(now.heads)
    if last is not None and on_throughout:
        return (known & heads) | (heads - set(last.heads))
    return known & heads


def _events(walker: Walker, facts, struct_page_size: int, progress: Callable[[str], None],
            now: Snapshot, before: Snapshot | None, whole: bool = False) -> Iterator[dict]:
    """Per hugepage size: without `before` every folio walked (audit); with it, the folios
    that came since (all of them when `whole`) and those that went, walked again."""
    hvo = hvo_facts(facts)
    tables = walker.tables()
    zones = hugetlb.populated_zones()
    nodes = hugetlb.Nodes()
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
            if not new and not gone and not (whole and heads):
                continue
            new = heads if whole else new
        progress(f"walking the vmemmap of {len(new)} hugetlb folios of {size_kb} kB"
                 + (f", and of {len(gone)} freed" if gone else ""))
        ev = {"type": "hugetlb", "size_kb": size_kb, "pfns_per_folio": pages,
              "nr_hugepages": now.pools.get(size_kb, 0),
              **walked(tables, new, pages, struct_page_size, nodes),
              "zones": zones, "hvo": hvo, "struct_page_size": struct_page_size,
              "page_size": hugetlb.PAGE_SIZE, "existing": before is None or whole}
        if (before is None or whole) and "node_distinct" in ev:  # every folio walked
            ev["node_pools"] = [list(kv) for kv in hugetlb.node_pools(size_kb).items()]
        if before is not None:
            restored = walked(tables, gone, pages, struct_page_size)
            if not whole:  # the pool's change is the witness of what came and went
                ev["pool_before"] = before.pools.get(size_kb, 0)
            ev.update({"freed": len(gone), "restored_rows": restored["rows"],
                       "restored_distinct": restored["distinct"],
                       "stale_heads": hugetlb.head_copies(
                           gone, pages, hugetlb.PAGE_SIZE // struct_page_size)})
        yield ev


@dataclass(frozen=True)
class Folio:
    """One folio's walk: its row (log/rows.py HUGETLB_ROW after its first two) and the pfns
    behind its head and, where all its tails lie on one page, behind its tails."""

    head: int
    row: tuple
    head_pfn: int | None
    tail_pfn: int | None


def walk_folio(tables: PageTables, head: int, pages: int, struct_page_size: int) -> Folio:
    row, head_pfn, tail_pfn = folio_row(tables, head, pages, struct_page_size)
    counts = dict(zip(HUGETLB_ROW[2:], row, strict=True))
    one_page = counts["ptes"] > 2 and counts["on_first_tail"] == counts["ptes"] - 1
    shared = tail_pfn if tail_pfn is not None and tail_pfn != head_pfn and one_page else None
    return Folio(head, row, head_pfn, shared)


def walked(tables: PageTables, heads: list[int], pages: int, struct_page_size: int,
           nodes: hugetlb.Nodes | None = None) -> dict:
    """The folios' rows, the pages that hold all the tails of a folio (HVO's shared tail page,
    where the kernel has one) with how many folios map each, and the distinct pages behind
    them all; with nodes, the rows and distinct pages of each NUMA node's folios too."""
    folios = [walk_folio(tables, head, pages, struct_page_size) for head in heads]
    out = summed(folios)
    if nodes is not None and nodes.block_pages:
        by_node: dict[int, list[Folio]] = {}
        for f in folios:
            node = nodes.of(f.head)
            if node is not None:
                by_node.setdefault(node, []).append(f)
        per_node = {node: summed(group) for node, group in sorted(by_node.items())}
        out["node_rows"] = sorted([node, *r] for node, s in per_node.items() for r in s["rows"])
        out["node_distinct"] = [[node, s["distinct"]] for node, s in per_node.items()]
    return out


def summed(folios: list[Folio]) -> dict:
    """Folios with equal rows as one row with a count; the distinct pages behind them all, a page
    behind the tails (or the heads) of several folios counted once."""
    rows: dict[tuple, list[int]] = {}
    head_pages: Counter[int] = Counter()
    tail_pages: Counter[int] = Counter()
    distinct = 0
    for f in folios:
        entry = rows.setdefault(f.row, [0, f.head])
        entry[0] += 1
        distinct += f.row[2]
        if f.head_pfn is not None:
            head_pages[f.head_pfn] += 1
        if f.tail_pfn is not None:
            tail_pages[f.tail_pfn] += 1
    shared = sorted([pfn, n] for pfn, n in tail_pages.items())
    distinct -= sum(n - 1 for _, n in shared)
    distinct -= sum(n - 1 for n in head_pages.values() if n > 1)
    return {"folios": len(folios),
            "rows": sorted([count, first, *row] for row, (count, first) in rows.items()),
            "shared_tails": shared, "heads_shared": sum(n for n in head_pages.values() if n > 1),
            "distinct": distinct}
