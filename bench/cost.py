#!/usr/bin/env python3
"""What vmemtrace costs against device size: one lab guest per region size, each verifying one
namespace of the whole region and then watching it set up again under the exporter
(bench/guest_cost.py), printed as one table with each figure's ratio to the smallest size.
Run on demand, never by the test suite:

    .venv/bin/python bench/cost.py                         # 6.12, mem-2M: 3G 64G 256G 1T
    .venv/bin/python bench/cost.py --size 3G --size 64G --json cost.json

Under qemu TCG absolute times are an emulated CPU's; the ratios between sizes, and between the
exporter and a bare prometheus-client one serving as many series in the same guest, are what
to read. The issue's goals: from the smallest size to the largest, peak RSS and scrape p99
within 1.2x, event-log bytes growing with the number of ranges (here one), not their size;
scrape p99 within 2x the bare exporter's.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("3G", "64G", "256G", "1T")
GROWTH_GOAL = 1.2
BARE_GOAL = 2.0


def run_guest(kernel: str, size: str, case: str) -> dict:
    cmd = [sys.executable, "-m", "vmemtrace", "lab", "--kernel", kernel, "--size", size, "--exec",
           f"python3 /opt/vmemtrace/bench/guest_cost.py --case {case}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"cost: the {kernel} guest with --size {size} failed:\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["size"] = size
    return doc


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def kib(n: int) -> str:
    return f"{n / 2**10:,.1f} KiB"


def rows(docs: list) -> list:
    first = docs[0]

    def ratio(doc, get):
        base = get(first)
        return f"{get(doc) / base:.2f}x" if base else "-"

    out = []
    for d in docs:
        v, e = d["verify"], d["exporter"]
        out.append((d["size"], f"{v['compound_pages'][0]:,}", v["verdict"], v["events_lost"],
                    f"{v['seconds']:.1f} s", mib(v["peak_rss_bytes"]),
                    ratio(d, lambda x: x["verify"]["peak_rss_bytes"]),
                    kib(v["log_bytes"]), ratio(d, lambda x: x["verify"]["log_bytes"]),
                    mib(v["bpf_map_bytes"]), mib(e["rss_bytes"]),
                    ratio(d, lambda x: x["exporter"]["rss_bytes"]),
                    f"{e['p99'] * 1e3:.1f} ms of {e['scrapes']}", ratio(d, lambda x: x["exporter"]["p99"]),
                    f"{e['bare_p99'] * 1e3:.1f} ms ({e['series']} series)",
                    f"{e['p99'] / e['bare_p99']:.2f}x"))
    return out


HEADERS = ["size", "compound pages", "verify", "lost", "verify wall", "verify peak RSS", "vs first",
           "event log", "vs first", "BPF maps (peak)", "exporter RSS", "vs first",
           "scrape p99", "vs first", "bare prometheus-client p99", "ours / bare"]


def verdicts(docs: list) -> list:
    """Each goal, met or not, from the table's own numbers."""
    first, last = docs[0], docs[-1]
    grow = {k: get(last) / get(first) for k, get in (
        ("verify peak RSS", lambda d: d["verify"]["peak_rss_bytes"]),
        ("exporter RSS", lambda d: d["exporter"]["rss_bytes"]),
        ("scrape p99", lambda d: d["exporter"]["p99"]),
        ("event-log bytes", lambda d: d["verify"]["log_bytes"]))}
    out = [(f"{k}, {first['size']} -> {last['size']}", f"{g:.2f}x", f"<= {GROWTH_GOAL}x",
            "yes" if g <= GROWTH_GOAL else "NO") for k, g in grow.items()]
    worst = max(d["exporter"]["p99"] / d["exporter"]["bare_p99"] for d in docs)
    out.append(("scrape p99 / bare prometheus-client, worst size", f"{worst:.2f}x",
                f"<= {BARE_GOAL}x", "yes" if worst <= BARE_GOAL else "NO"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="6.12")
    ap.add_argument("--case", default="mem-2M")
    ap.add_argument("--size", action="append", help="region sizes, smallest first (default "
                                                    + " ".join(SIZES) + ")")
    ap.add_argument("--json", help="also write the raw measurements here")
    ap.add_argument("--from", dest="source", help="print the tables of an earlier --json "
                                                  "instead of measuring")
    args = ap.parse_args()
    docs = json.loads(Path(args.source).read_text()) if args.source else []
    for size in [] if args.source else args.size or SIZES:
        docs.append(run_guest(args.kernel, size, args.case))
        print(f"cost: {size} measured", file=sys.stderr, flush=True)
        if args.json:  # after each size: a 1 TiB guest takes about 8 minutes under TCG
            Path(args.json).write_text(json.dumps(docs, indent=1))
    print(f"{docs[0]['kernel']}, {args.case}, one namespace of the whole region:\n")
    print(tabulate(rows(docs), headers=HEADERS, disable_numparse=True))
    print()
    print(tabulate(verdicts(docs), headers=["goal", "measured", "goal", "met"], disable_numparse=True))


if __name__ == "__main__":
    main()
