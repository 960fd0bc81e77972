"""The cross-check (verify --cross-check): the probes' account of the populate against the page
tables it left, compared without going back to the pages (log/difference.py). Pure."""

from collections.abc import Callable

from vmemtrace.judge.outcome import FAIL, PASS, Check
from vmemtrace.judge.view import DeviceView, on_boot
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.difference import LAYOUT, coarsen, table_difference

MAX_LISTED = 8  # compound pages a cross-check failure names


def layout_differences(a: CompoundPages, b: CompoundPages,
                       skip: Callable[[int], bool]) -> list[str]:
    """How two sources' compound pages differ, [] where they agree, all without going back to
    the pages (log/compounds.py): the pages themselves where the difference tables can list them,
    else per part of the range their counts and digests of (head, layout); and which layout
    each counts how often."""
    (sa, da), (sb, db) = a.digests(skip), b.digests(skip)
    shift = max(sa, sb)  # the coarser of the two: parts merge exactly (difference.coarsen)
    da, db = coarsen(da, shift - sa), coarsen(db, shift - sb)
    differ = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    ta, tb = a.difference_table(skip), b.difference_table(skip)
    listed = table_difference(ta, tb) if ta is not None and tb is not None else None
    if not differ and not listed:
        return []
    if listed:
        out = [_listed(listed)]
    else:
        lo, hi = (a if a.shared is not None else b).part_pfns(shift, differ[0])
        out = [f"compound pages differ in {len(differ)} of {len(set(da) | set(db))} parts of "
               f"the range, first in pfns {lo} to {hi} (probes {da.get(differ[0], [0])[0]} "
               f"compound pages, walk {db.get(differ[0], [0])[0]})"]
    ca, cb = _layouts(a, skip), _layouts(b, skip)
    odd = sorted(k for k in set(ca) | set(cb) if ca.get(k, 0) != cb.get(k, 0))
    if odd:
        out.append(f"compound pages laid out as (ptes, fresh, reused, on tail, head fresh, tail "
                   f"fresh) {odd[0]}: probes {ca.get(odd[0], 0)}, walk {cb.get(odd[0], 0)}")
    return out


def _listed(listed: list[tuple[int, int]]) -> str:
    """The difference tables' pages: a head on both sides was seen laid out differently."""
    sides: dict[int, set[int]] = {}
    for head, side in listed:
        sides.setdefault(head, set()).add(side)
    words = {frozenset((1, -1)): "laid out differently", frozenset((1,)): "only the probes saw it",
             frozenset((-1,)): "only the walk saw it"}
    named = [f"pfn {head} ({words[frozenset(s)]})" for head, s in sorted(sides.items())]
    return (f"{len(sides)} compound page{'s differ' if len(sides) > 1 else ' differs'} "
            "between probes and walk: "
            + ", ".join(named[:MAX_LISTED]) + (", ..." if len(named) > MAX_LISTED else ""))


def _layouts(pages: CompoundPages, skip: Callable[[int], bool]) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for c, n in pages.groups(skip):
        key = tuple(c[k] for k in LAYOUT if k != "tail_pfn")
        out[key] = out.get(key, 0) + n
    return out


def cross_check(v: DeviceView) -> Check | None:
    """The probes' account of the populate against the page tables it left (verify
    --cross-check): the same allocation count, and per compound page the same fresh/reused
    split onto the same physical tail page."""
    if not v.cross_check:
        return None
    w = v.walk
    if w is None:
        return Check("cross-check", FAIL, "the range was not walked")
    diffs = []
    boot = v.numbers.boot_vmemmap  # the boot memmap's pages: mapped, never allocated for it
    # Pages behind the range that were never allocated for it: the kernel handed them to
    # vmemmap_populate_address() to reuse (a probe counts each such PTE reused; the walk counts
    # the first one as a page it had not seen). Each must be one PTE the walk calls new and the
    # probes reused, so the two counts still check each other.
    foreign = max(0, w["distinct"] - v.probe_allocated - boot) if v.sources.alloc else 0
    explained = v.sources.populate and v.probe_reused == w["reused"] + foreign
    if v.sources.alloc and (v.probe_allocated + boot > w["distinct"] or (foreign and not explained)):
        diffs.append(f"probes saw {v.probe_allocated} vmemmap pages allocated"
                     + (f" (and {boot} are the boot memmap's)" if boot else "")
                     + f", the walk finds {w['distinct']} distinct pages")
    if v.sources.populate:
        if not explained:
            diffs.append(f"probes saw {v.probe_reused} reused PTEs, the walk {w['reused']}")
        diffs.extend(layout_differences(v.probe_compounds, v.walk_compounds, on_boot(v)))
    if diffs:
        return Check("cross-check", FAIL, "; ".join(diffs))
    outside = (f", {foreign} of them never allocated for the range (the kernel mapped them "
               "from outside it)" if foreign else "")
    return Check("cross-check", PASS,
                 f"probes and page-table walk agree: {w['distinct']} distinct vmemmap pages"
                 f"{outside}, {w['reused']} reused PTEs, {len(v.walk_compounds)} compound pages "
                 "on the same tail pages")
