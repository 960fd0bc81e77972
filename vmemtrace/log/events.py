"""The event log: what a trace saw, as JSON Lines (record writes it, replay reads it back).

Every line is one object with a "type". The first is the header, which names the schema version
and the kernel. Types and their required keys are listed here once; the reader checks them, so
a corrupt or truncated file fails on the line that is wrong, never deep inside the ledger.
"""

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from typing import IO

from vmemtrace import __version__
from vmemtrace.errors import VmemtraceError
from vmemtrace.log.difference import CELL_WIDTH, TABLE_CELLS
from vmemtrace.log.rows import COLUMNS, LEGACY_COLUMNS
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
    # /proc/vmstat nr_memmap_pages (6.11+) before and after the command
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
    # the last line of a log that was written whole (LogFile.seal()): how many lines precede
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
            "sections": ("ktime",)}

# Types of the keys that are not non-negative integer counts (the rest are: pfns, pages, bytes).
BOOL, STR, LIST, DICT, NUMBER, SIGNED, INT_MAP, MAYBE_INT, INT_LIST = (
    "a boolean", "a string", "a list", "an object", "a number", "an integer", "an object of counts",
    "a count or null", "a list of counts")
RUNS, TASKS = "a list of [first pfn, end pfn]", "a list of [pid, comm]"
CLASS_ROWS, PAGE_ROWS, PARTS, MAYBE_PAIR, STR_LIST, SOURCE = (
    f"a list of {len(COLUMNS) + 1} counts each", f"a list of {len(COLUMNS)} counts each",
    "a list of [part, pages, digest]", "a pair of counts or null", "a list of strings", '"walk"')
CELLS = f"a list of {TABLE_CELLS} [pages, head, digest, check]"
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


class Seal:
    """What a seal vouches for, kept as lines go by: their number, types and digest."""

    def __init__(self):
        self.lines, self.counts, self.hash = 0, {}, hashlib.sha256()

    def add(self, line: str, kind: str | None) -> None:
        self.lines += 1
        self.hash.update(line.encode())
        if kind is not None:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def event(self) -> dict:
        return {"type": "seal", "lines": self.lines, "counts": dict(sorted(self.counts.items())),
                "sha256": self.hash.hexdigest()}

    def disagreement(self, seal: dict) -> str | None:
        """How a log's seal disagrees with the lines before it, or None."""
        mine = self.event()
        for key in ("lines", "counts", "sha256"):
            if seal[key] != mine[key]:
                return (f"its seal says {key} {json.dumps(seal[key])[:80]}, the lines before it "
                        f"have {json.dumps(mine[key])[:80]}")
        return None


class LogFile:
    """An event log written as events come, to a hidden temporary name beside `path`, opened
    before tracing starts so that a path that cannot be written fails first. Mode 0600: logs
    hold physical addresses. seal() ends it with a seal and renames it to `path`; a log that is
    not sealed (the trace failed, or a signal ended it) is removed by abort(), so a file at
    `path` is always whole. Only a process killed outright leaves the temporary file."""

    def __init__(self, path: str):
        self.path, self.count, self.seal_of = path, 0, Seal()
        head, tail = os.path.split(path)
        self.tmp = os.path.join(head, f".{tail}.{os.getpid()}.partial")
        if os.path.isdir(path):
            raise VmemtraceError(f"cannot write {path}: Is a directory")
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise VmemtraceError(f"cannot write {path}: {e.strerror}") from None
        try:
            self.fh = os.fdopen(fd, "w")
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise

    def write(self, event: dict) -> None:
        line = json.dumps(event, sort_keys=True) + "\n"
        try:
            self.fh.write(line)
            if self.count == 0 or event["type"] in ("range", "command", "lost"):
                self.fh.flush()  # the header at once: a full disk fails before the command runs
        except OSError as e:
            raise VmemtraceError(f"cannot write {self.path}: {e.strerror}") from None
        self.seal_of.add(line, event["type"])
        self.count += 1

    def seal(self) -> None:
        """The seal, written last and made durable before the log takes its name."""
        try:
            self.fh.write(json.dumps(self.seal_of.event(), sort_keys=True) + "\n")
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise VmemtraceError(f"cannot write {self.path}: {e.strerror}") from None

    def abort(self) -> None:
        """The unsealed log removed: nothing at `path` claims to be whole."""
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write(events: Iterable[dict], fh: IO[str]) -> None:
    for ev in events:
        fh.write(json.dumps(ev, sort_keys=True) + "\n")
    fh.flush()


def _lines(fh: IO[str], name: str) -> Iterator[tuple[int, str]]:
    """(line number, line), each read with a length cap: /dev/zero is not a log."""
    lineno = 0
    while True:
        line = fh.readline(MAX_LINE + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_LINE:
            raise VmemtraceError(f"{name}:{lineno}: a line longer than {MAX_LINE} characters: "
                                 "not an event log")
        yield lineno, line


def indexed(event: dict) -> bool:
    """Whether a compound event, or each row of a compounds summary, records out_of_order (any
    other event: True)."""
    if event["type"] == "compound":
        return "out_of_order" in event
    if event["type"] == "compounds":
        return all(len(r) == len(COLUMNS) + 1 for r in event["classes"]) and \
            all(len(r) == len(COLUMNS) for r in event["kept"])
    return True


UNSEALED = ("the log has no seal: it may have been cut or edited after it was written "
            "(replay --trust-unsealed judges it as whole)")
UNINDEXED = ("the log was recorded before compound pages recorded their vmemmap indices "
             f"(schema < {INDEXED}): an index populated twice beside one skipped would not show "
             "(replay --trust-unsealed judges it as whole)")


class Sealed:
    """Whether the log stream() read proves itself whole, known once it has been read to its
    end: sealed, and of a schema whose compound pages prove their indices; `why` says what it
    lacks."""

    def __init__(self):
        self.sealed = False
        self.why: str | None = UNSEALED


def stream(fh: IO[str], name: str, sealed: Sealed | None = None) -> Iterator[dict]:
    """The events of a log one at a time, validated: each line one well-typed event, the header
    first and only there, and the closing events present (a log cut at a line boundary is
    truncated too; that is only known at its end, where the stream raises). A seal, where there
    is one, must be the last line and agree with every line before it; whether there was one is
    left in `sealed`. Errors name the file and line, and are exit 2: a bad log says nothing
    about the kernel. Nothing is kept: replay folds a log of any size in the memory its ranges
    need (ledger.Fold)."""
    header, closed, seal, seen = None, False, None, Seal()
    for lineno, line in _lines(fh, name):
        if seal is not None:
            raise VmemtraceError(f"{name}:{lineno}: a line after the seal (line {seal}): "
                                 "the log was added to after it was written")
        if not line.strip():
            seen.add(line, None)
            continue
        if not line.endswith("\n"):
            raise VmemtraceError(f"{name}:{lineno}: truncated line (the recording was cut off)")
        try:
            event = json.loads(line)
        except RecursionError:
            raise VmemtraceError(f"{name}:{lineno}: nested too deeply to be an event") from None
        except ValueError as e:
            raise VmemtraceError(f"{name}:{lineno}: not JSON ({getattr(e, 'msg', str(e))[:80]})") from None
        validate(event, f"{name}:{lineno}")
        if event["type"] == "seal":
            wrong = seen.disagreement(event)
            if wrong:
                raise VmemtraceError(f"{name}:{lineno}: the log is not as it was written: {wrong}")
            seal = lineno
            continue
        seen.add(line, event["type"])
        if header is None:
            if event["type"] != "header":
                raise VmemtraceError(f"{name}:{lineno}: the first event must be the header")
            if event["schema"] not in READABLE:
                raise VmemtraceError(f"{name}:{lineno}: schema {event['schema']} is not one of "
                                     f"{', '.join(map(str, READABLE))} (recorded by another "
                                     "vmemtrace version)")
            header = event
        elif event["type"] == "header":
            raise VmemtraceError(f"{name}:{lineno}: a second header (two logs joined?)")
        elif header["schema"] >= INDEXED and not indexed(event):
            raise VmemtraceError(f"{name}:{lineno}: a compound page without out_of_order in a "
                                 f"schema-{header['schema']} log")
        closed = closed or event["type"] == "lost"
        yield event
    if header is None:
        raise VmemtraceError(f"{name}: empty event log")
    # A trace closes with the BPF side's account (lost, hits); an audit has no BPF side.
    if header.get("walk") != "audit" and not closed:
        raise VmemtraceError(f"{name}: truncated: the closing events (lost, hits) are missing "
                             "(the recording was cut off)")
    if sealed is not None:
        sealed.sealed = seal is not None
        sealed.why = (UNSEALED if seal is None
                      else UNINDEXED if header["schema"] < INDEXED else None)


def read(fh: IO[str], name: str) -> list[dict]:
    """All events of a log, validated as stream() validates them."""
    return list(stream(fh, name))


def iter_file(path: str, sealed: Sealed | None = None) -> Iterator[dict]:
    """The events of the log at `path`, streamed (stream()); file errors are exit 2 too. Only
    a regular file: a FIFO with no writer, a terminal or a device would block or never end."""
    if path == "-":
        raise VmemtraceError("-: an event log is read from a file `record` wrote, not from "
                             "standard input")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise VmemtraceError(f"{path}: not a regular file: an event log is a file "
                                 "`record` wrote")
        with open(path) as fh:
            yield from stream(fh, path, sealed)
    except OSError as e:
        raise VmemtraceError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise VmemtraceError(f"{path}: not a text file") from None


def header_event(facts, ready, cflags: list[str], walk: str | None = None,
                 strategy: dict | None = None) -> dict:
    """walk: None, "fallback" (populate functions notrace: each range is walked), "cross-check"
    (probes and walk both), or "audit" (walk only, after the fact)."""
    return {"type": "header", "schema": SCHEMA, "tool": f"vmemtrace {__version__}",
            "kernel": facts.release, "version": list(facts.version),
            "feature": ready.feature.as_json(),
            "strategy": strategy or {s.name: s.strategy for s in ready.plan}, "cflags": cflags,
            "bcc": facts.bcc, "walk": walk, "started": time.time()}
