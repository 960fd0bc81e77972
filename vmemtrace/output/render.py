"""Tables for people, JSON for scripts. No logic beyond layout."""

import json
import sys

from tabulate import tabulate

from vmemtrace.errors import document_sent, printable, stops_held
from vmemtrace.judge.layouts import BY_NAME
from vmemtrace.log.events import cxl_of
from vmemtrace.log.rows import layouts


def safe(value):
    """A table cell or line that cannot start a line of its own or move the cursor."""
    return printable(value) if isinstance(value, str) else value


def table(rows, **kwargs) -> str:
    return tabulate([[safe(cell) for cell in row] for row in rows],
                    headers=[safe(h) for h in kwargs.pop("headers", ())], **kwargs)


def emit_json(doc) -> None:
    """The command's one JSON document, written whole: a stop waits until it is out, and
    none is printed after it (errors.exit_document)."""
    with stops_held():
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
        document_sent()


def json_line(doc) -> str:
    """One document on one line: trace --json, stats --json, lab --json."""
    return json.dumps(doc, sort_keys=True)


def _yn(value) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def _layout(feature: dict) -> str:
    """The kernel's vmemmap layout as `check` prints it (judge/layouts.py)."""
    name = feature.get("layout")
    if name is None:
        return "-"
    known = BY_NAME.get(name)
    what = known.what if known is not None else "not one vmemtrace knows: verdicts at most incomplete"
    model = "" if known is None or known.validated else " (model from the kernel source, " \
                                                        "not yet confirmed on a running kernel)"
    return f"{name}: {what}{model}; evidence: {feature.get('layout_evidence', '')}"


def _hvo(hvo: dict | None) -> str:
    """HVO's switches and the hugetlb pools, as `check` reads them (judge/hvo.py judges them)."""
    if hvo is None:
        return "-"
    if hvo["sysctl"] is None:
        return "not built in (no vm.hugetlb_optimize_vmemmap)"
    boot = f", hugetlb_free_vmemmap={hvo['cmdline']} at boot" if hvo["cmdline"] else ""
    state = "on" if hvo["sysctl"] == 1 else "off"
    pools = ", ".join(f"{kb} kB: {n}" for kb, n in sorted(hvo["pools"].items())) or "none"
    return f"{state} (vm.hugetlb_optimize_vmemmap = {hvo['sysctl']}{boot}); hugepages {pools}"


def check_table(report: dict) -> str:
    opts = report["config"]["options"]
    head = [
        ("kernel", report["kernel"]),
        ("compound-devmap optimisation", f"{_yn(report['feature']['present'])}: "
                                         f"{report['feature']['evidence']}"),
        ("vmemmap layout", _layout(report["feature"])),
        ("HugeTLB vmemmap optimisation", _hvo(report.get("hvo"))),
        ("config", report["config"]["source"] or "not found (/proc/config.gz, /boot/config-*)"),
        ("config options", " ".join(f"{k}={v}" for k, v in opts.items()) if opts else "-"),
        ("privileged", _yn(report["privileged"])),
        ("BTF", report["btf"] or "no"),
        ("headers for BCC", report["headers"] or "no"),
        ("bcc", report["bcc"] or "not importable"),
        ("BPF program", report.get("bpf_program") or "-"),
        ("BPF facts from", " ".join(f"{k}={v}" for k, v in report.get("facts_from", {}).items()) or "-"),
        ("BPF trampolines", _trampolines(report.get("trampolines"))),
        ("leftover kprobes", "; ".join(report.get("leftover_kprobes", [])) or "none"),
        ("can trace", "yes" if report["can_trace"] else "no"),
    ]
    rows = [(name, t["availability"], t["strategy"], t["reason"])
            for name, t in report["targets"].items()]
    out = (table(head, tablefmt="plain") + "\n\n"
           + table(rows, headers=["probe target", "availability", "strategy", "why"]))
    if report.get("timing"):
        # Spans overlap: the compile runs in its own thread while the kernel's facts are read.
        spans = [(t["phase"], f"{t['start']:.2f}", f"{t['end']:.2f}", f"{t['seconds']:.2f}")
                 for t in report["timing"]]
        out += "\n\n" + table(spans, headers=["start-up (check --timing)", "from s", "to s",
                                                "seconds"])
    return out


def _trampolines(t: dict | None) -> str:
    """Whether probes may attach by fentry/fexit here, and why not (check --json "trampolines")."""
    if t is None:
        return "-"
    return "yes" if t["possible"] else f"no: {t['reason']}"


def num(value) -> str:
    return "-" if value is None else str(value)


def _triple(d: dict) -> str:
    return f"{num(d['observed'])} / {num(d['expected'])} / {num(d['naive'])}"


def cxl_place(cxl: dict) -> str:
    """Where a device lies in CXL, in `cxl list`'s names: "CXL region0 (pmem, decoder0.0, mem0)"."""
    what = [cxl["mode"], cxl["decoder"], ", ".join(cxl["memdevs"])]
    region = f"CXL {cxl['region']}"
    return f"{region} ({', '.join(w for w in what if w)})"


def verify_table(doc: dict) -> str:
    rows = []
    for d in doc["devices"]:
        rows.append((d["device"], d["start_pfn"], d["nr_pages"], num(d["align"]),
                     "yes" if d["altmap"] else "no", _yn(d["expected_optimized"]),
                     _yn(d["optimized"]), _triple(d["vmemmap_pages"]),
                     _triple(d["struct_pages_initialized"]),
                     num(d["memmap_init_seconds"]), d["verdict"]))
    out = [safe(f"kernel {doc['kernel']}  expect {doc.get('expect', 'auto')}  verdict {doc['verdict'].upper()}"
           + (f"  (waived: {', '.join(doc['waived'])})" if doc.get("waived") else ""))]
    if rows:
        out.append(table(rows, headers=["device", "start pfn", "pages", "align", "altmap",
                                           "eligible", "optimised", "vmemmap pages obs/exp/naive",
                                           "struct pages init obs/exp/naive", "init s", "verdict"]))
    for d in doc["devices"]:
        if d.get("cxl"):
            out.append(safe(f"{d['device']} lies in {cxl_place(d['cxl'])}"))
    for d in doc["devices"]:
        out.append("")
        out.append(table([(f"{d['device']}", c["name"], c["status"], c["detail"]) for c in d["checks"]],
                            headers=["device", "check", "status", "detail"]))
    for d in doc["devices"]:
        if d.get("unjudged"):
            out.append(safe(f"not judged on {d['device']}: {', '.join(d['unjudged'])} (the "
                            "verdict is not earned without them; --allow-skip CHECK waives one)"))
    for p in doc.get("problems", []):
        out.append(safe(f"problem: {p}"))
    return "\n".join(out)


TRACE_HEADER = f"{'TIME':<15} {'PID':>7} {'COMM':<16} EVENT"


def event_line(ev: dict, when: str) -> str:
    """One line per event for `trace`: when, the task that did it (pid and comm, as bcc's
    tools print them; "-" for what vmemtrace itself read, as walks and device events), what."""
    pid, comm = ((ev["pid"], ev["comm"]) if "pid" in ev else
                 tuple(ev["tasks"][0]) if ev.get("tasks") else ("-", "-"))
    task = f"{pid:>7} {comm:<16}"
    return safe(f"{when:<15} {task} {_event_line(ev)}")


def _event_line(ev: dict) -> str:
    kind = ev["type"]
    if kind == "section":
        return (f"SECTION  pfn {ev['pfn']} +{ev['nr_pages']}  compound {ev['pfns_per_compound']}  "
                f"altmap {'yes' if ev['altmap'] else 'no'}  ptes {ev['ptes']} fresh {ev['fresh']} "
                f"reused {ev['reused']}  allocs {ev['allocs']}/{ev['alloc_calls']} "
                f"blocks {ev['direct_bytes']} B  page tables {ev['pt_pages']}")
    if kind == "range":
        return (f"RANGE    pfn {ev['start_pfn']} +{ev['nr_pages']}  compound {ev['pfns_per_compound']}  "
                f"altmap {'yes' if ev['altmap'] else 'no'}  memmap_init_compound {ev['mic_calls']} calls "
                f"{ev['mic_pages']} struct pages  __init_zone_device_page {ev['izdp_calls']}  "
                f"{ev['duration_ns'] / 1e6:.3f} ms")
    if kind == "walk":
        levels = " ".join(f"{k}={v}" for k, v in sorted(ev["levels"].items()))
        return (f"WALK     pfn {ev['start_pfn']} +{ev['nr_pages']}  {ev['paging']}-level  "
                f"vmemmap pages {ev['vmemmap_pages']} "
                f"mapped {ev['mapped']} ({levels})  distinct {ev['distinct']} reused {ev['reused']}")
    if kind == "compound":
        return (f"COMPOUND head pfn {ev['head_pfn']}  ptes {ev['ptes']} fresh {ev['fresh']} "
                f"reused {ev['reused']} on-first-tail {ev['on_tail']}")
    if kind == "sections":
        runs = " ".join(f"pfn {lo} +{hi - lo}" for lo, hi in ev["runs"][:2])
        return (f"SECTIONS {runs}  {ev['count']} calls  compound {ev['pfns_per_compound']}  "
                f"altmap {'yes' if ev['altmap'] else 'no'}  ptes {ev['ptes']} fresh {ev['fresh']} "
                f"reused {ev['reused']}  allocs {ev['allocs']}/{ev['alloc_calls']} "
                f"blocks {ev['direct_bytes']} B  page tables {ev['pt_pages']}")
    if kind == "compounds":
        shown = layouts(ev)
        text = ", ".join(f"{n} with ptes {k[0]} fresh {k[1]} reused {k[2]} on-first-tail {k[3]}"
                         for k, n in shown[:3])
        return (f"COMPOUNDS range pfn {ev['range_start_pfn']}  {ev['count']} compound pages"
                f"{' (walk)' if ev.get('source') == 'walk' else ''}: {text}"
                + (f", {len(shown) - 3} more layouts" if len(shown) > 3 else ""))
    if kind == "header":
        return f"HEADER   kernel {ev['kernel']}  " + " ".join(f"{k}={v}" for k, v in ev["strategy"].items())
    if kind == "hits":
        return "HITS     " + " ".join(f"{k}={v}" for k, v in ev["hits"].items())
    if kind == "lost":
        return f"LOST     {ev['count']} events  " + " ".join(f"{k}={v}" for k, v in ev["errors"].items())
    if kind == "vmstat":
        boot = (f" nr_memmap_boot_pages {ev['nr_memmap_boot_pages']}"
                if "nr_memmap_boot_pages" in ev else "")
        return f"VMSTAT   nr_memmap_pages {ev['nr_memmap_pages']}{boot} ({ev['when']})"
    if kind == "hugetlb":
        freed = f"; {ev['freed']} freed" if ev.get("freed") else ""
        return (f"HUGETLB  {ev['size_kb']} kB  {ev['folios']} folios walked (pool "
                f"{ev['nr_hugepages']}), {ev['distinct']} distinct vmemmap pages behind them"
                f"{freed}")
    if kind == "device":
        cxl = cxl_of(ev)
        where = "  in " + cxl_place(cxl) if cxl else ""
        return (f"DEVICE   {ev['name']} pfn {ev['start_pfn']} +{ev['nr_pages']} "
                f"align {ev['align']}{where}")
    return f"{kind.upper():8} " + json.dumps(ev)
