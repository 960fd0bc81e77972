#!/usr/bin/env python3
"""The benchmark: what tracing costs and what the kernel saved, measured side by side in lab
guests, printed as one table of ratios. Run on demand, never by the test suite:

    .venv/bin/python bench/bench.py                       # 6.12 and 6.1, 21 repetitions
    .venv/bin/python bench/bench.py --kernel 6.12 --reps 31 --json out.json

Each kernel boots once (`vmemtrace lab --exec bench/guest_bench.py`); inside it every pair is
measured in the same guest, alternating traced and untraced runs. Under qemu TCG absolute times
are an emulated CPU's; the ratios are what to read. Each ratio of medians comes with its 95%
bootstrap interval, and a goal is met only when the interval's upper end meets it.
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"mem-2M": 1.05, "mem-1G": 1.05, "mem-4K": 1.10}  # issue 6
STARTUP_GOAL = 1.5
GIB = 1 << 30
TIB = 1 << 40


def run_guest(kernel: str, args: list, size: str) -> dict:
    cmd = [sys.executable, "-m", "vmemtrace", "lab", "--kernel", kernel, "--size", size,
           "--timeout", "7200", "--exec",
           "python3 /opt/vmemtrace/bench/guest_bench.py " + " ".join(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"bench: the {kernel} guest failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def med(xs):
    return statistics.median(xs)


def bootstrap_ratio(a, b, resamples=2000, seed=0):
    """median(a) / median(b), and its 95% percentile-bootstrap interval: both samples resampled
    with replacement, independently (alternating runs are not paired by the guest's drift)."""
    rng = random.Random(seed)
    ratios = sorted(med(rng.choices(a, k=len(a))) / med(rng.choices(b, k=len(b)))
                    for _ in range(resamples))
    return med(a) / med(b), ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def fmt_ratio(r, goal=None, interval=None):
    """ratio (with its interval), the goal, and whether it is met: with an interval, "yes" only
    when its upper end is within the goal, "NO" when its lower end is not, else "undecided"."""
    text = f"{r:.3f}" if interval is None else f"{r:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    if goal is None:
        return text, "-", ""
    lo, hi = interval or (r, r)
    return text, f"<= {goal}", "yes" if hi <= goal else "NO" if lo > goal else "undecided"


def rows_for(doc: dict) -> list:
    k = doc["kernel"]
    rows = []
    for case, o in doc.get("overhead", {}).items():
        t, u = med(o["traced"]), med(o["untraced"])
        r, lo, hi = bootstrap_ratio(o["traced"], o["untraced"])
        rows.append((k, f"ndctl create {case}: traced / untraced (median of {len(o['traced'])})",
                     f"{t:.3f} s", f"{u:.3f} s", *fmt_ratio(r, GOALS.get(case), (lo, hi))))
        if o.get("bpftrace"):  # the probes alone: bpftrace counting hits on the same ones
            b = med(o["bpftrace"])
            rows.append((k, f"ndctl create {case}: bpftrace same probes / untraced",
                         f"{b:.3f} s", f"{u:.3f} s",
                         *fmt_ratio(*_with_interval(o["bpftrace"], o["untraced"]))))
            rows.append((k, f"ndctl create {case}: traced / bpftrace same probes",
                         f"{t:.3f} s", f"{b:.3f} s",
                         *fmt_ratio(*_with_interval(o["traced"], o["bpftrace"]))))
        est = estimated_overhead(o["hits"], doc["perhit"], u) \
            if o.get("hits") and doc.get("perhit") else None
        if est is not None:
            rows.append((k, f"ndctl create {case}: hits x per-hit cost / untraced (estimate)",
                         f"{est * u:.3f} s", f"{u:.3f} s", f"{1 + est:.3f}", "-", ""))
    for kind in (doc.get("perhit") or {}).get("unmeasured", []):
        rows.append((k, f"one {kind} hit on {PERHIT_FUNCTION}: not measured (bpftrace could not "
                        "attach it, or it was not hit once per call)", "-", "-", "-", "-", ""))
    for kind, runs in (doc.get("perhit") or {}).items():
        if kind in ("none", "calls", "unmeasured"):
            continue
        per = per_hit_ns(runs, doc["perhit"]["none"], doc["perhit"]["calls"])
        rows.append((k, f"one {kind} hit on {PERHIT_FUNCTION} (median of {len(runs)})",
                     f"{per:.0f} ns", "-", "-", "-", ""))
    s = doc.get("startup")
    if s:
        ours = med(s["vmemtrace"])
        for other in ("minimal BCC", "bpftrace"):
            goal = STARTUP_GOAL if other == "minimal BCC" else None
            rows.append((k, f"start-up to attached: vmemtrace / {other}", f"{ours:.1f} s",
                         f"{med(s[other]):.1f} s", *fmt_ratio(ours / med(s[other]), goal)))
    lo = doc.get("loss")
    if lo:
        rows.append((k, f"lost events, {lo['namespaces']} namespaces back to back "
                        f"({lo['events']} events)", str(lo["lost"]), "0",
                     "-", "= 0", "yes" if lo["lost"] == 0 else "NO"))
    f = doc.get("footprint")
    if f:
        rows.append((k, f"exporter RSS, {f['namespaces']} namespaces in the ledger",
                     f"{f['rss_bytes'] / 2**20:.0f} MiB", "-", "-", "-", ""))
        rows.append((k, f"scrape latency p50 / p99 over {f['scrapes']} scrapes",
                     f"{f['p50'] * 1e3:.1f} ms", f"{f['p99'] * 1e3:.1f} ms", "-", "-", ""))
    return rows


def _with_interval(a, b):
    r, lo, hi = bootstrap_ratio(a, b)
    return r, None, (lo, hi)


PERHIT_FUNCTION = "__task_pid_nr_ns"  # guest_bench.py's getppid() loop calls it


def per_hit_ns(probed, none, calls) -> float:
    """One probe hit's cost: the loop's median time with the probe attached, less without,
    over the calls the loop made."""
    return (med(probed) - med(none)) / calls * 1e9


def estimated_overhead(hits: dict, perhit: dict, untraced: float) -> float | None:
    """What the probes alone should cost a namespace creation, as a fraction of its untraced
    time: each function's entry hits times the cost of each kind of probe on it (hits:
    {function: [entry hits, its strategy]}, e.g. "fentry+fexit"; a count is a kprobe; runs
    recorded before 2026-12-05 say True/False for kprobe+kretprobe/kprobe). None where a kind
    used was not measured."""
    none, calls = perhit["none"], perhit["calls"]
    cost = 0.0
    for n, how in hits.values():
        if isinstance(how, bool):
            how = "kprobe+kretprobe" if how else "kprobe"
        for kind in how.replace("count", "kprobe").split("+"):
            if not perhit.get(kind):
                return None
            cost += n * per_hit_ns(perhit[kind], none, calls) / 1e9
    return cost / untraced


def savings_rows(doc: dict) -> list:
    """vmemmap bytes and memmap_init_zone_device time per case, per GiB and scaled to 1 TiB.
    Scaling is linear: both the vmemmap (one struct page per 4 KiB) and the init loop (one
    iteration per struct page initialised) grow with the range, so per-GiB x 1024."""
    o = doc.get("overhead", {})
    rows = []
    for case, c in o.items():
        gib = c["nr_pages"] * 4096 / GIB
        vm = c["vmemmap_pages"]
        naive_b, obs_b = vm["naive"] * 4096, (vm["observed"] or 0) * 4096
        t = c["memmap_init_seconds"]
        rows.append((doc["kernel"], case, f"{gib:.0f} GiB",
                     f"{naive_b / 2**20:.0f} MiB", f"{obs_b / 2**20:.2f} MiB",
                     f"{naive_b / gib * 1024 / GIB:.2f} GiB", f"{obs_b / gib * 1024 / GIB:.4f} GiB",
                     f"{t * 1e3:.2f} ms", f"{t / gib * 1024:.2f} s"))
    return rows


def summary(doc: dict) -> dict:
    """What the man pages quote of one kernel's run (vmemtrace/output/manual.py overhead_text()): each
    case's traced / untraced ratio with its interval and probe hits, and the start-up times."""
    out = {"kernel": doc["kernel"], "overhead": {}}
    for case, o in doc.get("overhead", {}).items():
        r, lo, hi = bootstrap_ratio(o["traced"], o["untraced"])
        out["overhead"][case] = {"ratio": round(r, 3), "interval": [round(lo, 3), round(hi, 3)],
                                 "runs": len(o["traced"]), "goal": GOALS.get(case),
                                 "hits": sum(n for n, _ in (o.get("hits") or {}).values())}
    s = doc.get("startup")
    if s:
        out["startup"] = {"seconds": round(med(s["vmemtrace"]), 1),
                          "minimal_bcc_seconds": round(med(s["minimal BCC"]), 1),
                          "goal": STARTUP_GOAL}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", action="append", help="6.12, 6.1 (default both)")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--size", default="3G")
    ap.add_argument("--only", default="perhit,overhead,startup,loss,footprint")
    ap.add_argument("--cases", help="the overhead's namespace cases (default: all four)")
    ap.add_argument("--json", help="also write the raw measurements and their summary here "
                    "(docs/bench.json is the one the man pages quote: scripts/build-man)")
    args = ap.parse_args()
    extra = ["--cases", args.cases] if args.cases else []
    docs = [run_guest(k, ["--reps", str(args.reps), "--only", args.only, *extra], args.size)
            for k in (args.kernel or ["6.12", "6.1"])]
    print(tabulate([r for d in docs for r in rows_for(d)],
                   headers=["kernel", "measure", "ours", "baseline", "ratio", "goal", "met"]))
    print()
    print(tabulate([r for d in docs for r in savings_rows(d)],
                   headers=["kernel", "case", "size", "vmemmap naive", "vmemmap observed",
                            "naive at 1 TiB", "observed at 1 TiB", "memmap_init",
                            "memmap_init at 1 TiB"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": [summary(d) for d in docs], "runs": docs},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
