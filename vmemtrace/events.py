"""The event log: what a trace saw, as JSON Lines (record writes it, replay reads it back).

Every line is one object with a "type". The first is the header, which names the schema version
and the kernel. Types and their required keys are listed here once; the reader checks them, so
a corrupt or truncated file fails on the line that is wrong, never deep inside the ledger.
"""

import json
import os
from typing import IO, Iterable, Iterator, List

from vmemtrace.errors import VmemtraceError

# 2: section events count allocations by their returns (plain, allocs, direct_bytes, pt_pages),
# range events count __init_zone_device_page hits, and a "hits" event closes the log.
SCHEMA = 2

REQUIRED = {
    # kernel facts at trace start; strategy: target -> kprobe/kretprobe/fallback/unavailable
    "header": ("schema", "kernel", "version", "feature", "strategy"),
    # one __populate_section_memmap() call, aggregated in BPF
    "section": ("pfn", "nr_pages", "range_start_pfn", "pfns_per_compound", "ptes", "plain",
                "fresh", "reused", "existing", "alloc_calls", "allocs", "direct_bytes", "pt_pages",
                "altmap", "has_pgmap", "ok", "struct_page_size", "page_size"),
    # one compound page's vmemmap PTEs, aggregated in BPF
    "compound": ("head_pfn", "range_start_pfn", "pfns_per_compound", "ptes", "fresh", "reused",
                 "existing", "head_fresh", "tail_fresh", "tail_pfn", "on_tail", "max_index"),
    # one memmap_init_zone_device() call
    "range": ("start_pfn", "nr_pages", "pfns_per_compound", "altmap", "altmap_base_pfn",
              "altmap_reserve", "altmap_free", "mic_calls", "mic_pages", "izdp_calls",
              "duration_ns", "struct_page_size", "page_size"),
    # the page-table walk of one range's vmemmap (kernel/kcore.py, backing.py); its compound
    # pages follow as "compound" events with "source": "walk"
    "walk": ("start_pfn", "nr_pages", "pfns_per_compound", "altmap", "vmemmap_pages", "mapped",
             "distinct", "reused", "levels", "struct_page_size", "page_size", "paging"),
    # /proc/vmstat nr_memmap_pages (6.11+) before and after the command
    "vmstat": ("when", "nr_memmap_pages"),
    # a dax device found in sysfs after the command (optional: "mode", "pgmap_start_pfn",
    # "pgmap_nr_pages" from its nvdimm parent, see kernel/daxdev.py)
    "device": ("name", "start_pfn", "nr_pages", "align"),
    # the kernel's own "memmap_init_zone_device initialised N pages in Xms" (kernel/kmsg.py)
    "kmsg": ("pages", "ms"),
    # the command verify/record ran
    "command": ("argv", "exit", "seconds"),
    # events the perf buffer dropped and BPF-side failures, at the end
    "lost": ("count", "errors"),
    # entry-probe hits per probed function, at the end: an attached probe with none is blind
    "hits": ("hits",),
}


def validate(event, where: str) -> dict:
    if not isinstance(event, dict):
        raise VmemtraceError(f"{where}: not a JSON object")
    kind = event.get("type")
    if kind not in REQUIRED:
        raise VmemtraceError(f"{where}: unknown event type {kind!r}")
    missing = [k for k in REQUIRED[kind] if k not in event]
    if missing:
        raise VmemtraceError(f"{where}: {kind} event lacks {', '.join(missing)}")
    return event


class LogFile:
    """An event log written as events come (a crash keeps what was seen), opened before tracing
    starts so that a path that cannot be written fails first. Mode 0600: logs hold physical
    addresses. A log that got no event (the trace never started) is removed again."""

    def __init__(self, path: str):
        self.path, self.count = path, 0
        self.created = not os.path.exists(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise VmemtraceError(f"cannot write {path}: {e.strerror}")
        self.fh = os.fdopen(fd, "w")

    def write(self, event: dict) -> None:
        try:
            self.fh.write(json.dumps(event, sort_keys=True) + "\n")
            if self.count == 0 or event["type"] in ("range", "command", "lost"):
                self.fh.flush()  # the header at once: a full disk fails before the command runs
        except OSError as e:
            raise VmemtraceError(f"cannot write {self.path}: {e.strerror}")
        self.count += 1

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError as e:
            raise VmemtraceError(f"cannot write {self.path}: {e.strerror}")
        finally:
            if self.count == 0 and self.created:
                os.unlink(self.path)


def write(events: Iterable[dict], fh: IO[str]) -> None:
    for ev in events:
        fh.write(json.dumps(ev, sort_keys=True) + "\n")
    fh.flush()


def read(fh: IO[str], name: str) -> List[dict]:
    """All events of a log, validated. Errors name the file and line."""
    out: List[dict] = []
    lineno = 0
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        if not line.endswith("\n"):
            raise VmemtraceError(f"{name}:{lineno}: truncated line (the recording was cut off)")
        try:
            event = json.loads(line)
        except ValueError as e:
            raise VmemtraceError(f"{name}:{lineno}: not JSON ({e.msg})")
        out.append(validate(event, f"{name}:{lineno}"))
    if not out:
        raise VmemtraceError(f"{name}: empty event log")
    header = out[0]
    if header["type"] != "header":
        raise VmemtraceError(f"{name}:1: the first event must be the header")
    if header["schema"] != SCHEMA:
        raise VmemtraceError(f"{name}:1: schema {header['schema']} is not {SCHEMA} "
                             "(recorded by another vmemtrace version)")
    return out


def iter_file(path: str) -> Iterator[dict]:
    try:
        with open(path) as fh:
            return iter(read(fh, path))
    except OSError as e:
        raise VmemtraceError(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise VmemtraceError(f"{path}: not a text file")
