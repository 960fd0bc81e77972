"""The verify document: the check registry (judge/checks.py) run over each device's view (judge/view.py),
per-device and overall verdicts, and the exit code each verdict means.

Pure: a Ledger in, the verify document of docs/design.md out. Expected numbers come from geometry only.
"""


from vmemtrace.judge import geometry, hvo
from vmemtrace.judge.checks import defining_checks, device_verdict, run_checks
from vmemtrace.judge.device_ledger import DeviceLedger
from vmemtrace.judge.ledger import Ledger
from vmemtrace.judge.outcome import Check
from vmemtrace.judge.view import DeviceView, device_view

EXPECTATIONS = ("auto", "optimized", "unoptimized")


def _device_doc(d: DeviceLedger, v: DeviceView, checks: list[Check], verdict: str,
                unjudged: list[str]) -> dict:
    """One device's part of the verify document (docs/design.md, "JSON")."""
    seen, n, shape = v.seen, v.numbers, v.shape
    r = d.range or {}
    # What was observed, never what was not: None where neither number was seen.
    optimized = None
    # Counted as the source counts: allocated pages (probes), or pages behind the range (walk).
    by_walk = bool(seen.how)
    naive = n.vmemmap_seen(by_walk, naive=True)[1]
    expected = n.vmemmap_seen(by_walk, naive=not v.eligible)[1]
    if seen.vmemmap_pages:
        optimized = seen.vmemmap_pages < naive
    elif seen.struct_pages_initialized:
        optimized = seen.struct_pages_initialized < n.init_naive
    return {
        "device": d.name,
        "chardev": d.chardev,  # as `daxctl list` and `ndctl list` call it
        "namespace": d.namespace,
        "cxl": d.cxl,  # the CXL region it lies in, as `cxl list` names it; null for none
        "start_pfn": d.start_pfn,
        "nr_pages": d.nr_pages,
        "compound_pages": n.compound_pages,
        "align": (d.device or {}).get("align", shape.pfns_per_compound * shape.page_size),
        "altmap": shape.altmap,
        "page_size": shape.page_size,
        "expected_optimized": v.eligible,
        "optimized": optimized,
        "vmemmap_pages": {"naive": naive, "expected": expected, "observed": seen.vmemmap_pages},
        "vmemmap_saved_bytes": {
            "expected": geometry.saved_bytes(shape),
            "observed": None if seen.vmemmap_pages is None
            else (naive - seen.vmemmap_pages) * shape.page_size},
        "struct_pages_initialized": {"naive": n.init_naive, "expected": n.init,
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


def check_device(d: DeviceLedger, ledger: Ledger, expect: str, allow_skip=()) -> dict:
    """Every check of the registry over the device's view; the verdict from their statuses."""
    v = device_view(d, ledger, expect)
    checks = run_checks(v)
    verdict, unjudged = device_verdict(checks, defining_checks(v.feature, v.eligible), allow_skip)
    return _device_doc(d, v, checks, verdict, unjudged)


def evaluate(ledger: Ledger, expect: str = "auto", allow_skip=(), only=()) -> dict:
    """The verify document: overall verdict, per-device results. A device passes only when
    every check that defines its case was judged (defining_checks) or the user waived it
    (allow_skip); otherwise it is "incomplete", which exits 2 like "error". `only` (-d): the
    devices so named, by chardev or namespace; a name that matches none is a problem."""
    chosen = [d for d in ledger.devices if not only or d.known_as(only)]
    devices = [check_device(d, ledger, expect, allow_skip) for d in chosen]
    version = tuple(ledger.header.get("version") or ())
    sizes = [ev for ev in ledger.hugetlb if not only or hvo.name(ev) in only]
    # The kernel's memmap counters witness a hugepage size only where it alone changed them.
    alone = not ledger.devices and len(ledger.hugetlb) == 1
    delta = ledger.memmap_delta() if alone else None
    devices += [hvo.check_size(ev, version, expect, allow_skip, delta) for ev in sizes]
    problems = [f"inconsistent log: {p}" for p in ledger.inconsistent]
    problems += [f"inconsistent log, {d.name}: {p}" for d in chosen for p in d.inconsistencies()]
    problems += [f"no dax device {name!r} (by chardev or namespace, as `daxctl list` shows them)"
                 for name in only if not any(d.known_as((name,)) for d in ledger.devices)
                 and not any(hvo.name(ev) == name for ev in ledger.hugetlb)]
    if ledger.lost:
        problems.append(f"{ledger.lost} events lost: the ledger is incomplete")
    bad = {k: v for k, v in ledger.bpf_errors.items() if v}
    if bad:
        problems.append("BPF-side errors: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
    if not devices and not only:  # with -d, each name that matched nothing is said above
        problems.append("no dax device with memory in /sys/bus/dax/devices: nothing to audit"
                        if ledger.header.get("walk") == "audit"
                        else "no device-dax range was set up while tracing")
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
           "events_lost": ledger.lost, "bpf_errors": dict(ledger.bpf_errors),
           "waived": list(allow_skip)}
    if ledger.feature:
        layout = ledger.layout
        doc["layout"] = {"name": layout.name, "evidence": layout.evidence,
                         "validated": layout.layout is not None and layout.layout.validated}
    if problems:
        doc["problems"] = problems
    if ledger.command is not None:
        doc["command"] = ledger.command
    if ledger.vmstat:
        doc["nr_memmap_pages"] = ledger.vmstat
    return doc


def unsealed(doc: dict, why: str) -> dict:
    """The verdict of a log that does not prove itself whole (`why`, logfile.Sealed): a pass is
    only incomplete (what is missing could be a failure), a failure or an error stands."""
    out = {**doc, "sealed": False}
    if doc["verdict"] == "pass":
        out["verdict"] = "incomplete"
        out["unjudged_log"] = why
    return out


def changed_since(doc: dict, before: dict | None) -> dict:
    """`stats` without --cumulative: the document with only the devices that are new or whose
    part changed since the last interval's document (bcc tools clear their maps each interval;
    a ledger cannot be cut in time, since one range's events may straddle two intervals)."""
    old = {(d["device"], d["start_pfn"]): d for d in (before or {}).get("devices", ())}
    devices = [d for d in doc["devices"] if old.get((d["device"], d["start_pfn"])) != d]
    return {**doc, "devices": devices}


EXIT = {"pass": 0, "fail": 1, "incomplete": 2, "error": 2}
