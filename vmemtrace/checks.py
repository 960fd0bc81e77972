"""The check registry: each check is a small function of a DeviceView (view.py) that returns one
Check, or None where it does not apply to the run. The verdict (verdict.py) derives from their
statuses alone. Witnesses beside the probes (the kernel's log line, /proc/vmstat) are folded in by
the checks that use them.

Adding a check is one function here and its place in CHECKS; if it defines a kind of range, its
name in defining_checks() too (docs/adding.md).
"""

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

from vmemtrace import geometry
from vmemtrace.view import DeviceView, bounds

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"
STATUSES = (PASS, FAIL, SKIP, ERROR)  # ERROR: the evidence itself is broken, not the kernel
RESERVE = geometry.VMEMMAP_RESERVE_NR


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def as_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def defining_checks(feature: bool, eligible: bool) -> Tuple[str, ...]:
    """The checks that define a range's case: "pass" needs every one of them judged."""
    if feature and eligible:
        return ("tail-reuse", "accounting", "init-skip")
    return ("no-false-optimisation",)


def feature_present(v: DeviceView) -> Check:
    if v.feature:
        return Check("feature-present", PASS, v.evidence)
    if v.expect == "optimized":
        return Check("feature-present", FAIL, f"the kernel lacks the optimisation: {v.evidence}")
    return Check("feature-present", SKIP, f"feature absent, nothing optimised: {v.evidence}")


def eligibility(v: DeviceView) -> Check:
    if v.expect == "optimized" and not v.eligible:
        return Check("eligibility", FAIL, f"not eligible for the optimisation: {v.why}")
    if v.expect == "unoptimized" and v.eligible:
        return Check("eligibility", FAIL, f"eligible ({v.why}) but --expect unoptimized")
    return Check("eligibility", PASS, ("eligible: " if v.eligible else "not eligible: ") + v.why)


def compound_problem(c: dict, per_compound: int) -> Optional[str]:
    """Why one compound page's vmemmap is not laid out as vmemmap_populate_compound_pages()
    lays it out (the kernel's Documentation/mm/vmemmap_dedup.rst), or None."""
    head = c["head_pfn"]
    tails = per_compound - RESERVE
    if c["ptes"] != per_compound:
        return f"compound page at pfn {head}: {c['ptes']} vmemmap PTEs, expected {per_compound}"
    if c["fresh"] != RESERVE or not (c["head_fresh"] and c["tail_fresh"]):
        return (f"compound page at pfn {head}: {c['fresh']} freshly allocated vmemmap pages, "
                f"expected {RESERVE} (the head page and the first tail page)")
    if c["reused"] != tails or c["on_tail"] != tails:
        return (f"compound page at pfn {head}: {c['on_tail']} of {tails} tail vmemmap pages "
                f"mapped onto the first tail page ({c['reused']} reused, {c['existing']} pre-existing)")
    return None


def shared_tails(compounds: Callable[[], Iterable[dict]]) -> List[str]:
    """Each compound page keeps a first tail page of its own; two sharing one means the kernel
    mapped one compound page's tails onto another's struct pages (or the log lies). Two passes
    over compounds() (a 1 TiB range has 524288 pages): the first finds a shared page, the
    second the page that had it first; only the tail pfns are held, as a set."""
    seen, shared = set(), None
    for c in compounds():
        if c["tail_fresh"]:
            if c["tail_pfn"] in seen:
                shared = c
                break
            seen.add(c["tail_pfn"])
    if shared is None:
        return []
    first = next(c for c in compounds() if c["tail_fresh"] and c["tail_pfn"] == shared["tail_pfn"])
    return [f"compound pages at pfn {first['head_pfn']} and {shared['head_pfn']} share their "
            f"first tail vmemmap page (pfn {shared['tail_pfn']})"]


def laid_out(compounds: Iterable[dict], v: DeviceView) -> Iterator[dict]:
    """The compound pages the populate path laid out: not those headed on the boot memmap
    (boot-memmap), whose vmemmap is the boot's. One at a time, as the checks read them."""
    return (c for c in compounds if not geometry.on_boot_memmap(c["head_pfn"], v.shape))


def tail_reuse(v: DeviceView) -> Check:
    name, seen, n = "tail-reuse", v.seen, v.numbers
    if not v.eligible:
        return Check(name, SKIP, "not eligible: see no-false-optimisation")
    if seen.compounds is None:
        return Check(name, SKIP, seen.populate_why)
    count, first, problems = 0, None, 0
    for c in laid_out(seen.compounds, v):
        count += 1
        problem = compound_problem(c, n.per_compound)
        if problem:
            problems += 1
            first = first or problem
    shared = shared_tails(lambda: laid_out(seen.compounds, v))
    if first is None and shared:
        first, problems = shared[0], 1
    elif shared:
        problems += 1
    if first is not None:
        more = f" (and {problems - 1} more compound pages)" if problems > 1 else ""
        return Check(name, FAIL, first + more + seen.how)
    boot = (f" ({n.boot_compounds} more on the boot memmap, unoptimised)"
            if n.boot_compounds else "")
    if count != n.laid_out:
        return Check(name, FAIL, f"saw the vmemmap of {count} compound pages, "
                                 f"expected {n.laid_out}{boot}" + seen.how + seen.populate_why)
    return Check(name, PASS, f"all {n.laid_out} compound pages: {RESERVE} fresh vmemmap "
                             f"pages, {n.per_compound - RESERVE} tail PTEs on the first tail page"
                 + boot + seen.how + seen.populate_why)


def with_kernel_log(v: DeviceView, check: Check) -> Check:
    """The kernel's own count of its init loop's pfns (its pr_info line) beside ours: a judged
    init check fails when the two disagree."""
    if v.kernel_log is None or check.status == SKIP:
        return check
    pages = v.kernel_log["pages"]
    detail = (f"{check.detail}; the kernel's log: memmap_init_zone_device initialised {pages} "
              f"pages in {v.kernel_log['ms']}ms")
    if pages != v.numbers.init_loop:
        return Check(check.name, FAIL, detail + f", not the {v.numbers.init_loop} pfns expected")
    return Check(check.name, check.status, detail)


def init_skip(v: DeviceView) -> Check:
    name, seen, n = "init-skip", v.seen, v.numbers
    if not v.eligible:
        return Check(name, SKIP, "not eligible: see no-false-optimisation")
    if seen.struct_pages_initialized is None:
        return Check(name, SKIP, seen.init_source)
    if seen.struct_pages_initialized == n.init:
        boot = (f", all {v.shape.pfns_per_compound} for each of the {n.boot_compounds} on the "
                "boot memmap" if n.boot_compounds else "")
        return with_kernel_log(v, Check(name, PASS, f"{n.init} struct pages initialised "
                                                    f"({n.init_per_compound} per compound page"
                                                    f"{boot}) instead of {n.init_naive}"))
    if n.boot_compounds and seen.struct_pages_initialized == n.init_unfixed:
        # What every kernel without compat.BOOT_MEMMAP_INIT does: the optimisation's skip is
        # as designed, and the kernel's bug is said, not hidden.
        return with_kernel_log(v, Check(name, PASS, (
            f"{n.init_unfixed} struct pages initialised ({n.init_per_compound} per compound page) "
            f"instead of {n.init_naive}; but {n.boot_compounds} compound pages lie on the "
            "unoptimised boot memmap and got only "
            f"{n.init_per_compound} of their {v.shape.pfns_per_compound} struct pages "
            "initialised: this kernel lacks \"mm/mm_init: fix uninitialized struct pages for "
            "ZONE_DEVICE\" (2026)")))
    r = v.range
    per = (f"({r['mic_min']}..{r['mic_max']} per compound page)" if v.sources.init_decoded
           else f"({seen.init_source})")
    return with_kernel_log(v, Check(name, FAIL, f"{seen.struct_pages_initialized} struct pages "
                                                f"initialised in {r['mic_calls']} "
                                                f"memmap_init_compound calls {per}, expected "
                                                f"{n.init} ({n.init_per_compound} per page)"))


def vmstat_note(v: DeviceView) -> str:
    """/proc/vmstat nr_memmap_pages as a second witness (6.11+). Kernels without
    compat.VMSTAT_DAX_FIX add the unoptimised size even when the optimisation is used: a
    disagreement is a finding about the kernel's accounting, not proof that the optimisation
    failed."""
    if "before" not in v.vmstat or "after" not in v.vmstat:
        return ""
    delta = v.vmstat["after"] - v.vmstat["before"]
    if v.n_devices != 1:
        return f"; nr_memmap_pages delta {delta} covers {v.n_devices} ranges"
    if v.seen.vmemmap_pages is not None and delta == v.seen.vmemmap_pages:
        return f"; /proc/vmstat nr_memmap_pages agrees (+{delta})"
    if delta == v.numbers.vmemmap_naive:
        return (f"; /proc/vmstat nr_memmap_pages grew by {delta}, the unoptimised size: this kernel's "
                "accounting over-reports (it lacks the 2026 fix \"Fix DAX vmemmap accounting with "
                "optimization\"), not the allocation")
    return f"; /proc/vmstat nr_memmap_pages delta {delta} (other memmap changes in the same command)"


def accounting(v: DeviceView) -> Check:
    seen, n = v.seen, v.numbers
    note = seen.vmemmap_why + vmstat_note(v)
    what = "distinct pages behind the vmemmap" if seen.how else "vmemmap pages allocated"
    if seen.vmemmap_pages is None:
        return Check("accounting", SKIP, note)
    by_walk = bool(seen.how)
    want = n.vmemmap_seen(by_walk, naive=not v.eligible)
    naive = bounds(n.vmemmap_seen(by_walk, naive=True))
    if n.boot_vmemmap:
        note = (f"; {n.boot_vmemmap} of the range's vmemmap pages are the boot memmap's"
                + (", counted" if by_walk else ", not allocated") + note)
    if want[0] != want[1]:
        note = ("; fewer where a neighbouring section had mapped a 2 MiB block the range's "
                f"{v.shape.struct_page_size}-byte struct pages share with it") + note
    if want[0] <= seen.vmemmap_pages <= want[1]:
        return Check("accounting", PASS, f"{seen.vmemmap_pages} {what}, as expected "
                                         f"(naive {naive})" + note)
    return Check("accounting", FAIL, f"{seen.vmemmap_pages} {what}, expected {bounds(want)} "
                                     f"(naive {naive})" + note)


def false_optimisations(v: DeviceView) -> List[str]:
    """What a range that must not be optimised shows of an optimisation anyway."""
    seen, n, wrong = v.seen, v.numbers, []
    if seen.reused:
        first = next((c for c in seen.compounds or () if c["reused"]), None)
        where = f" (first at compound page pfn {first['head_pfn']})" if first else ""
        wrong.append(f"{seen.reused} vmemmap PTEs reused{where}")
    naive = n.vmemmap_seen(bool(seen.how), naive=True)
    if seen.vmemmap_pages is not None and not naive[0] <= seen.vmemmap_pages <= naive[1]:
        wrong.append(f"{seen.vmemmap_pages} vmemmap pages allocated, expected all {bounds(naive)}")
    if seen.struct_pages_initialized is not None and seen.struct_pages_initialized != n.init:
        wrong.append(f"{seen.struct_pages_initialized} struct pages initialised, expected {n.init}")
    return wrong


def no_false_optimisation(v: DeviceView) -> Check:
    name, seen, n = "no-false-optimisation", v.seen, v.numbers
    if v.eligible:
        return Check(name, SKIP, "eligible: see tail-reuse and init-skip")
    wrong = false_optimisations(v)
    if wrong:
        return with_kernel_log(v, Check(name, FAIL, "; ".join(wrong)))
    if seen.vmemmap_pages is None:
        # Nothing wrong seen, but the allocation, which the optimisation changes, unseen.
        return Check(name, SKIP, "the vmemmap pages allocated were not observed: " + seen.vmemmap_why)
    if seen.struct_pages_initialized is None and v.sources.init and v.range is not None:
        # This kernel's probes can see the initialisation, and did not: not earned.
        return Check(name, SKIP, "the struct pages initialised were not observed: " + seen.init_source)
    parts = ["no vmemmap PTE reused"] if seen.reused is not None else []
    parts.append(f"all {seen.vmemmap_pages} vmemmap pages allocated")
    if seen.struct_pages_initialized is not None:
        parts.append(f"all {n.init} struct pages initialised")
    return with_kernel_log(v, Check(name, PASS, ", ".join(parts) + seen.how))


LAYOUT = ("ptes", "fresh", "reused", "on_tail", "tail_pfn", "head_fresh", "tail_fresh")


def _layout(c: Optional[dict]) -> Optional[tuple]:
    return None if c is None else tuple(c[k] for k in LAYOUT)


def layout_differences(a: Iterable[dict], b: Iterable[dict]) -> Tuple[int, Optional[int], tuple]:
    """(how many compound pages differ, the first one's head pfn, its two layouts) between two
    sources, each in head order (ledger.inconsistencies() holds a log to that): one merge pass,
    nothing kept per page."""
    ia, ib = iter(a), iter(b)
    ca, cb = next(ia, None), next(ib, None)
    count, first, pair = 0, None, (None, None)
    while ca is not None or cb is not None:
        ha = ca["head_pfn"] if ca is not None else None
        hb = cb["head_pfn"] if cb is not None else None
        if hb is None or (ha is not None and ha < hb):
            left, right, head = ca, None, ha
        elif ha is None or hb < ha:
            left, right, head = None, cb, hb
        else:
            left, right, head = ca, cb, ha
        if _layout(left) != _layout(right):
            count += 1
            if first is None:
                first, pair = head, (_layout(left), _layout(right))
        if left is not None:
            ca = next(ia, None)
        if right is not None:
            cb = next(ib, None)
    return count, first, pair


def cross_check(v: DeviceView) -> Optional[Check]:
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
    if v.sources.alloc and v.probe_allocated + boot != w["distinct"]:
        diffs.append(f"probes saw {v.probe_allocated} vmemmap pages allocated"
                     + (f" (and {boot} are the boot memmap's)" if boot else "")
                     + f", the walk finds {w['distinct']} distinct pages")
    if v.sources.populate:
        if v.probe_reused != w["reused"]:
            diffs.append(f"probes saw {v.probe_reused} reused PTEs, the walk {w['reused']}")
        count, h, (live, walked) = layout_differences(laid_out(v.probe_compounds, v),
                                                      laid_out(v.walk_compounds, v))
        if count:
            diffs.append(f"{count} compound pages differ, first at pfn {h}: probes (ptes, "
                         f"fresh, reused, on tail, tail pfn, head fresh, tail fresh) {live}, walk "
                         f"{walked}")
    if diffs:
        return Check("cross-check", FAIL, "; ".join(diffs))
    return Check("cross-check", PASS,
                 f"probes and page-table walk agree: {w['distinct']} distinct vmemmap pages, "
                 f"{w['reused']} reused PTEs, {len(v.walk_compounds)} compound pages "
                 "on the same tail pages")


def range_complete(v: DeviceView) -> Optional[Check]:
    """A populated range must reach memmap_init_zone_device (else the trace missed it: an
    error of the evidence), and a walked range must be mapped whole (else the kernel left a
    hole in its vmemmap)."""
    if v.range is None and v.walk is None:
        return Check("range-complete", ERROR, "memmap_init_zone_device was not seen for this "
                                              "range: it was populated but never initialised")
    w = v.walk
    if w is not None and w["mapped"] < w["vmemmap_pages"]:
        return Check("range-complete", FAIL, f"{w['vmemmap_pages'] - w['mapped']} of the range's "
                                             f"{w['vmemmap_pages']} vmemmap pages are not mapped")
    return None


def boot_memmap(v: DeviceView) -> Optional[Check]:
    """Pieces of the range in a memory section that was present at boot reuse the boot memmap
    (mm/sparse.c section_activate()): geometry counts them apart, so which pieces they are must
    be known; a partial piece no source places makes every expected number uncertain."""
    if v.boot_unknown:
        pfn, n = v.boot_unknown[0]
        return Check("boot-memmap", ERROR, (
            f"cannot tell whether the {n}-page piece at pfn {pfn} shares its memory section with "
            "boot memory (its memmap would then be the boot's): mem_section was not read (no "
            "kcore, or a log recorded without boot_sections) and no populate was seen for it"))
    pieces = list(geometry.boot_pieces(v.shape))
    if not pieces:
        return None
    where = ", ".join(f"{n} pages at pfn {pfn} (section {pfn // v.shape.pages_per_section})"
                      for pfn, n in pieces)
    return Check("boot-memmap", PASS, (
        f"{where} share their section with boot memory and reuse the boot memmap: "
        f"{v.numbers.boot_vmemmap} vmemmap pages not allocated, {v.numbers.boot_compounds} "
        "compound pages not optimised"))


CHECKS: Tuple[Callable[[DeviceView], Optional[Check]], ...] = (
    feature_present, eligibility, boot_memmap, tail_reuse, init_skip, accounting,
    no_false_optimisation, cross_check, range_complete)


def run_checks(v: DeviceView) -> List[Check]:
    return [c for c in (check(v) for check in CHECKS) if c is not None]


def device_verdict(checks: List[Check], defining: Tuple[str, ...],
                   allow_skip=()) -> Tuple[str, List[str]]:
    """From the statuses alone: error where the evidence is broken, fail where the kernel did
    wrong, incomplete where a check that defines the case was not judged (and not waived)."""
    statuses = {c.status for c in checks}
    unjudged = [c.name for c in checks
                if c.name in defining and c.status == SKIP and c.name not in allow_skip]
    if ERROR in statuses:
        return "error", unjudged
    if FAIL in statuses:
        return "fail", unjudged
    return ("incomplete" if unjudged else "pass"), unjudged
