"""Fold events (live, replayed, or from an audit) into one ledger per device range.

Pure: takes the event dicts of log/events.py, returns plain objects; no kernel, no BPF.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from vmemtrace.judge.device_ledger import DeviceLedger
from vmemtrace.judge.layouts import Detected, from_header
from vmemtrace.kernel import compat
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.sections import Sections, first_pfn, summed
from vmemtrace.probes import targets
from vmemtrace.probes.plan import Sources, is_attached
from vmemtrace.probes.targets import TARGETS

# Counters of each event type and the target whose probes alone move them (bpf/vmemtrace.bpf.c).
SECTION_COUNTS = {"ptes": targets.POPULATE, "plain": targets.POPULATE, "fresh": targets.POPULATE,
                  "reused": targets.POPULATE, "existing": targets.POPULATE,
                  "alloc_calls": targets.ALLOC, "allocs": targets.ALLOC,
                  "direct_bytes": targets.ALLOC, "pt_pages": targets.ALLOC}
COUNTED_BY = {
    "section": SECTION_COUNTS, "sections": SECTION_COUNTS,  # one call, or a range's calls summed
    "range": {"mic_calls": targets.INIT, "mic_pages": targets.INIT, "izdp_calls": targets.INIT_PAGES},
}


# The events each probe's entry produced, by function: its hits can only be more (a probe also
# fires outside device-dax ranges), never fewer.
PRODUCED_BY = {"__populate_section_memmap": "section calls", "vmemmap_populate_address": "ptes",
               "memmap_init_zone_device": "ranges", "memmap_init_compound": "mic_calls",
               "__init_zone_device_page": "izdp_calls"}


class Unattached:
    """Counts that no trace can have produced: moved by a probe the header says was not
    attached, or more events than their probe had hits. A log that has them was edited or
    belongs to another trace. Fed one event at a time (the fold streams); the first such count
    is kept."""

    def __init__(self, header: dict):
        self.strategy = header["strategy"]
        self.attached = {t.sees for t in TARGETS if is_attached(self.strategy.get(t.name, ""))}
        self.compound = compat.has(tuple(header["version"]) or (0, 0), compat.COMPOUND_DEVMAP)
        self.found: list[str] = []
        self.produced: dict[str, int] = dict.fromkeys(PRODUCED_BY.values(), 0)

    def see(self, ev: dict) -> None:
        self._count(ev)
        if not self.found:
            problem = self._problem(ev)
            if problem:
                self.found.append(problem)

    def _count(self, ev: dict) -> None:
        kind, n = ev["type"], self.produced
        if kind in ("section", "sections"):
            n["section calls"] += ev["count"] if kind == "sections" else 1
            n["ptes"] += ev["ptes"]
            n["alloc_calls"] = n.get("alloc_calls", 0) + ev["alloc_calls"]
        elif kind == "range":
            n["ranges"] += 1
            n["mic_calls"] += ev["mic_calls"]
            n["izdp_calls"] += ev["izdp_calls"]

    def _fewer_hits(self, hits: dict[str, int]) -> str | None:
        for fn, what in PRODUCED_BY.items():
            if fn in hits and is_attached(self.strategy.get(fn, "")) and hits[fn] < self.produced[what]:
                return (f"{fn} was hit {hits[fn]} times but the log holds {self.produced[what]} "
                        f"{what} its probe produced")
        # An allocation counts once, at the outermost allocator that fired (bpf/vmemtrace.bpf.c).
        allocators = [t.name for t in TARGETS if t.sees == targets.ALLOC
                      and is_attached(self.strategy.get(t.name, "")) and t.name in hits]
        calls = self.produced.get("alloc_calls", 0)
        if allocators and sum(hits[a] for a in allocators) < calls:
            return (f"the allocators ({', '.join(allocators)}) were hit "
                    f"{sum(hits[a] for a in allocators)} times but the log holds {calls} "
                    "allocator calls")
        return None

    def _problem(self, ev: dict) -> str | None:
        if not self.compound and ev.get("pfns_per_compound", 1) > 1:
            return (f"{ev['type']} event with compound pages of {ev['pfns_per_compound']} pages, "
                    f"on a kernel before compound devmaps (5.17)")
        for key, kind in COUNTED_BY.get(ev["type"], {}).items():
            if ev[key] and kind not in self.attached:
                return (f"{ev['type']} event counts {key} {ev[key]}, but no probe that counts it "
                        f"was attached")
        if ev["type"] == "hits":
            stray = [n for n, c in ev["hits"].items()
                     if c and not is_attached(self.strategy.get(n, ""))]
            if stray:
                return f"hits on {stray[0]}, which was not attached"
            return self._fewer_hits(ev["hits"])
        return None


@dataclass
class Ledger:
    header: dict
    devices: list[DeviceLedger]
    sources: Sources
    vmstat: dict[str, int]
    lost: int
    bpf_errors: dict[str, int]
    command: dict | None
    hits: dict[str, int] | None = None  # entry-probe hits per function, at the end
    inconsistent: list[str] = field(default_factory=list)  # what no kernel can have produced
    hugetlb: list[dict] = field(default_factory=list)  # "hugetlb" events: judge/hvo.py
    vmstat_boot: dict[str, int] = field(default_factory=dict)  # nr_memmap_boot_pages, where read

    def memmap_delta(self) -> int | None:
        """The change of the kernel's memmap pages, boot and not, across the command (6.11+);
        None where either counter was not read at both ends."""
        both = ("before", "after")
        if not all(w in self.vmstat and w in self.vmstat_boot for w in both):
            return None
        return sum(c["after"] - c["before"] for c in (self.vmstat, self.vmstat_boot))

    @property
    def feature(self) -> bool:
        return bool(self.header["feature"]["present"])

    @property
    def layout(self) -> Detected:
        """The vmemmap layout the header records (judge/layouts.py)."""
        return from_header(self.header["feature"])


def kernel_log_pairs(calls: list[DeviceLedger], lines: list[dict]) -> list[tuple[DeviceLedger, dict]]:
    """Which of memmap_init_zone_device's log lines is whose. It logs one line per call as the
    call ends and names no range (mm/mm_init.c: "%s initialised %lu pages in %ums"), so pair
    only when there are as many lines as calls, in the order the calls ended, and only calls
    that ran alone: of calls that overlapped in time (devices set up at once, on two CPUs),
    which line is whose is unknown, and none gets one rather than a guess. A log without the
    calls' times (recorded before ranges carried them) is paired in log order, which was then
    also call order (one device per command)."""
    if not lines or len(lines) != len(calls):
        return []
    timed = [(d.range, d) for d in calls
             if d.range is not None and "ktime_ns" in d.range and "duration_ns" in d.range]
    if len(timed) != len(calls):
        return list(zip(calls, lines))
    timed.sort(key=lambda rd: rd[0]["ktime_ns"])
    calls = [d for _, d in timed]
    ends = [r["ktime_ns"] for r, _ in timed]
    starts = [r["ktime_ns"] - r["duration_ns"] for r, _ in timed]
    later_start = [float("inf")] * (len(calls) + 1)  # the earliest start of the calls after i
    for i in range(len(calls) - 1, -1, -1):
        later_start[i] = min(starts[i], later_start[i + 1])
    return [(d, line) for i, (d, line) in enumerate(zip(calls, lines))
            if (i == 0 or ends[i - 1] < starts[i]) and ends[i] < later_start[i + 1]]


def _contains(d: DeviceLedger, pfn: int) -> bool:
    return d.start_pfn <= pfn < d.start_pfn + d.nr_pages


@dataclass
class Fold:
    """The state of one fold, fed one event at a time (replay streams its file, a live trace
    folds as it goes): ranges by start pfn (a re-created range replaces the old), the sections
    still waiting for their range, and the closing events. Each event is folded into its range
    and not kept: a range's compound pages are judged as they come (log/compounds.py)."""

    header: dict
    ranges: dict[int, DeviceLedger] = field(default_factory=dict)
    # sections waiting for their range: summed by the range's start where the kernel names it
    # (5.19+: has_pgmap), else the events themselves
    pending: dict[int, Sections] = field(default_factory=dict)
    loose: list[dict] = field(default_factory=list)
    in_order: list[DeviceLedger] = field(default_factory=list)  # ranges as they came
    kmsg: list[dict] = field(default_factory=list)
    hugetlb: list[dict] = field(default_factory=list)
    devices: list[dict] = field(default_factory=list)
    vmstat: dict[str, int] = field(default_factory=dict)
    vmstat_boot: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    bpf_errors: dict[str, int] = field(default_factory=dict)
    command: dict | None = None
    hits: dict[str, int] | None = None
    stray: list[str] = field(default_factory=list)
    # every ledger made (a re-created range replaces the old in `ranges`): what view() copies
    # and retire() drops
    made: list[DeviceLedger] = field(default_factory=list)

    def __post_init__(self):
        self.unattached = Unattached(self.header)

    def owner(self, pfn: int) -> DeviceLedger | None:
        return next((d for d in self.ranges.values() if _contains(d, pfn)), None)

    def range(self, ev: dict) -> None:
        d = DeviceLedger(ev["start_pfn"], ev["nr_pages"], range=ev)
        before = self.ranges.get(d.start_pfn)
        if before is not None and before.range is not None and "ktime_ns" in ev \
                and before.range.get("ktime_ns") == ev["ktime_ns"]:
            # A range set up again (a namespace re-created where it was) is a call of its
            # own, at its own time: the same one twice is a line logged twice.
            self.stray.append(f"the range at pfn {d.start_pfn} is logged twice")
        pending = self.pending.pop(d.start_pfn, None)
        d.sections = pending if pending is not None else Sections()
        mine = [s for s in self.loose if _contains(d, first_pfn(s))]
        self.loose = [s for s in self.loose if not _contains(d, first_pfn(s))]
        d.sections.merge(summed(mine))
        self.ranges[d.start_pfn] = d
        self.in_order.append(d)
        self.made.append(d)

    def section(self, ev: dict) -> None:
        if not ev["has_pgmap"]:
            self.loose.append(ev)
            return
        pending = self.pending.setdefault(ev["range_start_pfn"], Sections())
        if ev["type"] == "sections":
            pending.merge(Sections.from_event(ev))
        else:
            pending.add(ev)

    def walk(self, ev: dict) -> None:
        d = self.ranges.get(ev["start_pfn"])
        # The exporter audits the devices that exist before it traces: those walks have no
        # range; any other walk does.
        if d is None and self.header.get("walk") != "audit" and not ev.get("existing"):
            self.stray.append(f"a walk of pfn {ev['start_pfn']}, where no range was seen")
        if d is None:  # an audit: the range existed before we looked
            d = self.ranges[ev["start_pfn"]] = DeviceLedger(ev["start_pfn"], ev["nr_pages"])
            self.made.append(d)
        d.walk = ev
        d.walk_compounds = CompoundPages("walk")

    def compound(self, ev: dict) -> None:
        owner = self.owner(ev["head_pfn"])
        if owner is not None:
            (owner.walk_compounds if ev.get("source") == "walk" else owner.compounds).append(ev)

    def compounds(self, ev: dict) -> None:
        """A source's summary of a range's compound pages (schema 3), the whole of them."""
        owner = self.owner(ev["range_start_pfn"])
        if owner is None:
            return
        pages = CompoundPages.from_event(ev)
        held = owner.walk_compounds if ev.get("source") == "walk" else owner.compounds
        if len(held):
            pages.problems.insert(0, f"a second summary of the compound pages of the range at pfn "
                                     f"{owner.start_pfn} ({pages.what})")
        if ev.get("source") == "walk":
            owner.walk_compounds = pages
        else:
            owner.compounds = pages

    def lost_event(self, ev: dict) -> None:
        self.lost += ev["count"]
        for k, v in ev["errors"].items():
            self.bpf_errors[k] = self.bpf_errors.get(k, 0) + v

    def add(self, ev: dict) -> None:
        self.unattached.see(ev)
        kind = ev["type"]
        if kind in ("section", "sections"):
            self.section(ev)
        elif kind in ("range", "walk", "compound", "compounds"):
            getattr(self, kind)(ev)
        elif kind == "vmstat":
            self.vmstat[ev["when"]] = ev["nr_memmap_pages"]
            if "nr_memmap_boot_pages" in ev:
                self.vmstat_boot[ev["when"]] = ev["nr_memmap_boot_pages"]
        elif kind == "device":
            self.devices.append(ev)
        elif kind == "lost":
            self.lost_event(ev)
        elif kind == "command":
            self.command = ev
        elif kind == "hits":
            self.hits = ev["hits"]
        elif kind == "kmsg":
            self.kmsg.append(ev)
        elif kind == "hugetlb":
            # a hugepage size as walked last: trace and stats walk the pools at each change
            self.hugetlb = [e for e in self.hugetlb if e["size_kb"] != ev["size_kb"]] + [ev]

    def finish(self) -> list[DeviceLedger]:
        for d, line in kernel_log_pairs(self.in_order, self.kmsg):
            d.kernel_log = line
        # Sections of a range that never reached memmap_init_zone_device (failed, or not traced)
        # still form a ledger, under the range start the kernel gave them (5.19+).
        for start, pending in self.pending.items():
            d = self.ranges.setdefault(start, DeviceLedger(start, 0))
            d.sections.merge(pending)
            d.nr_pages = max(d.nr_pages, pending.end_pfn - d.start_pfn)
        for dev in self.devices:
            owner = self.owner(dev["start_pfn"])
            if owner is not None:
                owner.device = dev
        return sorted(self.ranges.values(), key=lambda d: d.start_pfn)


    def view(self, devices_now: list[dict]) -> "Ledger":
        """The ledger as it stands, with devices_now as the dax devices, the fold left as it was
        (ledger() finishes it; the exporter asks again while events keep coming). Each range is
        a shallow copy for finish() to complete: its compound pages are shared, and only read."""
        copies = {id(d): replace(d, sections=d.sections.copy()) for d in self.made}
        kept = self.ranges, self.in_order, self.devices
        self.ranges = {k: copies[id(d)] for k, d in self.ranges.items()}
        self.in_order = [copies[id(d)] for d in self.in_order]
        self.devices = self.devices + list(devices_now)
        try:
            return self.ledger()
        finally:
            self.ranges, self.in_order, self.devices = kept

    def retire(self, devices_now: list[dict], absent_before: set[int]) -> tuple[list[DeviceLedger], set[int]]:
        """Drop the ranges that are gone, so that a long-running exporter's memory follows the
        devices that exist, not every one that ever did. Gone: a range replaced by a later one
        at the same start, or a complete one (its range or walk seen) that none of devices_now
        belongs to now and at the previous call too (its start in absent_before): one
        interval's grace for a range whose dax device sysfs does not show yet. Returns what was
        dropped, and the starts absent now."""
        current = {id(d) for d in self.ranges.values()}
        owned = {id(o) for o in map(self.owner, (dev["start_pfn"] for dev in devices_now)) if o}
        absent = {d.start_pfn for d in self.ranges.values()
                  if (d.range is not None or d.walk is not None) and id(d) not in owned}
        gone = [d for d in self.made if id(d) not in current
                or (d.start_pfn in absent and d.start_pfn in absent_before)]
        dropped = {id(d) for d in gone}
        self.made = [d for d in self.made if id(d) not in dropped]
        self.in_order = [d for d in self.in_order if id(d) not in dropped]
        self.ranges = {k: d for k, d in self.ranges.items() if id(d) not in dropped}
        return gone, absent

    def ledger(self) -> "Ledger":
        """The ledger of everything folded; call once, at the end (or view() any time)."""
        ordered = self.finish()
        return Ledger(self.header, ordered, Sources.from_strategy(self.header["strategy"]),
                      self.vmstat, self.lost, self.bpf_errors, self.command, self.hits,
                      self.unattached.found + self.stray, list(self.hugetlb),
                      dict(self.vmstat_boot))


class Folding:
    """A fold fed one event at a time, the header first: the one way a stream of events becomes
    a Fold (replay, verify and record, the exporter's live ledger)."""

    def __init__(self):
        self.fold: Fold | None = None
        self.count = 0  # events folded
        self.ranges = 0  # range events among them

    def append(self, ev: dict) -> None:
        if self.fold is None:
            self.fold = Fold(ev)
        else:
            self.fold.add(ev)
        self.count += 1
        self.ranges += ev["type"] == "range"

    @property
    def header(self) -> dict | None:
        return self.fold.header if self.fold is not None else None

    def ledger(self) -> Ledger:
        assert self.fold is not None, "nothing folded yet"
        return self.fold.ledger()


def _folded(events: Iterable[dict]) -> Fold:
    state = Folding()
    for ev in events:
        state.append(ev)
    if state.fold is None:
        raise StopIteration  # no header: what next() on an empty stream raised
    return state.fold


def fold(events: Iterable[dict]) -> Ledger:
    """Events in the order they happened, the header first (a list, or a stream: logfile.stream):
    a range's sections come before its range event (__populate_section_memmap runs before
    memmap_init_zone_device), its compound pages after (drained when the range event arrives)."""
    return _folded(events).ledger()
