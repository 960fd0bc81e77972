"""Fold events (live, replayed, or from an audit) into one ledger per device range.

Pure: takes the event dicts of log/events.py, returns plain objects; no kernel, no BPF.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from vmemtrace.judge import geometry
from vmemtrace.judge.account import Account, account
from vmemtrace.judge.layouts import TWO_PAGES, Detected, Layout, from_header
from vmemtrace.kernel import compat
from vmemtrace.log import events
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.sections import Sections, first_pfn, summed
from vmemtrace.probes import targets
from vmemtrace.probes.plan import Sources, is_attached
from vmemtrace.probes.targets import TARGETS


@dataclass
class DeviceLedger:
    start_pfn: int
    nr_pages: int
    range: dict | None = None
    sections: Sections = field(default_factory=Sections)
    compounds: CompoundPages = field(default_factory=CompoundPages)
    device: dict | None = None
    walk: dict | None = None  # the page-table walk of this range, if one was made
    walk_compounds: CompoundPages = field(default_factory=lambda: CompoundPages("walk"))
    kernel_log: dict | None = None  # the kernel's own pr_info about this range, if any

    @property
    def name(self) -> str:
        """The dax device (daxctl's chardev), one of whose ranges this is: with its mapping
        index where the device has several, so that each range has a name of its own."""
        if not self.device:
            return f"pfn-{self.start_pfn}"
        if "mapping" in self.device:
            return f"{self.device['name']}/mapping{self.device['mapping']}"
        return self.device["name"]

    @property
    def chardev(self) -> str | None:
        return self.device["name"] if self.device else None

    @property
    def namespace(self) -> str | None:
        """The nvdimm namespace behind the device (ndctl's "dev"), None for hmem/CXL."""
        return (self.device or {}).get("namespace")

    @property
    def cxl(self) -> dict | None:
        """The CXL region the device lies in (events.cxl_of)."""
        return events.cxl_of(self.device or {})

    def known_as(self, names) -> bool:
        """What -d matches (events.named), or this range's own name (dax1.0/mapping1, pfn-N)."""
        return self.name in names or (self.device is not None and events.named(self.device, names))

    @property
    def pfns_per_compound(self) -> int:
        source = self.range or self.walk
        if source:
            return source["pfns_per_compound"]
        shared = self.sections.shared
        return shared["pfns_per_compound"] if self.sections and shared else 1

    @property
    def altmap(self) -> bool:
        source = self.range or self.walk
        if source:
            return bool(source["altmap"])
        return self.sections.altmap

    def boot_placement(self) -> tuple[frozenset[int], tuple[tuple[int, int], ...]]:
        """(the range's sections that were present at boot, the partly filled pieces that no
        source places). mem_section's reading (boot_sections on the range or walk event) says
        it; without it, a piece the populate probes saw was populated, so not on the boot
        memmap; any other partial piece cannot be told (a log recorded before the field, or
        kcore unreadable)."""
        for ev in (self.range, self.walk):
            if ev is not None and "boot_sections" in ev:
                return frozenset(ev["boot_sections"]), ()
        return frozenset(), tuple(p for p in geometry.partial_pieces(self.start_pfn, self.nr_pages)
                                  if not self.sections.populated(p[0]))

    def shape(self, feature: bool, layout: Layout = TWO_PAGES) -> geometry.RangeShape:
        r = self.range or self.walk or {}
        offset = 0
        if self.range and r.get("altmap"):
            # memmap_init_zone_device(): start = altmap->base_pfn + reserve + free
            offset = r["altmap_base_pfn"] + r["altmap_reserve"] + r["altmap_free"] - self.start_pfn
        return geometry.RangeShape(
            start_pfn=self.start_pfn, nr_pages=self.nr_pages,
            pfns_per_compound=self.pfns_per_compound, altmap=self.altmap, altmap_offset=offset,
            feature=feature, page_size=r.get("page_size", geometry.PAGE_SIZE),
            struct_page_size=r.get("struct_page_size", geometry.STRUCT_PAGE_SIZE),
            boot_sections=self.boot_placement()[0], layout=layout)

    def totals(self) -> dict[str, int]:
        return dict(self.sections.totals)

    def allocated_pages(self, page_size: int) -> int:
        """vmemmap pages the allocator probes saw: one per fresh PTE, and the blocks."""
        t = self.totals()
        return t["fresh"] + t["direct_bytes"] // page_size

    def inconsistencies(self) -> list[str]:
        """What no kernel can have produced for this range: the probes and the walk key compound
        pages by their head pfn, aligned within the range (bpf/vmemtrace.bpf.c, walk/backing.py), one
        event each. A log that says otherwise was cut or edited: judged as corrupt, not as the
        kernel's doing."""
        out = list(self.sections.problems)
        first = self.sections.first_pfn
        if self.sections.runs and first is not None and (self.range or self.walk) is not None \
                and not (self.start_pfn <= first
                         and self.sections.end_pfn <= self.start_pfn + self.nr_pages):
            out.append(f"section calls at pfns {self.sections.first_pfn} to "
                       f"{self.sections.end_pfn}, outside the range")
        r = self.range
        shared = self.sections.shared
        if r is not None and shared is not None and (
                shared["struct_page_size"] != r["struct_page_size"]
                or self.sections.altmap != bool(r["altmap"])
                or (shared["has_pgmap"] and shared["pfns_per_compound"] != r["pfns_per_compound"])):
            # The same pgmap behind both calls (__populate_section_memmap's pgmap from 5.19).
            out.append(f"the range's section calls say struct pages of {shared['struct_page_size']} "
                       f"bytes, altmap {self.sections.altmap}, {shared['pfns_per_compound']}-page "
                       f"compound pages; its range {r['struct_page_size']}, {bool(r['altmap'])}, "
                       f"{r['pfns_per_compound']}")
        if r is not None and r["pfns_per_compound"] == 1 and (r["mic_calls"] or r["mic_pages"]):
            out.append("memmap_init_compound calls for a range without compound pages")
        if r is not None and not _mic_adds_up(r):
            out.append(f"memmap_init_compound's {r['mic_calls']} calls of {r['mic_min']} to "
                       f"{r['mic_max']} pages cannot sum to {r['mic_pages']}")
        w = self.walk
        if w is not None and self.range is not None and w["nr_pages"] != self.range["nr_pages"]:
            out.append(f"the walk covers {w['nr_pages']} pages of a {self.range['nr_pages']}-page range")
        if w is not None and w["vmemmap_pages"] != geometry.vmemmap_span(
                w["start_pfn"], w["nr_pages"], w["struct_page_size"], w["page_size"]):
            out.append(f"the walk's {w['vmemmap_pages']} vmemmap pages are not those of its "
                       f"{w['nr_pages']} pages")
        if w is not None and (w["mapped"] > w["vmemmap_pages"] or w["distinct"] + w["reused"] != w["mapped"]
                              or sum(w["levels"].values()) != w["mapped"]):
            out.append(f"the walk does not add up (vmemmap pages {w['vmemmap_pages']}, mapped "
                       f"{w['mapped']}, distinct {w['distinct']}, reused {w['reused']}, by level "
                       f"{w['levels']})")
        ppc = self.pfns_per_compound
        for pages in (self.compounds, self.walk_compounds):
            out.extend(pages.problems)
            if pages.shared is not None and (self.range or self.walk) is not None \
                    and pages.shared != (self.start_pfn, ppc):
                out.append(f"the compound pages the {pages.what} saw are of a range at pfn "
                           f"{pages.shared[0]} with {pages.shared[1]}-page compound pages, not "
                           f"of this one at pfn {self.start_pfn} with {ppc}")
            end = self.start_pfn + max(self.nr_pages, 1)
            if pages.highest_head is not None and pages.highest_head >= end:
                out.append(f"compound page at pfn {pages.highest_head} is outside its range "
                           f"({pages.what})")
        return out + self._walk_totals_problem()

    def _walk_totals_problem(self) -> list[str]:
        """The walk's compound pages are its PTEs sorted by page (walk/backing.py): all of them where
        the range holds whole sections, fewer where a boot piece is set apart."""
        w = self.walk
        if w is None or w["pfns_per_compound"] <= 1 or not len(self.walk_compounds):
            return []
        totals = self.walk_compounds.totals(("ptes", "fresh", "reused"))
        if totals is None:
            return []
        theirs, walked = tuple(totals.values()), (w["mapped"], w["distinct"], w["reused"])
        whole = not (self.start_pfn % geometry.PAGES_PER_SECTION
                     or self.nr_pages % geometry.PAGES_PER_SECTION)
        if theirs == walked or (not whole and all(a <= b for a, b in zip(theirs, walked))):
            return []
        return ["the walk's compound pages hold {} PTEs ({} fresh, {} reused), its walk {} ({} "
                "distinct, {} reused)".format(*theirs, *walked)]

    def account(self, sources: "Sources", shape: geometry.RangeShape) -> Account:
        """What the probes' counts say of this range of this shape (judge/account.py)."""
        return account(shape, self.sections, self.range, sources, list(sources.allocators))


def _mic_adds_up(r: dict) -> bool:
    """A range's memmap_init_compound calls, min and max: one call of each extreme among the
    calls, the others between (all equal where min is max); nothing decoded, all zero."""
    calls, lo, hi, pages = r["mic_calls"], r["mic_min"], r["mic_max"], r["mic_pages"]
    if not pages:
        return lo == hi == 0
    if lo == hi:
        return pages == lo * calls
    return lo < hi and calls >= 2 and lo * (calls - 1) + hi <= pages <= hi * (calls - 1) + lo


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
    devices: list[dict] = field(default_factory=list)
    vmstat: dict[str, int] = field(default_factory=dict)
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
                      self.unattached.found + self.stray)


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
