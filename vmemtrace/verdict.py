"""Named checks over a ledger, each pass/fail/skip with a one-line reason, and the verdict.

Pure: a Ledger in, the verify document of docs/design.md out. Expected numbers come from geometry only.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

from vmemtrace import geometry
from vmemtrace.account import Account
from vmemtrace.ledger import DeviceLedger, Ledger

PASS, FAIL, SKIP = "pass", "fail", "skip"
EXPECTATIONS = ("auto", "optimized", "unoptimized")
AUDIT_INIT = ("the range existed before tracing: struct page initialisation is only visible "
              "while memmap_init_zone_device runs (use `verify` when the device is created)")
BY_WALK = " (page-table walk)"


@dataclass
class Check:
    name: str
    status: str
    detail: str

    def as_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Observed:
    """What the trace saw for one device, None where it could not see."""

    vmemmap_pages: Optional[int]
    struct_pages_initialized: Optional[int]
    init_source: str
    compounds: Optional[List[dict]]  # per compound page vmemmap layout, live or walked
    reused: Optional[int]  # vmemmap PTEs mapped onto an already used page
    how: str  # "" when probes saw it, BY_WALK when the page-table walk did
    vmemmap_why: str  # why vmemmap_pages is None, or why the walk answered instead of the probes
    populate_why: str  # the same for the per-compound-page layout
    account: Account


def _not_walked(ledger: Ledger) -> str:
    blocker = ledger.header.get("walk_blocker")
    return f", and the page-table walk could not run: {blocker}" if blocker else ", and the range was not walked"


def observe(d: DeviceLedger, ledger: Ledger) -> Observed:
    """Probes first where their counts add up for this range (account.py); the page-table walk
    where it ran; else nothing, with the reason."""
    src = ledger.sources
    acct = d.account(src, ledger.feature)
    vmemmap, compounds, reused, walked = None, None, None, ""
    vmemmap_why = populate_why = ""
    if acct.alloc is None:
        vmemmap = d.allocated_pages()
    elif d.walk is not None:
        vmemmap, walked = d.walk["distinct"], BY_WALK
        vmemmap_why = f"; probes: {acct.alloc}" if src.alloc and d.sections else ""
    else:
        vmemmap_why = acct.alloc + _not_walked(ledger)
    if acct.populate is None:
        compounds, reused = d.compounds, d.totals()["reused"]
    elif d.walk is not None:
        compounds, reused, walked = d.walk_compounds, d.walk["reused"], BY_WALK
        populate_why = f"; probes: {acct.populate}" if src.populate and d.sections else ""
    else:
        populate_why = acct.populate + _not_walked(ledger)
    init, how = None, acct.init or ""
    if d.range is not None and acct.init is None:
        shape = d.shape(ledger.feature)
        if src.init_pages:
            init, how = d.range["izdp_calls"], "__init_zone_device_page calls, counted"
        elif d.range["pfns_per_compound"] <= 1:
            # No compound pages: memmap_init_zone_device() initialises every pfn of its loop
            # one by one (mm/mm_init.c); the loop bounds are the kernel's own arguments.
            init, how = geometry.init_loop_pages(shape), "every pfn of memmap_init_zone_device's loop"
        else:
            init, how = d.range["mic_pages"], "memmap_init_compound nr_pages, summed"
    elif d.range is None and d.walk is not None:
        how = AUDIT_INIT
    return Observed(vmemmap, init, how, compounds, reused, walked, vmemmap_why, populate_why, acct)


def _compound_problem(c: dict, per_compound: int) -> Optional[str]:
    """Why one compound page's vmemmap is not laid out as vmemmap_populate_compound_pages()
    lays it out (Documentation/mm/vmemmap_dedup.rst), or None."""
    head = c["head_pfn"]
    tails = per_compound - geometry.VMEMMAP_RESERVE_NR
    if c["ptes"] != per_compound:
        return f"compound page at pfn {head}: {c['ptes']} vmemmap PTEs, expected {per_compound}"
    if c["fresh"] != geometry.VMEMMAP_RESERVE_NR or not (c["head_fresh"] and c["tail_fresh"]):
        return (f"compound page at pfn {head}: {c['fresh']} freshly allocated vmemmap pages, "
                f"expected {geometry.VMEMMAP_RESERVE_NR} (the head page and the first tail page)")
    if c["reused"] != tails or c["on_tail"] != tails:
        return (f"compound page at pfn {head}: {c['on_tail']} of {tails} tail vmemmap pages "
                f"mapped onto the first tail page ({c['reused']} reused, {c['existing']} pre-existing)")
    return None


def defining_checks(feature: bool, eligible: bool) -> tuple:
    """The checks that define a range's case: "pass" needs every one of them judged."""
    if feature and eligible:
        return ("tail-reuse", "accounting", "init-skip")
    return ("no-false-optimisation",)


def _shared_tails(compounds: List[dict]) -> List[str]:
    """Each compound page keeps a first tail page of its own; two sharing one means the kernel
    mapped one compound page's tails onto another's struct pages (or the log lies)."""
    owner: Dict[int, int] = {}
    for c in compounds:
        if c["tail_fresh"]:
            if c["tail_pfn"] in owner:
                return [f"compound pages at pfn {owner[c['tail_pfn']]} and {c['head_pfn']} share "
                        f"their first tail vmemmap page (pfn {c['tail_pfn']})"]
            owner[c["tail_pfn"]] = c["head_pfn"]
    return []


def check_device(d: DeviceLedger, ledger: Ledger, expect: str, allow_skip=()) -> Dict:
    feature = ledger.feature
    shape = d.shape(feature)
    eligible, why = geometry.eligibility(shape)
    seen = observe(d, ledger)
    checks: List[Check] = []
    evidence = ledger.header["feature"]["evidence"]

    if feature:
        checks.append(Check("feature-present", PASS, evidence))
    elif expect == "optimized":
        checks.append(Check("feature-present", FAIL, f"the kernel lacks the optimisation: {evidence}"))
    else:
        checks.append(Check("feature-present", SKIP, f"feature absent, nothing optimised: {evidence}"))

    if expect == "optimized" and not eligible:
        checks.append(Check("eligibility", FAIL, f"not eligible for the optimisation: {why}"))
    elif expect == "unoptimized" and eligible:
        checks.append(Check("eligibility", FAIL, f"eligible ({why}) but --expect unoptimized"))
    else:
        checks.append(Check("eligibility", PASS, ("eligible: " if eligible else "not eligible: ") + why))

    naive_vm, expected_vm = geometry.vmemmap_pages_naive(shape), geometry.vmemmap_pages_expected(shape)
    naive_init = geometry.struct_pages_init_naive(shape)
    expected_init = geometry.struct_pages_init_expected(shape)
    per_cp = geometry.vmemmap_pages_per_compound(shape)
    n_cp = geometry.compound_pages(shape)

    # tail-reuse
    if not eligible:
        checks.append(Check("tail-reuse", SKIP, "not eligible: see no-false-optimisation"))
    elif seen.compounds is None:
        checks.append(Check("tail-reuse", SKIP, seen.populate_why))
    else:
        problems = [p for p in (_compound_problem(c, per_cp) for c in seen.compounds) if p]
        problems += _shared_tails(seen.compounds)
        if problems:
            more = f" (and {len(problems) - 1} more compound pages)" if len(problems) > 1 else ""
            checks.append(Check("tail-reuse", FAIL, problems[0] + more + seen.how))
        elif len(seen.compounds) != n_cp:
            checks.append(Check("tail-reuse", FAIL, f"saw the vmemmap of {len(seen.compounds)} "
                                                    f"compound pages, expected {n_cp}" + seen.how
                                + seen.populate_why))
        else:
            checks.append(Check("tail-reuse", PASS,
                                f"all {n_cp} compound pages: {geometry.VMEMMAP_RESERVE_NR} fresh "
                                f"vmemmap pages, {per_cp - geometry.VMEMMAP_RESERVE_NR} tail PTEs "
                                "on the first tail page" + seen.how + seen.populate_why))

    # init-skip
    if not eligible:
        checks.append(Check("init-skip", SKIP, "not eligible: see no-false-optimisation"))
    elif seen.struct_pages_initialized is None:
        checks.append(Check("init-skip", SKIP, seen.init_source))
    elif seen.struct_pages_initialized == expected_init:
        checks.append(Check("init-skip", PASS, f"{expected_init} struct pages initialised "
                                               f"({geometry.compound_nr_pages(shape)} per compound "
                                               f"page) instead of {naive_init}"))
    else:
        r = d.range
        per = (f"({r['mic_min']}..{r['mic_max']} per compound page)" if ledger.sources.init_decoded
               else f"({seen.init_source})")
        checks.append(Check("init-skip", FAIL,
                            f"{seen.struct_pages_initialized} struct pages initialised in "
                            f"{r['mic_calls']} memmap_init_compound calls {per}, "
                            f"expected {expected_init} ({geometry.compound_nr_pages(shape)} per page)"))

    # accounting
    vmstat_note = _vmstat_note(ledger, seen.vmemmap_pages, naive_vm, len(ledger.devices))
    what = "distinct pages behind the vmemmap" if seen.how else "vmemmap pages allocated"
    if seen.vmemmap_pages is None:
        checks.append(Check("accounting", SKIP, seen.vmemmap_why + vmstat_note))
    elif seen.vmemmap_pages == expected_vm:
        checks.append(Check("accounting", PASS, f"{seen.vmemmap_pages} {what}, as "
                                                f"expected (naive {naive_vm})" + seen.vmemmap_why
                            + vmstat_note))
    else:
        checks.append(Check("accounting", FAIL, f"{seen.vmemmap_pages} {what}, "
                                                f"expected {expected_vm} (naive {naive_vm})"
                            + seen.vmemmap_why + vmstat_note))

    # no-false-optimisation
    if eligible:
        checks.append(Check("no-false-optimisation", SKIP, "eligible: see tail-reuse and init-skip"))
    else:
        wrong = []
        reused = seen.reused
        if reused:
            first = next((c for c in seen.compounds or () if c["reused"]), None)
            where = f" (first at compound page pfn {first['head_pfn']})" if first else ""
            wrong.append(f"{reused} vmemmap PTEs reused{where}")
        if seen.vmemmap_pages is not None and seen.vmemmap_pages != naive_vm:
            wrong.append(f"{seen.vmemmap_pages} vmemmap pages allocated, expected all {naive_vm}")
        if seen.struct_pages_initialized is not None and seen.struct_pages_initialized != expected_init:
            wrong.append(f"{seen.struct_pages_initialized} struct pages initialised, expected {expected_init}")
        if wrong:
            checks.append(Check("no-false-optimisation", FAIL, "; ".join(wrong)))
        elif seen.vmemmap_pages is None:
            # Nothing wrong seen, but the allocation, which the optimisation changes, unseen.
            checks.append(Check("no-false-optimisation", SKIP, "the vmemmap pages allocated were "
                                                               "not observed: " + seen.vmemmap_why))
        elif seen.struct_pages_initialized is None and ledger.sources.init and d.range is not None:
            # This kernel's probes can see the initialisation, and did not: not earned.
            checks.append(Check("no-false-optimisation", SKIP, "the struct pages initialised were "
                                                               "not observed: " + seen.init_source))
        else:
            parts = []
            if reused is not None:
                parts.append("no vmemmap PTE reused")
            if seen.vmemmap_pages is not None:
                parts.append(f"all {naive_vm} vmemmap pages allocated")
            if seen.struct_pages_initialized is not None:
                parts.append(f"all {expected_init} struct pages initialised")
            checks.append(Check("no-false-optimisation", PASS, ", ".join(parts) + seen.how))

    if ledger.header.get("walk") == "cross-check":
        checks.append(cross_check(d, ledger))

    if d.kernel_log is not None:
        # The kernel's own count (pfns of its init loop) next to ours, in the init checks.
        note = (f"; the kernel's log: memmap_init_zone_device initialised {d.kernel_log['pages']} "
                f"pages in {d.kernel_log['ms']}ms")
        for c in checks:
            if c.name in ("init-skip", "no-false-optimisation") and c.status != SKIP:
                c.detail += note
                if geometry.init_loop_pages(shape) != d.kernel_log["pages"]:
                    c.status = FAIL
                    c.detail += f", not the {geometry.init_loop_pages(shape)} pfns expected"
    statuses = {c.status for c in checks}
    unjudged = [c.name for c in checks if c.name in defining_checks(feature, eligible)
                and c.status == SKIP and c.name not in allow_skip]
    verdict = "fail" if FAIL in statuses else "incomplete" if unjudged else "pass"
    if d.range is None and d.walk is None:
        verdict = "error"
        checks.append(Check("range-complete", FAIL, "memmap_init_zone_device was not seen for this "
                                                    "range: it was populated but never initialised"))
    elif d.walk is not None and d.walk["mapped"] < d.walk["vmemmap_pages"]:
        verdict = "fail"
        checks.append(Check("range-complete", FAIL, f"{d.walk['vmemmap_pages'] - d.walk['mapped']} "
                                                    f"of the range's {d.walk['vmemmap_pages']} vmemmap "
                                                    "pages are not mapped"))
    r = d.range or {}
    # What was observed, never what was not: None where neither number was seen.
    optimized = None
    if seen.vmemmap_pages:
        optimized = seen.vmemmap_pages < naive_vm
    elif seen.struct_pages_initialized:
        optimized = seen.struct_pages_initialized < naive_init
    return {
        "device": d.name,
        "start_pfn": d.start_pfn,
        "nr_pages": d.nr_pages,
        "compound_pages": n_cp,
        "align": (d.device or {}).get("align", shape.pfns_per_compound * shape.page_size),
        "altmap": shape.altmap,
        "expected_optimized": eligible,
        "optimized": optimized,
        "vmemmap_pages": {"naive": naive_vm, "expected": expected_vm, "observed": seen.vmemmap_pages},
        "vmemmap_saved_bytes": {
            "expected": geometry.saved_bytes(shape),
            "observed": None if seen.vmemmap_pages is None
            else (naive_vm - seen.vmemmap_pages) * shape.page_size},
        "struct_pages_initialized": {"naive": naive_init, "expected": expected_init,
                                     "observed": seen.struct_pages_initialized},
        "memmap_init_seconds": round(r["duration_ns"] / 1e9, 6) if "duration_ns" in r else None,
        "kernel_log": d.kernel_log and {"pages": d.kernel_log["pages"], "ms": d.kernel_log["ms"]},
        "probe_account": dict(vars(seen.account)),
        "page_table_walk": d.walk and {k: d.walk[k] for k in ("paging", "vmemmap_pages", "mapped",
                                                              "distinct", "reused", "levels")},
        "checks": [c.as_json() for c in checks],
        "unjudged": unjudged,
        "verdict": verdict,
    }


def _layout(compounds: List[dict]) -> Dict[int, tuple]:
    return {c["head_pfn"]: (c["ptes"], c["fresh"], c["reused"], c["on_tail"], c["tail_pfn"],
                            c["head_fresh"], c["tail_fresh"]) for c in compounds}


def cross_check(d: DeviceLedger, ledger: Ledger) -> Check:
    """The probes' account of the populate against the page tables it left (verify
    --cross-check): the same allocation count, and per compound page the same fresh/reused
    split onto the same physical tail page."""
    if d.walk is None:
        return Check("cross-check", FAIL, "the range was not walked")
    diffs = []
    if ledger.sources.alloc:
        live = d.allocated_pages()
        if live != d.walk["distinct"]:
            diffs.append(f"probes saw {live} vmemmap pages allocated, the walk finds "
                         f"{d.walk['distinct']} distinct pages")
    if ledger.sources.populate:
        if d.totals()["reused"] != d.walk["reused"]:
            diffs.append(f"probes saw {d.totals()['reused']} reused PTEs, the walk "
                         f"{d.walk['reused']}")
        live, walked = _layout(d.compounds), _layout(d.walk_compounds)
        differ = sorted(h for h in set(live) | set(walked) if live.get(h) != walked.get(h))
        if differ:
            h = differ[0]
            diffs.append(f"{len(differ)} compound pages differ, first at pfn {h}: probes (ptes, "
                         f"fresh, reused, on tail, tail pfn, head fresh, tail fresh) {live.get(h)}, walk "
                         f"{walked.get(h)}")
    if diffs:
        return Check("cross-check", FAIL, "; ".join(diffs))
    return Check("cross-check", PASS,
                 f"probes and page-table walk agree: {d.walk['distinct']} distinct vmemmap pages, "
                 f"{d.walk['reused']} reused PTEs, {len(d.walk_compounds)} compound pages "
                 "on the same tail pages")


def _vmstat_note(ledger: Ledger, observed: Optional[int], naive: int, n_devices: int) -> str:
    """/proc/vmstat nr_memmap_pages as a second witness (6.11+). Kernels without
    compat.VMSTAT_DAX_FIX add the unoptimised size even when the optimisation is used: a
    disagreement is a finding about the kernel's accounting, not proof that the optimisation
    failed."""
    if "before" not in ledger.vmstat or "after" not in ledger.vmstat:
        return ""
    delta = ledger.vmstat["after"] - ledger.vmstat["before"]
    if n_devices != 1:
        return f"; nr_memmap_pages delta {delta} covers {n_devices} ranges"
    if observed is not None and delta == observed:
        return f"; /proc/vmstat nr_memmap_pages agrees (+{delta})"
    if delta == naive:
        return (f"; /proc/vmstat nr_memmap_pages grew by {delta}, the unoptimised size: this kernel's "
                "accounting over-reports (it lacks the 2026 fix \"Fix DAX vmemmap accounting with "
                "optimization\"), not the allocation")
    return f"; /proc/vmstat nr_memmap_pages delta {delta} (other memmap changes in the same command)"


def evaluate(ledger: Ledger, expect: str = "auto", allow_skip=()) -> dict:
    """The verify document: overall verdict, per-device results. A device passes only when
    every check that defines its case was judged (defining_checks) or the user waived it
    (allow_skip); otherwise it is "incomplete", which exits 2 like "error"."""
    devices = [check_device(d, ledger, expect, allow_skip) for d in ledger.devices]
    problems = [f"inconsistent log: {p}" for p in ledger.inconsistent]
    problems += [f"inconsistent log, {d.name}: {p}" for d in ledger.devices for p in d.inconsistencies()]
    if ledger.lost:
        problems.append(f"{ledger.lost} events lost: the ledger is incomplete")
    bad = {k: v for k, v in ledger.bpf_errors.items() if v}
    if bad:
        problems.append("BPF-side errors: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    if not devices and ledger.header.get("walk") == "audit":
        problems.append("no dax device with memory in /sys/bus/dax/devices: nothing to audit")
    elif not devices:
        problems.append("no device-dax range was set up while tracing")
    if problems:
        verdict = "error"
    elif any(d["verdict"] == "fail" for d in devices):
        verdict = "fail"
    elif any(d["verdict"] == "error" for d in devices):
        verdict = "error"
    elif any(d["verdict"] == "incomplete" for d in devices):
        verdict = "incomplete"
    else:
        verdict = "pass"
    doc = {"kernel": ledger.header["kernel"], "verdict": verdict,
           "strategy": ledger.header["strategy"], "expect": expect, "devices": devices,
           "events_lost": ledger.lost, "waived": list(allow_skip)}
    if problems:
        doc["problems"] = problems
    if ledger.command is not None:
        doc["command"] = ledger.command
    if ledger.vmstat:
        doc["nr_memmap_pages"] = ledger.vmstat
    return doc


EXIT = {"pass": 0, "fail": 1, "incomplete": 2, "error": 2}
