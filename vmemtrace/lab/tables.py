"""The lab's per-case table: one row per case and device, from each case's verify document."""

from vmemtrace.output.render import num as _n
from vmemtrace.output.render import table

TRIPLE = ("observed", "expected", "naive")


def _yn(v) -> str:
    return {True: "yes", False: "no", None: "-"}[v]


def _notes(device) -> list:
    """What did not pass on this device: failed checks, then the skipped ones."""
    if device is None:
        return []
    notes = [f"{c['name']}: {c['status']}" for c in device["checks"] if c["status"] in ("fail", "error")]
    skipped = sorted(c["name"] for c in device["checks"] if c["status"] == "skip")
    return notes + (["skipped " + ",".join(skipped)] if skipped else [])


def case_table(doc: dict) -> str:
    rows = []
    for entry, case, r in _documents(doc):
        audit = _audit_cell(entry.get("audit")) if r is entry["result"] else "-"
        for d in r.get("devices") or [None]:
            notes = "; ".join(_notes(d) + r.get("problems", [])
                              + ([entry["problem"]] if "problem" in entry else []))
            if d is None:
                rows.append((case, "-", "-", "-", "-", "-", "-", r["verdict"], audit, notes))
                continue
            vm, sp = d["vmemmap_pages"], d["struct_pages_initialized"]
            # The CXL region it lies in, as `cxl list` names it (documents before it: none).
            where = f" ({d['cxl']['region']})" if d.get("cxl") else ""
            rows.append((case, d["device"] + where, _n(d["align"]), _yn(d["expected_optimized"]),
                         _yn(d["optimized"]), "/".join(_n(vm[k]) for k in TRIPLE),
                         "/".join(_n(sp[k]) for k in TRIPLE), r["verdict"],
                         audit, notes))
    return table(rows, headers=["case", "device", "align", "eligible", "optimised",
                                   "vmemmap pages obs/exp/naive", "struct pages init obs/exp/naive",
                                   "verdict", "audit (walked vmemmap pages)", "notes"])


def _documents(doc: dict):
    """(entry, case label, verify document) per case, and a second row for an hvo case's free."""
    for entry in doc["cases"]:
        yield entry, entry["case"], entry["result"]
        if "free" in entry:
            yield entry, f"{entry['case']} free", entry["free"]


def _audit_cell(doc) -> str:
    if not doc:
        return "-"
    pages = ",".join(_n(d["vmemmap_pages"]["observed"]) for d in doc.get("devices", []))
    return f"{doc['verdict']} ({pages or '-'})"
