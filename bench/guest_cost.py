"""Runs inside a lab guest (bench/cost.py starts it, one guest per region size): what vmemtrace
costs for one namespace of the whole region, printed as one JSON document on stdout's last line.

- verify: the process's wall time, its peak RSS (getrusage of the waited child), the event
  log's bytes, and the peak memory the kernel charges to its BPF maps (the "memlock" line of
  each map fd's fdinfo, sampled every 50 ms while it runs);
- the exporter, with that namespace set up while it watched: its RSS and scrape p50/p99, and
  beside it a bare prometheus-client exporter serving as many series, scraped the same way.

Nothing here judges; cost.py prints the table.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.request

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "namespace0.0"
VMEMTRACE = [sys.executable, "-m", "vmemtrace"]
SCRAPE_SECONDS = 300.0
BARE = """import sys, time
from prometheus_client import Gauge, start_http_server
g = Gauge("bare_series", "one of as many series as vmemtrace's exporter serves", ["i"])
for i in range(int(sys.argv[1])):
    g.labels(str(i)).set(i)
start_http_server(int(sys.argv[2]), addr="127.0.0.1")
print("listening", flush=True)
time.sleep(1e9)
"""


def ndctl(case):
    from vmemtrace.lab.cases import CASES

    return CASES[case].ndctl_args(NS)


def disable():
    subprocess.run(["ndctl", "disable-namespace", NS], capture_output=True)


def map_memory(pid):
    """Bytes the kernel charges to the BPF maps this process holds (fdinfo "memlock": 6.4+ count
    what a hash map without preallocation holds now, bpf_map_memory_usage())."""
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                text = fh.read()
        except OSError:
            continue
        if "map_type:" in text:
            m = re.search(r"memlock:\s+(\d+)", text)
            total += int(m.group(1)) if m else 0
    return total


def verify(case, log):
    disable()
    start = time.monotonic()
    proc = subprocess.Popen(VMEMTRACE + ["verify", "--json", "--record", log, "--", *ndctl(case)],
                            cwd=SRC, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], map_memory(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - start
    sampler.join()
    doc = json.loads(out)
    return {"seconds": round(wall, 3), "command_seconds": doc["command"]["seconds"],
            # the largest waited-for child: verify (ndctl is its child, and smaller)
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "log_bytes": os.path.getsize(log), "bpf_map_bytes": peak[0],
            "verdict": doc["verdict"], "events_lost": doc["events_lost"],
            "compound_pages": [d["compound_pages"] for d in doc["devices"]],
            "vmemmap_pages": [d["vmemmap_pages"] for d in doc["devices"]]}


def scrape(port, n, seconds=float("inf")):
    """n scrapes, or as many as fit in `seconds` (at least 20): a scrape that re-folds a 1 TiB
    log takes many seconds under TCG."""
    times, body = [], b""
    deadline = time.monotonic() + seconds
    for i in range(n):
        if i >= 20 and time.monotonic() > deadline:
            break
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            body = r.read()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[max(0, int(len(times) * 0.99) - 1)],
            "bytes": len(body), "scrapes": len(times)}, body


def rss(pid):
    with open(f"/proc/{pid}/status") as fh:
        text = fh.read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def series(body):
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def wait_for(proc, marker):
    for line in proc.stderr if proc.stderr else proc.stdout:
        if marker in line:
            return
    raise RuntimeError(f"exited without {marker!r}")


def exporter(case, scrapes):
    disable()
    proc = subprocess.Popen(VMEMTRACE + ["exporter", "--listen", "127.0.0.1:9477"], cwd=SRC,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, "attached to")
        subprocess.run(ndctl(case), capture_output=True, check=True)
        # folded once the range's events are in: its device appears in the exposition
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            _, body = scrape(9477, 1)
            if b'device="dax0.0"' in body:
                break
            time.sleep(1)
        timing, body = scrape(9477, scrapes, SCRAPE_SECONDS)
        mem = rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    n = series(body)
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(n), "9478"], stdout=subprocess.PIPE,
                            text=True)
    try:
        wait_for(bare, "listening")
        bare_timing, _ = scrape(9478, timing["scrapes"])
    finally:
        bare.terminate()
        bare.wait(timeout=60)
    return {"series": n, "rss_bytes": mem["VmRSS"], "hwm_bytes": mem["VmHWM"], **timing,
            "bare_p50": bare_timing["p50"], "bare_p99": bare_timing["p99"]}


def main():
    sys.path.insert(0, SRC)
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="mem-2M")
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()
    doc = {"kernel": os.uname().release, "case": args.case}
    doc["verify"] = verify(args.case, "/tmp/cost.jsonl")
    doc["exporter"] = exporter(args.case, args.scrapes)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
