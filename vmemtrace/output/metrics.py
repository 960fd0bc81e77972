"""The Prometheus view of the ledger: a prometheus-client custom collector over the exporter's
live ledger (docs/design.md, "Metrics"). The ledger folds events as they come and judges the
devices again only when something changed, so a scrape costs what the devices that exist need,
not what was ever traced. No I/O of its own: what the tracer saw and which dax devices exist now
are handed in, so a scrape reflects the present.

Conventions (https://prometheus.io/docs/practices/naming/): base units (bytes, seconds),
`_total` on counters, no addresses or PFNs in labels; a device is named by its dax name.
"""

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from vmemtrace import __version__
from vmemtrace.judge.ledger import Folding
from vmemtrace.judge.outcome import STATUSES
from vmemtrace.judge.verdict import evaluate
from vmemtrace.probes.plan import WALK_STRATEGY, is_attached
from vmemtrace.probes.targets import BY_NAME

# The verify document's observed/expected/naive triples and the metrics they become; vmemmap
# pages are exported as bytes (times the range's page size).
SERIES = (("vmemmap_pages", "vmemtrace_vmemmap{}_bytes", "vmemmap (struct page map) bytes of the range"),
          ("struct_pages_initialized", "vmemtrace_struct_pages_initialized{}",
           "struct pages memmap_init_zone_device initialised"))
# memmap_init_zone_device() takes ~0.3 ms for 3 GiB in 1 GiB pages and ~1 s in 4 KiB pages under
# TCG (lab measurements); 128 GiB namespaces take ~100-300 ms on hardware (the patch series).
INIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# The CXL labels of vmemtrace_device_info: `cxl list`'s region, decoder and memdev names.
CXL_LABELS = ("cxl_region", "cxl_decoder", "cxl_memdevs")


def cxl_labels(cxl: dict | None) -> list[str]:
    """The values of CXL_LABELS for a device document's "cxl" (memdevs joined by commas)."""
    if not cxl:
        return ["", "", ""]
    return [cxl["region"], cxl["decoder"] or "", ",".join(cxl["memdevs"])]


@dataclass
class InitTally:
    """memmap_init_zone_device durations of ranges no longer held (Fold.retire()): the
    histogram is a counter, so what was counted stays counted."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(INIT_BUCKETS))
    count: int = 0
    total: float = 0.0

    def add(self, seconds: float) -> None:
        for i, le in enumerate(INIT_BUCKETS):
            self.buckets[i] += seconds <= le
        self.count += 1
        self.total += seconds


class LiveLedger(Folding):
    """The exporter's ledger: events folded as they come (ledger.Fold: a range's compound pages
    in compact columns, no event kept), and the verify document of the devices made again only
    when something changed: new events, once a poll brought none (a range being set up is judged
    when its events are in), or the dax devices. One writer, the tracing loop (append, refresh,
    retire); scrapes read `doc`, which is replaced whole, never changed in place."""

    def __init__(self, events: Iterable[dict] = ()):
        super().__init__()
        self.judged = -1  # self.count when doc was made
        self.devices_seen: str | None = None
        self.doc: dict | None = None
        self.retired = InitTally()
        self.absent: set[int] = set()  # range starts with no device at the last retire()
        for ev in events:
            self.append(ev)

    def refresh(self, devices_now: list[dict], quiet: bool = True) -> None:
        """Judge again if events came since and the trace is quiet, or the devices changed."""
        if self.fold is None:
            return
        devices = json.dumps(devices_now, sort_keys=True)
        if self.doc is None or devices != self.devices_seen or (quiet and self.count != self.judged):
            self.doc = evaluate(self.fold.view(devices_now))
            self.judged, self.devices_seen = self.count, devices

    def retire(self, devices_now: list[dict]) -> None:
        """Forget the ranges that are gone (Fold.retire()); their init durations stay counted."""
        if self.fold is None:
            return
        gone, self.absent = self.fold.retire(devices_now, self.absent)
        for d in gone:
            if d.range is not None:
                self.retired.add(d.range["duration_ns"] / 1e9)
        if gone:
            self.judged = -1  # judged again at the next quiet poll

    def replace_hugetlb(self, events: list[dict]) -> None:
        """The hugetlb pools as walked again (walk/hugetlb.py Watch): they replace the last
        walk's, judged at the next quiet poll."""
        if self.fold is not None:
            self.fold.hugetlb = list(events)
            self.judged = -1

    def init_seconds(self) -> list[float]:
        """memmap_init_zone_device durations of the ranges held (re-created ones included until
        retired: a counter never goes down)."""
        if self.fold is None:
            return []
        return [d.range["duration_ns"] / 1e9 for d in self.fold.made if d.range is not None]


@dataclass
class Snapshot:
    """What the exporter knows at one scrape."""

    live: LiveLedger
    lost: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    attached: list[str] = field(default_factory=list)  # functions with probes attached now
    not_tracing: str = ""  # why the exporter serves audits only, a snake_case code ("" while it traces)
    # when the exporter's loop last brought it up to date (Unix time): a textfile node_exporter
    # keeps serving after its writer died, or a loop that hangs while scrapes are answered,
    # shows as this growing old (dashboards/alerts.yml, VmemtraceStale)
    updated: float = field(default_factory=time.time)


def present_devices(doc: dict, devices_now: list[dict], only=()) -> list[dict]:
    """The verdict's devices that exist now in sysfs: a namespace destroyed since stops being
    reported, as node_exporter stops reporting a removed disk; and the hugepage sizes the
    last walk of the pools reported (judge/hvo.py), those of `only` where it names any."""
    names = {d["name"] for d in devices_now}
    return [d for d in doc["devices"] if d["chardev"] in names
            or ("hugetlb" in d and (not only or d["device"] in only))]


# The states a hugepage size's folios are counted in (judge/hvo.py classify()).
FOLIO_STATES = ("optimized", "unoptimized", "other")


class LedgerCollector:
    def __init__(self, snapshot: Callable[[], Snapshot], devices_now: Callable[[], list[dict]],
                 bcc: str | None = None, only=()):
        self.snapshot = snapshot
        self.devices_now = devices_now
        self.only = tuple(only)  # -d: the hugepage sizes among them
        self.bcc = bcc  # BCC's version where a log's header does not say it (an audit's)

    def describe(self):
        return []  # metric names depend on the ledger; never collect at registration time

    def collect(self) -> Iterator:
        snap = self.snapshot()
        header = snap.live.header
        info = GaugeMetricFamily("vmemtrace_build_info", "vmemtrace version and the kernel it "
                                 "runs on", labels=["version", "kernel", "bcc"])
        info.add_metric([__version__, header["kernel"] if header else "",
                         (header or {}).get("bcc") or self.bcc or ""], 1)
        yield info
        yield GaugeMetricFamily("vmemtrace_updated_timestamp_seconds", "when the exporter last "
                                "brought its metrics up to date (Unix time)", value=snap.updated)
        if header is None and not snap.not_tracing:
            return  # still compiling the BPF program
        tracing = GaugeMetricFamily("vmemtrace_tracing", "1 while the probes are attached; 0 "
                                    "when only the devices that exist are audited, and why",
                                    labels=["reason"])
        tracing.add_metric([snap.not_tracing], 0 if snap.not_tracing else 1)
        yield tracing
        if header is None:
            return  # not even the kernel's facts could be read (e.g. kallsyms hidden): no audit
        yield from self._probes(header, snap)
        lost = CounterMetricFamily("vmemtrace_events_lost", "events the perf buffer dropped")
        lost.add_metric([], snap.lost)
        yield lost
        errors = CounterMetricFamily("vmemtrace_bpf_errors", "BPF-side failures by kind",
                                     labels=["error"])
        for name, n in sorted(snap.errors.items()):
            errors.add_metric([name], n)
        yield errors
        doc = snap.live.doc
        if doc is not None:  # judged once the header's first poll is done
            devices = present_devices(doc, self.devices_now(), self.only)
            yield from self._devices(devices)
            yield from self._hugetlb([d for d in devices if "hugetlb" in d])
        yield self._init_histogram(snap.live.init_seconds(), snap.live.retired)

    def _probes(self, header: dict, snap: Snapshot) -> Iterator:
        attached = GaugeMetricFamily("vmemtrace_probe_attached", "1 when the target is seen "
                                     "(its probes attached, or its result read by the page-table "
                                     "walk), by strategy", labels=["function", "strategy"])
        for function, strategy in sorted(header["strategy"].items()):
            if is_attached(strategy):
                seen = function in snap.attached
            elif strategy == "fallback":
                seen = BY_NAME[function].fallback in snap.attached
            else:  # the plan only picks the walk where the walker can run (kernel/kcore.py)
                seen = strategy == WALK_STRATEGY
            attached.add_metric([function, strategy], 1 if seen else 0)
        yield attached
        if snap.not_tracing or not header["cflags"]:
            return  # no program loaded: the audit only
        program = GaugeMetricFamily("vmemtrace_bpf_program_info", "the BPF program loaded: "
                                    "its build defines", labels=["defines"])
        program.add_metric([" ".join(header["cflags"])], 1)
        yield program

    def _devices(self, devices: list[dict]) -> Iterator:
        # Observed values apart from their references, so that a sum over devices means one
        # thing (https://prometheus.io/docs/practices/naming/); bytes, not pages.
        families = {}  # (document key, kind) -> metric family
        for key, metric, what in SERIES:
            for kind, suffix, how in (("observed", "", "observed"),
                                      ("expected", "_expected", "expected (geometry)"),
                                      ("naive", "_naive", "without the optimisation")):
                families[key, kind] = GaugeMetricFamily(metric.format(suffix), f"{what}: {how}",
                                                        labels=["device"])
        saved = GaugeMetricFamily("vmemtrace_vmemmap_saved_bytes", "vmemmap bytes the kernel "
                                  "did not allocate: naive - observed", labels=["device"])
        checks = GaugeMetricFamily("vmemtrace_check_status", "each check's state, one series "
                                   "per state (1 the current one): pass, fail, skip, error",
                                   labels=["device", "check", "status"])
        count = GaugeMetricFamily("vmemtrace_devices", "dax devices reported")
        count.add_metric([], sum("hugetlb" not in d for d in devices))
        # To join with ndctl's and cxl's names: group_left(namespace, cxl_region) on device.
        info = InfoMetricFamily("vmemtrace_device", "each dax device's nvdimm namespace and the "
                                "CXL region, root decoder and memory devices it lies in "
                                "(\"\" where none)", labels=["device", "namespace", *CXL_LABELS])
        for d in devices:
            name, page = d["device"], d["page_size"]
            if "hugetlb" not in d:
                info.add_metric([name, d["namespace"] or "", *cxl_labels(d["cxl"])], {})
            for (key, kind), family in families.items():
                value = d[key][kind]
                if value is not None:
                    family.add_metric([name], value * page if key == "vmemmap_pages" else value)
            if d["vmemmap_saved_bytes"]["observed"] is not None:
                saved.add_metric([name], d["vmemmap_saved_bytes"]["observed"])
            for c in d["checks"]:
                for state in STATUSES:  # a state set (OpenMetrics), as node_exporter's systemd states
                    checks.add_metric([name, c["name"], state], 1 if c["status"] == state else 0)
        yield from (count, info, *families.values(), saved, checks)

    @staticmethod
    def _hugetlb(sizes: list[dict]) -> Iterator:
        """Per hugepage size and NUMA node, its folios by state and the vmemmap bytes HVO saved
        (node "" where the walk could not tell the nodes); per size whether HVO is on."""
        folios = GaugeMetricFamily("vmemtrace_hugetlb_folios", "hugetlb folios walked, by "
                                   "whether HVO optimised their vmemmap (\"other\": neither "
                                   "optimised nor whole)", labels=["device", "node", "state"])
        saved = GaugeMetricFamily("vmemtrace_hugetlb_vmemmap_saved_bytes", "vmemmap bytes HVO "
                                  "freed behind the folios walked, by node",
                                  labels=["device", "node"])
        switch = GaugeMetricFamily("vmemtrace_hugetlb_optimize_vmemmap", "vm.hugetlb_optimize_"
                                   "vmemmap when the pool was walked (1: HVO on; -1: no such "
                                   "sysctl)", labels=["device"])
        for d in sizes:
            h, name = d["hugetlb"], d["device"]
            sysctl = h["hvo"].get("sysctl")
            switch.add_metric([name], -1 if sysctl is None else sysctl)
            pages = d["vmemmap_pages"]
            nodes = h["nodes"] if h["nodes"] is not None else [
                {**h, "node": "", "vmemmap_pages": pages}]
            for n in nodes:
                for state in FOLIO_STATES:
                    folios.add_metric([name, str(n["node"]), state], n[state])
                vm = n["vmemmap_pages"]
                saved.add_metric([name, str(n["node"])], (vm["naive"] - vm["observed"]) * d["page_size"])
        yield from (folios, saved, switch)

    @staticmethod
    def _init_histogram(seconds: list[float], retired: InitTally) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = [
            (str(le), before + sum(1 for s in seconds if s <= le))
            for le, before in zip(INIT_BUCKETS, retired.buckets)]
        buckets.append(("+Inf", retired.count + len(seconds)))
        return HistogramMetricFamily("vmemtrace_memmap_init_seconds", "memmap_init_zone_device "
                                     "duration per range", buckets=buckets,
                                     sum_value=retired.total + sum(seconds))


