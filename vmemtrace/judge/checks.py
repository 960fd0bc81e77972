"""The check registry: each check is a small function of a DeviceView (judge/view.py) that returns one
Check, or None where it does not apply to the run. The verdict (judge/verdict.py) derives from their
statuses alone. Witnesses beside the probes (the kernel's log line, /proc/vmstat) are folded in by
the checks that use them.

Adding a check is one function here (or in a module of its own, as judge/cross_check.py) and its
place in CHECKS; if it defines a kind of range, its
name in defining_checks() too (docs/adding.md).
"""

from collections.abc import Callable

from vmemtrace.judge import check_names, geometry
from vmemtrace.judge.cross_check import cross_check
from vmemtrace.judge.outcome import ERROR, FAIL, PASS, SKIP, Check
from vmemtrace.judge.view import DeviceView, bounds, on_boot
from vmemtrace.log.compounds import CLASS


def defining_checks(feature: bool, eligible: bool) -> tuple[str, ...]:
    """The checks that define a range's case: "pass" needs every one of them judged."""
    return check_names.ELIGIBLE if feature and eligible else check_names.NOT_ELIGIBLE


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


def tail_reuse(v: DeviceView) -> Check:
    name, seen, n = "tail-reuse", v.seen, v.numbers
    if not v.eligible:
        return Check(name, SKIP, "not eligible: see no-false-optimisation")
    if seen.compounds is None:
        return Check(name, SKIP, seen.populate_why)
    pages, skip = seen.compounds, on_boot(v)
    count = pages.judged(skip)
    first, problems = None, pages.unclassed  # beyond MAX_CLASSES layouts: not the promised one
    layout, by_walk = v.shape.layout, bool(seen.how)
    for c, k in sorted(pages.groups(skip), key=lambda g: g[0]["head_pfn"]):
        per = geometry.vmemmap_pages_of_compound(c["head_pfn"], v.shape)
        problem = layout.page_problem(c, per, by_walk)
        if problem:
            problems += k
            first = first or problem
    # A page shared by two compound pages' tails is the shared-tail layout's design.
    shared = None if layout.shared_tails else pages.sharing(skip)
    if shared is not None:
        text = (f"compound page at pfn {shared[1]} shares its first tail vmemmap page (pfn "
                f"{shared[0]}) with another compound page")
        if first is None:
            first, problems = text, 1
        else:
            problems += 1
    if first is not None:
        more = f" (and {problems - 1} more compound pages)" if problems > 1 else ""
        cause = ""
        if geometry.heads_in_reused_sections(v.shape):
            off = v.shape.start_pfn % v.shape.pages_per_section
            cause = (f"; the kernel's doing: the range starts {off} pages past a section "
                     "boundary, so reuse_compound_section() maps whole sections that hold "
                     "compound heads onto one page (docs/findings.md)")
        return Check(name, FAIL, first + more + seen.how + cause)
    boot = (f" ({n.boot_compounds} more on the boot memmap, unoptimised)"
            if n.boot_compounds else "")
    if count != n.laid_out:
        return Check(name, FAIL, f"saw the vmemmap of {count} compound pages, "
                                 f"expected {n.laid_out}{boot}" + seen.how + seen.populate_why)
    onto = "the zone's shared tail page" if layout.shared_tails else "the first tail page"
    return Check(name, PASS, f"all {n.laid_out} compound pages: {layout.kept} fresh vmemmap "
                             f"page{'s' if layout.kept > 1 else ''} of their own, "
                             f"{n.per_compound - layout.kept} tail PTEs on {onto}"
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
    assert r is not None, "struct pages counted without their range"
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


def false_optimisations(v: DeviceView) -> list[str]:
    """What a range that must not be optimised shows of an optimisation anyway."""
    seen, n, wrong = v.seen, v.numbers, []
    if seen.reused:
        first = seen.compounds.reused_head if seen.compounds is not None else None
        where = f" (first at compound page pfn {first})" if first is not None else ""
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


def range_complete(v: DeviceView) -> Check | None:
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


def boot_memmap(v: DeviceView) -> Check | None:
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


def _size(pfns: int, page_size: int) -> str:
    n = pfns * page_size
    return f"{n >> 30} GiB" if n % (1 << 30) == 0 else f"{n >> 20} MiB"


def compound_alignment(v: DeviceView) -> Check | None:
    """Compound pages start where memmap_init_zone_device() starts (geometry.first_head()):
    where that is not on a boundary of their size (a CXL window 256 MiB past a 1 GiB one
    holding a 1 GiB device) every compound page straddles two of the blocks the device maps
    whole, and the folio a 1 GiB fault maps is not the block it maps (7.3.4 refuses the fault:
    vmf_insert_folio_pud() warns and the program gets SIGBUS; docs/findings.md). Nothing to
    say where they are aligned."""
    shape = v.shape
    offset = geometry.compound_offset(shape) if shape.pfns_per_compound > 1 else 0
    if not offset:
        return None
    size, page, head = shape.pfns_per_compound, shape.page_size, geometry.first_head(shape)
    where = "past the altmap's pfns" if shape.altmap_offset else "where the range starts"
    return Check("compound-alignment", FAIL, (
        f"compound pages of {_size(size, page)} start {where}, pfn {head} "
        f"({head * page >> 20} MiB), {_size(offset, page)} past a {_size(size, page)} "
        f"boundary: each straddles two of the {_size(size, page)} blocks the device maps "
        "whole, and a fault maps a block with a folio that is not it (docs/findings.md)"))


CHECKS: tuple[Callable[[DeviceView], Check | None], ...] = (
    feature_present, eligibility, boot_memmap, compound_alignment, tail_reuse, init_skip,
    accounting, no_false_optimisation, cross_check, range_complete)


# The checks whose expectations come from the kernel's vmemmap layout (judge/layouts.py).
LAYOUT_CHECKS = ("tail-reuse", "accounting", "init-skip", "cross-check")


def unknown_layout(v: DeviceView) -> str | None:
    """What the vmemmap shows when every compound page of an eligible range is laid out alike,
    neither as the kernel's layout nor unoptimised: a layout vmemtrace does not know (a kernel
    newer than it), not the kernel's known layout done wrong, which leaves pages that fit."""
    pages = v.seen.compounds
    if not v.eligible or pages is None or pages.unclassed:
        return None
    groups = [c for c, _ in pages.groups(on_boot(v))]
    if not groups or len({tuple(c[k] for k in CLASS) for c in groups}) != 1:
        return None
    c = groups[0]
    per = geometry.vmemmap_pages_of_compound(c["head_pfn"], v.shape)
    if c["fresh"] >= c["ptes"] or c["out_of_order"] \
            or v.shape.layout.page_problem(c, per, bool(v.seen.how)) is None:
        return None  # unoptimised, an index populated twice or skipped (no layout's), or fits
    return (f"every compound page's {c['ptes']} vmemmap PTEs are laid out alike: {c['fresh']} "
            f"fresh, {c['reused']} reused, {c['on_tail']} on its first tail page; not the "
            f"{v.shape.layout.name} layout nor unoptimised: a layout vmemtrace does not know")


def layout_doubt(v: DeviceView) -> str | None:
    """Why the layout's expectations cannot decide a failure: the kernel's layout is unknown,
    known only from its source, or what was seen fits no layout vmemtrace knows."""
    if v.layout.layout is None:
        return f"the kernel's vmemmap layout is not one vmemtrace knows ({v.layout.evidence})"
    if not v.layout.layout.validated:
        return (f"vmemtrace's model of the {v.layout.name} layout comes from the kernel source "
                "and has not been confirmed on a running kernel")
    return unknown_layout(v)


def run_checks(v: DeviceView) -> list[Check]:
    """Every check; where the layout is in doubt a failure of what the layout decides is not
    the kernel's fault for sure: it is left unjudged (the verdict incomplete), saying why. Where
    the kernel's layout is unknown nothing the layout decides is judged, a match included: the
    numbers are the last known layout's, not the kernel's."""
    checks = [c for c in (check(v) for check in CHECKS) if c is not None]
    doubt = layout_doubt(v)
    if doubt is None:
        return checks
    judged = (FAIL, PASS) if v.layout.layout is None else (FAIL,)
    return [Check(c.name, SKIP, f"{c.detail}; {doubt}: cannot tell whether the kernel did "
                                + ("right" if c.status == PASS else "wrong"))
            if c.status in judged and c.name in LAYOUT_CHECKS else c for c in checks]


def device_verdict(checks: list[Check], defining: tuple[str, ...],
                   allow_skip=()) -> tuple[str, list[str]]:
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
