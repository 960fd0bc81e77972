#!/usr/bin/env python3
"""Exporter churn, side by side in one run: N create/destroy cycles of a real 6.12 mem-2M
recording (tests/fixtures/events) fed to two exporters' live ledgers, one that retires the ranges
that are gone (LiveLedger.retire, as the tracing loop does every 30 s) and one that keeps every
range. Prints the ranges held, the median and p99 scrape time and the memory the ledger holds,
and their ratios.

    .venv/bin/python bench/churn.py [CYCLES]

Host-side: the collector and the fold are pure Python, so no guest is needed to measure them;
what a guest adds (the tracer, perf buffers) is the same for both.
"""

import copy
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmemtrace.kernel import daxdev  # noqa: E402
from vmemtrace.log import logfile  # noqa: E402
from vmemtrace.output.exporter import Exporter  # noqa: E402
from vmemtrace.output.metrics import LiveLedger, Snapshot  # noqa: E402

LOG = next((Path(__file__).resolve().parent.parent / "tests/fixtures/events").glob("6.12*")) / "mem-2M.jsonl"
SCRAPES = 21


def recording():
    with open(LOG) as fh:
        log = logfile.read(fh, str(LOG))
    body = [e for e in log[1:] if e["type"] not in ("device", "lost", "hits", "command", "vmstat")]
    return log[0], body, [e for e in log if e["type"] == "device"]


def run(cycles: int, prune: bool) -> dict:
    header, body, devices = recording()
    daxdev.inventory = lambda: [dict(d) for d in devices]  # the device exists after each cycle
    exp = Exporter()
    tracemalloc.start()
    live = LiveLedger([header])
    exp.snap = Snapshot(live, attached=[f for f, how in header["strategy"].items()
                                        if how.startswith("kprobe")])
    for _ in range(cycles):
        for ev in copy.deepcopy(body):
            live.append(ev)
        if prune:
            live.retire(daxdev.inventory())
    live.refresh(exp.devices_now())  # the tracing loop's judgement after the last cycle
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    times = []
    for _ in range(SCRAPES):
        t = time.perf_counter()
        generate_latest(exp.registry)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"ranges": len(live.fold.made), "p50": statistics.median(times), "p99": times[-1],
            "held": held}


def main():
    cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    keep, pruned = run(cycles, prune=False), run(cycles, prune=True)
    print(f"{cycles} create/destroy cycles of {LOG.parent.name}/{LOG.name}, {SCRAPES} scrapes each")
    print(f"{'':28}{'keeps all':>14}{'prunes':>14}{'ratio':>10}")
    for key, label, fmt in (("ranges", "ranges held", "{:.0f}"),
                            ("p50", "scrape p50 (ms)", "{:.1f}"),
                            ("p99", "scrape p99 (ms)", "{:.1f}"),
                            ("held", "ledger memory (MiB)", "{:.1f}")):
        scale = 1e3 if key in ("p50", "p99") else (1 / (1 << 20) if key == "held" else 1)
        a, b = keep[key] * scale, pruned[key] * scale
        print(f"{label:28}{fmt.format(a):>14}{fmt.format(b):>14}{a / b:>9.1f}x")


if __name__ == "__main__":
    main()
