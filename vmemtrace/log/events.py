"""The events of a log: what a trace saw, one JSON object per line (log/logfile.py writes and
reads the file).

Every line is one object with a "type". The first is the header, which names the schema version
and the kernel. Types and their required keys are listed here once; the reader checks them, so
a corrupt or truncated file fails on the line that is wrong, never deep inside the ledger.
"""

import json
import time

from vmemtrace import __version__
from vmemtrace.errors import VmemtraceError
from vmemtrace.log.difference import CELL_WIDTH, TABLE_CELLS
from vmemtrace.log.rows import COLUMNS, HUGETLB_ROW, LEGACY_COLUMNS
from vmemtrace.log.sections import SHARED as SECTION_SHARED
from vmemtrace.log.sections import SUMMED

# 2: section events count allocations by their returns (plain, allocs, direct_bytes, pt_pages),
# range events count __init_zone_device_page hits, and a "hits" event closes the log.
# 3: a range's section calls are one "sections" event before its range event (log/sections.py), its
# compound pages one "compounds" event per source after its range or walk event (log/compounds.py):
# a log's size follows the ranges, not their size. Schema-2 logs, one "section" event per call
# and one "compound" event per page, are read as they are.
# 4: each compound page row ends with out_of_order (its PTEs whose index was not the next one),
# which proves every vmemmap index arrived once; a log without it cannot prove that.
SCHEMA = 4
READABLE = (2, 3, 4)
INDEXED = 4  # the first schema whose compound pages say their indices arrived in order

REQUIRED = {
    # kernel facts at trace start; strategy: target -> its strategy (probes/plan.py)
    "header": ("schema", "kernel", "version", "feature", "strategy"),
    # one __populate_section_memmap() call, aggregated in BPF
    "section": ("pfn", "nr_pages", "range_start_pfn", "pfns_per_compound", "ptes", "plain",
                "fresh", "reused", "existing", "alloc_calls", "allocs", "direct_bytes", "pt_pages",
                "altmap", "has_pgmap", "ok", "struct_page_size", "page_size"),
    # one compound page's vmemmap PTEs, aggregated in BPF
    "compound": ("head_pfn", "range_start_pfn", "pfns_per_compound", "ptes", "fresh", "reused",
                 "existing", "head_fresh", "tail_fresh", "tail_pfn", "on_tail", "max_index"),
    # a range's section events summed (log/sections.py): their counts, the keys they share, the
    # pfns they populated as [first, end) runs, the tasks [pid, comm] that made them
    "sections": ("count",) + SUMMED + SECTION_SHARED + ("altmap", "ok", "runs", "tasks", "problems"),
    # one source's compound pages of one range, judged as they came (log/compounds.py): rows are
    # compound events' counts in rows.COLUMNS order (a class's row after its page count),
    # parts [part, pages, digest]; "source": "walk" for the walk's; "cells" (optional: summaries
    # logged by 8760c1b, the first schema-3 build, lack it) the difference table, [pages, head, digest, check] each
    "compounds": ("range_start_pfn", "pfns_per_compound", "count", "classes", "unclassed",
                  "part_shift", "parts", "kept", "lowest_head", "highest_head", "reused_head",
                  "shared_tail", "problems"),
    # one memmap_init_zone_device() call
    "range": ("start_pfn", "nr_pages", "pfns_per_compound", "altmap", "altmap_base_pfn",
              "altmap_reserve", "altmap_free", "mic_calls", "mic_pages", "mic_min", "mic_max",
              "izdp_calls",
              "duration_ns", "struct_page_size", "page_size"),
    # the page-table walk of one range's vmemmap (kernel/kcore.py, walk/backing.py); its compound
    # pages follow as "compound" events with "source": "walk"; "existing": true marks the walk
    # of a device that was there before tracing started (the exporter audits those first)
    "walk": ("start_pfn", "nr_pages", "pfns_per_compound", "altmap", "vmemmap_pages", "mapped",
             "distinct", "reused", "levels", "struct_page_size", "page_size", "paging"),
    # one hugepage size's hugetlb folios and their vmemmap, walked (walk/hugetlb.py): rows of
    # rows.HUGETLB_ROW, each page that holds all of a folio's tails [pfn, folios mapping it],
    # the HVO switches and layout marker read with it ("existing": walked after the fact, by
    # audit); under verify also pool_before, freed, restored_rows, restored_distinct and
    # stale_heads (the freed folios walked again)
    "hugetlb": ("size_kb", "pfns_per_folio", "nr_hugepages", "folios", "rows", "shared_tails",
                "heads_shared", "distinct", "zones", "hvo", "struct_page_size", "page_size",
                "existing"),
    # /proc/vmstat nr_memmap_pages (6.11+) before and after the command, and where the kernel
    # has it nr_memmap_boot_pages
    "vmstat": ("when", "nr_memmap_pages"),
    # a dax device (one range of it) found in sysfs after the command (optional: "driver";
    # "mode", "namespace", "pgmap_start_pfn", "pgmap_nr_pages" from its nvdimm parent;
    # "mapping", "mappings" for a device of several ranges; "cxl_region", "cxl_decoder",
    # "cxl_memdevs", "cxl_mode" for one in a CXL region; see kernel/daxdev.py)
    "device": ("name", "start_pfn", "nr_pages", "align"),
    # the kernel's own "memmap_init_zone_device initialised N pages in Xms" (kernel/kmsg.py)
    "kmsg": ("pages", "ms"),
    # the command verify/record ran
    "command": ("argv", "exit", "seconds"),
    # events the perf buffer dropped and BPF-side failures, at the end
    "lost": ("count", "errors"),
    # entry-probe hits per probed function, at the end: an attached probe with none is blind
    "hits": ("hits",),
    # the last line of a log that was written whole (log/logfile.py LogFile.seal()): how many lines precede
    # it, of which types, and the SHA-256 of those lines as written
    "seal": ("lines", "counts", "sha256"),
}



def cxl_of(device: dict) -> dict | None:
    """The CXL region a "device" event lies in, as `cxl list` names it (region, its root
    decoder, the memory devices behind it, pmem or ram); None where it lies in none."""
    if "cxl_region" not in device:
        return None
    return {"region": device["cxl_region"], "decoder": device.get("cxl_decoder"),
            "memdevs": device.get("cxl_memdevs", []), "mode": device.get("cxl_mode")}


def named(device: dict, names) -> bool:
    """A "device" event named by its chardev (daxctl's "chardev", dax0.0) or by its nvdimm
    namespace (ndctl's "dev", namespace0.0): what -d matches. No names: every device."""
    return not names or device.get("name") in names or device.get("namespace") in names

# The "lost" event's error keys: struct errors_t's fields (bpf/vmemtrace.h), and the kernel's
# count of probe runs it skipped (probes/maps.py skipped_runs()).
ERRORS = ("compound_map_full", "no_context", "read_failed", "missed_return", "unmatched_alloc",
          "unpaired_return", "skipped_runs")

# Keys an event may carry, checked when present (a doctored "pgmap_start_pfn": "x" would
# otherwise reach the ledger's arithmetic).
# section and range: the task that did it and when (CLOCK_MONOTONIC ns); logs recorded before
# they were added lack them, and are read as they are.
TASK = ("pid", "ktime_ns", "comm")
# range and walk: "boot_sections", the range's partly filled memory sections that were present
# at boot (read from mem_section where kcore can be read; kernel/kcore.py early_sections()).
# sections: "ktime", [first, last] CLOCK_MONOTONIC ns of its calls' returns (log/sections.py).
CXL = ("cxl_region", "cxl_decoder", "cxl_memdevs", "cxl_mode")
OPTIONAL = {"device": ("driver", "mode", "namespace", "pgmap_start_pfn", "pgmap_nr_pages",
                       "mapping", "mappings", *CXL),
            "section": TASK, "range": TASK + ("boot_sections",), "walk": ("boot_sections",),
            "compound": ("source", "out_of_order"), "compounds": ("source", "cells"),
            "sections": ("ktime",), "vmstat": ("nr_memmap_boot_pages",),
            # verify's and the exporter's: the freed folios walked again; the rows and distinct
            # pages of each NUMA node's folios, where sysfs tells the nodes, and where every
            # folio was walked each node's pool [node, nr_hugepages] (walk/hugetlb.py)
            "hugetlb": ("pool_before", "freed", "restored_rows", "restored_distinct",
                        "stale_heads", "node_rows", "node_distinct", "node_pools")}

# Types of the keys that are not non-negative integer counts (the rest are: pfns, pages, bytes).
BOOL, STR, LIST, DICT, NUMBER, SIGNED, INT_MAP, MAYBE_INT, INT_LIST = (
    "a boolean", "a string", "a list", "an object", "a number", "an integer", "an object of counts",
    "a count or null", "a list of counts")
RUNS, TASKS = "a list of [first pfn, end pfn]", "a list of [pid, comm]"
CLASS_ROWS, PAGE_ROWS, PARTS, MAYBE_PAIR, STR_LIST, SOURCE = (
    f"a list of {len(COLUMNS) + 1} counts each", f"a list of {len(COLUMNS)} counts each",
    "a list of [part, pages, digest]", "a pair of counts or null", "a list of strings", '"walk"')
CELLS = f"a list of {TABLE_CELLS} [pages, head, digest, check]"
HUGETLB_ROWS, PFN_COUNTS = f"a list of {len(HUGETLB_ROW)} counts each", "a list of [pfn, count]"
NODE_ROWS, NODE_COUNTS = f"a list of {len(HUGETLB_ROW) + 1} counts each", "a list of [node, count]"
TYPES = {
    "header": {"kernel": STR, "version": LIST, "feature": DICT, "strategy": DICT},
    "section": {"altmap": BOOL, "has_pgmap": BOOL, "ok": BOOL, "comm": STR},
    "range": {"altmap": BOOL, "comm": STR, "boot_sections": INT_LIST},
    "walk": {"altmap": BOOL, "levels": INT_MAP, "boot_sections": INT_LIST},
    "vmstat": {"when": STR},
    "device": {"name": STR, "align": MAYBE_INT, "driver": STR, "mode": STR, "namespace": STR,
               "cxl_region": STR, "cxl_decoder": STR, "cxl_memdevs": STR_LIST, "cxl_mode": STR},
    "command": {"argv": LIST, "exit": SIGNED, "seconds": NUMBER},
    "lost": {"errors": INT_MAP},
    "hits": {"hits": INT_MAP},
    "seal": {"counts": INT_MAP, "sha256": STR},
    "compound": {"source": SOURCE},
    "sections": {"has_pgmap": BOOL, "altmap": BOOL, "ok": BOOL, "runs": RUNS, "tasks": TASKS,
                 "problems": STR_LIST, "ktime": INT_LIST},
    "compounds": {"source": SOURCE, "classes": CLASS_ROWS, "kept": PAGE_ROWS, "parts": PARTS,
                  "lowest_head": MAYBE_INT, "highest_head": MAYBE_INT, "reused_head": MAYBE_INT,
                  "shared_tail": MAYBE_PAIR, "problems": STR_LIST, "cells": CELLS},
    "hugetlb": {"rows": HUGETLB_ROWS, "restored_rows": HUGETLB_ROWS, "shared_tails": PFN_COUNTS,
                "hvo": DICT, "existing": BOOL, "node_rows": NODE_ROWS,
                "node_distinct": NODE_COUNTS, "node_pools": NODE_COUNTS},
}
# Physical limits: 52 address bits (x86_64 with 5-level paging) are 2^40 pages of 4 KiB.
MAX_PFN = 1 << 40
MAX_COUNT = 1 << 52
MAX_LINE = 1 << 20  # the largest events, compounds summaries, are tens of KiB


def _count(v) -> bool:
    return type(v) is int and 0 <= v < MAX_COUNT


def _typed(v, kind: str) -> bool:
    if kind == BOOL:
        return type(v) is bool
    if kind == STR:
        return isinstance(v, str)
    if kind == LIST:
        return isinstance(v, list)
    if kind == DICT:
        return isinstance(v, dict)
    if kind == NUMBER:
        return type(v) in (int, float) and 0 <= v < MAX_COUNT
    if kind == SIGNED:
        return type(v) is int and -MAX_COUNT < v < MAX_COUNT
    if kind == INT_MAP:
        return isinstance(v, dict) and all(isinstance(k, str) and _count(n) for k, n in v.items())
    if kind == MAYBE_INT:
        return v is None or _count(v)
    if kind == INT_LIST:
        return isinstance(v, list) and len(v) <= 2 and all(_count(n) for n in v)
    if kind in (CLASS_ROWS, PAGE_ROWS):
        widths = {len(COLUMNS) + (kind == CLASS_ROWS), len(LEGACY_COLUMNS) + (kind == CLASS_ROWS)}
        return isinstance(v, list) and all(
            isinstance(r, list) and len(r) in widths and all(_count(n) for n in r) for r in v)
    if kind == PARTS:
        return isinstance(v, list) and all(
            isinstance(r, list) and len(r) == 3 and _count(r[0]) and _count(r[1])
            and type(r[2]) is int and 0 <= r[2] < 1 << 64 for r in v)
    if kind == CELLS:
        return isinstance(v, list) and len(v) == TABLE_CELLS and all(
            isinstance(c, list) and len(c) == CELL_WIDTH and _count(c[0]) and _count(c[1]) and
            all(type(n) is int and 0 <= n < 1 << 64 for n in c[2:]) for c in v)
    if kind == MAYBE_PAIR:
        return v is None or (isinstance(v, list) and len(v) == 2 and all(_count(n) for n in v))
    if kind == STR_LIST:
        return isinstance(v, list) and all(isinstance(t, str) for t in v)
    if kind == SOURCE:
        return v == "walk"
    if kind in (HUGETLB_ROWS, NODE_ROWS):
        width = len(HUGETLB_ROW) + (kind == NODE_ROWS)
        return isinstance(v, list) and all(
            isinstance(r, list) and len(r) == width and all(_count(n) for n in r) for r in v)
    if kind in (PFN_COUNTS, NODE_COUNTS):
        return isinstance(v, list) and all(
            isinstance(r, list) and len(r) == 2 and all(_count(n) for n in r) for r in v)
    if kind == RUNS:
        return isinstance(v, list) and all(
            isinstance(r, list) and len(r) == 2 and all(_count(n) and n <= MAX_PFN for n in r)
            for r in v)
    if kind == TASKS:
        return isinstance(v, list) and all(
            isinstance(t, list) and len(t) == 2 and _count(t[0]) and isinstance(t[1], str)
            for t in v)
    return _count(v)


# What a header's walk says (header_event()).
WALKS = (None, "fallback", "cross-check", "audit")


def _header_problem(event: dict) -> str | None:
    """A header no vmemtrace wrote: a release that is not 2 to 4 small numbers (the checks
    compare it with compat's releases), a strategy or walk no plan makes."""
    version = event["version"]
    if not (2 <= len(version) <= 4 and all(type(v) is int and 0 <= v < 1 << 16 for v in version)):
        return f"version {json.dumps(version)[:40]} is not a kernel release's numbers"
    from vmemtrace.probes.plan import STRATEGIES

    odd = [f"{k}: {json.dumps(v)}" for k, v in event["strategy"].items()
           if not isinstance(v, str) or v not in STRATEGIES]
    if odd:
        return f"strategy {odd[0][:60]} is none a probe plan gives"
    feature = event["feature"]
    if feature.get("present") not in (True, False, None) or not all(
            isinstance(feature.get(k, ""), str) for k in ("evidence", "layout", "layout_evidence")):
        return f"feature {json.dumps(feature)[:60]} is not what check reports"
    if event.get("walk") not in WALKS:
        return f"walk {json.dumps(event.get('walk'))[:40]} is not one of {WALKS}"
    return None


def _limits(event: dict) -> str | None:
    """Numbers that no kernel can produce, which would otherwise make the ledger or geometry
    loop for ever or divide by zero."""
    if event["type"] == "header":
        return _header_problem(event)
    if event["type"] == "lost":
        odd = sorted(set(event["errors"]) - set(ERRORS))
        if odd:
            return f"error {odd[0][:40]!r} is none the BPF program counts"
    for key in ("pfn", "start_pfn", "head_pfn", "range_start_pfn", "nr_pages", "lowest_head",
                "highest_head"):
        if event.get(key) is not None and event[key] > MAX_PFN:
            return f"{key} {event[key]} is beyond 2^40 pages (52 physical address bits)"
    ppc = event.get("pfns_per_compound")
    if ppc is not None and (ppc < 1 or ppc & (ppc - 1) or ppc > 1 << 30):
        return f"pfns_per_compound {ppc} is not a power of two from 1 to 2^30"
    if "page_size" in event and event["page_size"] not in (4096, 16384, 65536):
        return f"page_size {event['page_size']} is not 4, 16 or 64 KiB"
    if event.get("part_shift", 0) > 40:
        return f"part_shift {event['part_shift']} is beyond 2^40 pages"
    sps = event.get("struct_page_size")
    if sps is not None and not (32 <= sps <= 256 and sps % 8 == 0):
        return f"struct_page_size {sps} is not a multiple of 8 from 32 to 256"
    return None


def validate(event, where: str) -> dict:
    if not isinstance(event, dict):
        raise VmemtraceError(f"{where}: not a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in REQUIRED:
        raise VmemtraceError(f"{where}: unknown event type {kind!r}")
    missing = [k for k in REQUIRED[kind] if k not in event]
    if missing:
        raise VmemtraceError(f"{where}: {kind} event lacks {', '.join(missing)}")
    types = TYPES.get(kind, {})
    for key in REQUIRED[kind] + tuple(k for k in OPTIONAL.get(kind, ()) if k in event):
        if not _typed(event[key], types.get(key, "")):
            expected = types.get(key, "a non-negative integer")
            raise VmemtraceError(f"{where}: {kind} event's {key} is not {expected}: "
                                 f"{json.dumps(event[key])[:40]}")
    problem = _limits(event)
    if problem:
        raise VmemtraceError(f"{where}: {kind} event: {problem}")
    return event


def header_event(facts, ready, cflags: list[str], walk: str | None = None,
                 strategy: dict | None = None) -> dict:
    """walk: None, "fallback" (populate functions notrace: each range is walked), "cross-check"
    (probes and walk both), or "audit" (walk only, after the fact)."""
    return {"type": "header", "schema": SCHEMA, "tool": f"vmemtrace {__version__}",
            "kernel": facts.release, "version": list(facts.version),
            "feature": ready.feature.as_json(),
            "strategy": strategy or {s.name: s.strategy for s in ready.plan}, "cflags": cflags,
            "bcc": facts.bcc, "walk": walk, "started": time.time()}
