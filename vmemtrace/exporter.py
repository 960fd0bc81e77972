"""The Prometheus view of the ledger: a prometheus-client custom collector that folds the event
log at scrape time (docs/design.md, "Metrics"). No I/O of its own: what the tracer saw and which dax
devices exist now are handed in as callables, so a scrape always reflects the present.

Conventions (https://prometheus.io/docs/practices/naming/): base units (bytes, seconds),
`_total` on counters, no addresses or PFNs in labels; a device is named by its dax name.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Tuple

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)

from vmemtrace import __version__
from vmemtrace.checks import STATUSES
from vmemtrace.ledger import fold
from vmemtrace.probes.plan import WALK_STRATEGY, is_attached
from vmemtrace.probes.targets import BY_NAME
from vmemtrace.verdict import evaluate

# The verify document's observed/expected/naive triples and the metrics they become; vmemmap
# pages are exported as bytes (times the range's page size).
SERIES = (("vmemmap_pages", "vmemtrace_vmemmap{}_bytes", "vmemmap (struct page map) bytes of the range"),
          ("struct_pages_initialized", "vmemtrace_struct_pages_initialized{}",
           "struct pages memmap_init_zone_device initialised"))
# memmap_init_zone_device() takes ~0.3 ms for 3 GiB in 1 GiB pages and ~1 s in 4 KiB pages under
# TCG (lab measurements); 128 GiB namespaces take ~100-300 ms on hardware (the patch series).
INIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class InitTally:
    """memmap_init_zone_device durations of ranges no longer in the log (ledger.retire()): the
    histogram is a counter, so what was counted stays counted."""

    buckets: List[int] = field(default_factory=lambda: [0] * len(INIT_BUCKETS))
    count: int = 0
    total: float = 0.0

    def add(self, seconds: float) -> None:
        for i, le in enumerate(INIT_BUCKETS):
            self.buckets[i] += seconds <= le
        self.count += 1
        self.total += seconds


@dataclass
class Snapshot:
    """What the exporter knows at one scrape."""

    log: List[dict]  # header first (session.header_event), then events as they came
    lost: int = 0
    errors: Dict[str, int] = field(default_factory=dict)
    attached: List[str] = field(default_factory=list)  # functions with probes attached now
    not_tracing: str = ""  # why the exporter serves audits only ("" while it traces)
    retired: InitTally = field(default_factory=InitTally)


def present_devices(doc: dict, devices_now: List[dict]) -> List[dict]:
    """The verdict's devices that exist now in sysfs: a namespace destroyed since stops being
    reported, as node_exporter stops reporting a removed disk."""
    names = {d["name"] for d in devices_now}
    return [d for d in doc["devices"] if d["chardev"] in names]


class LedgerCollector:
    def __init__(self, snapshot: Callable[[], Snapshot], devices_now: Callable[[], List[dict]]):
        self.snapshot = snapshot
        self.devices_now = devices_now

    def describe(self):
        return []  # metric names depend on the ledger; never collect at registration time

    def collect(self) -> Iterator:
        snap = self.snapshot()
        header = snap.log[0] if snap.log else None
        info = GaugeMetricFamily("vmemtrace_build_info", "vmemtrace version and the kernel it "
                                 "runs on", labels=["version", "kernel", "bcc"])
        info.add_metric([__version__, header["kernel"] if header else "",
                         (header or {}).get("bcc") or ""], 1)
        yield info
        if header is None:
            return  # still compiling the BPF program
        tracing = GaugeMetricFamily("vmemtrace_tracing", "1 while the probes are attached; 0 "
                                    "when only the devices that exist are audited, and why",
                                    labels=["reason"])
        tracing.add_metric([snap.not_tracing], 0 if snap.not_tracing else 1)
        yield tracing
        yield from self._probes(header, snap)
        lost = CounterMetricFamily("vmemtrace_events_lost", "events the perf buffer dropped")
        lost.add_metric([], snap.lost)
        yield lost
        errors = CounterMetricFamily("vmemtrace_bpf_errors", "BPF-side failures by kind",
                                     labels=["error"])
        for name, n in sorted(snap.errors.items()):
            errors.add_metric([name], n)
        yield errors
        devices_now = self.devices_now()
        doc = evaluate(fold(snap.log + devices_now))
        yield from self._devices(present_devices(doc, devices_now))
        yield self._init_histogram(snap.log, snap.retired)

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
        program = GaugeMetricFamily("vmemtrace_bpf_program_info", "the BPF program loaded: "
                                    "its build defines", labels=["defines"])
        program.add_metric([" ".join(header["cflags"])], 1)
        yield program

    def _devices(self, devices: List[dict]) -> Iterator:
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
        count.add_metric([], len(devices))
        # To join with ndctl's names: group_left(namespace) on device.
        info = InfoMetricFamily("vmemtrace_device", "each dax device's nvdimm namespace "
                                "(\"\" for hmem/CXL devices)", labels=["device", "namespace"])
        for d in devices:
            name, page = d["device"], d["page_size"]
            info.add_metric([name, d["namespace"] or ""], {})
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
    def _init_histogram(log: List[dict], retired: InitTally) -> HistogramMetricFamily:
        seconds = [e["duration_ns"] / 1e9 for e in log if e["type"] == "range"]
        buckets: List[Tuple[str, float]] = [
            (str(le), before + sum(1 for s in seconds if s <= le))
            for le, before in zip(INIT_BUCKETS, retired.buckets)]
        buckets.append(("+Inf", retired.count + len(seconds)))
        return HistogramMetricFamily("vmemtrace_memmap_init_seconds", "memmap_init_zone_device "
                                     "duration per range", buckets=buckets,
                                     sum_value=retired.total + sum(seconds))


