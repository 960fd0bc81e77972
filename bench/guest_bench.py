"""Runs inside a lab guest (bench/bench.py starts it): every measurement of the benchmark, side
by side in the same guest, printed as one JSON document on the last line of stdout.

Nothing here judges; bench.py prints the table. Times are wall-clock under qemu TCG: ratios
between runs in the same guest mean something, absolute values are those of an emulated CPU.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "namespace0.0"
VMEMTRACE = [sys.executable, "-m", "vmemtrace"]
MINIMAL_BCC = ("from bcc import BPF\n"
               "b = BPF(text='int kprobe__memmap_init_zone_device(void *ctx) { return 0; }')\n"
               "print('attached', flush=True)\n")


def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def ndctl(case):
    from vmemtrace.lab.cases import CASES  # the lab's own cases: the same ndctl arguments

    return CASES[case].ndctl_args(NS)


def disable():
    sh("ndctl", "disable-namespace", NS, check=False)


def untraced(case):
    disable()
    start = time.monotonic()
    sh(*ndctl(case))
    return time.monotonic() - start


def traced(case):
    """vmemtrace verify's own measure of the command (it starts the clock after attaching), and
    the probe hits its log counted: {function: [entry hits, return probed too?]}."""
    disable()
    log = "/tmp/bench-traced.jsonl"
    proc = subprocess.run(VMEMTRACE + ["verify", "--json", "--record", log, "--", *ndctl(case)],
                          cwd=SRC, capture_output=True, text=True)
    doc = json.loads(proc.stdout)
    (dev,) = doc["devices"]
    with open(log) as fh:
        events = [json.loads(line) for line in fh]
    strategy = events[0]["strategy"]
    hits = next((e["hits"] for e in events if e["type"] == "hits"), {})
    return doc["command"]["seconds"], doc, dev, {
        f: [n, strategy.get(f, "")] for f, n in hits.items() if n}


def bpftrace_program():
    """A bpftrace program counting hits on the probes vmemtrace attaches here (same targets,
    same kinds: kprobes, kretprobes, fentry, fexit): the cost of the probes alone, without
    vmemtrace's work."""
    probes = ",".join(f"{spelling(kind)}:{t}" for t, how in attached_targets().items()
                      for kind in how.replace("count", "kprobe").split("+"))
    return f'BEGIN {{ printf("attached\\n"); }} {probes} {{ @[probe] = count(); }}'


def under_bpftrace(case, program):
    """ndctl's wall time while bpftrace counts the same probe hits; None where bpftrace never
    said it attached (the run measures nothing then). bpftrace 0.17 took more than two minutes
    to leave after SIGINT with kfunc probes under TCG (6.12 guest, 2026-12-05): it is killed."""
    disable()
    proc = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    attached = False
    try:
        for line in proc.stdout:  # BEGIN fires once every probe is attached
            if "attached" in line:
                attached = True
                break
        if not attached:
            return None
        start = time.monotonic()
        sh(*ndctl(case))
        return time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def overhead(reps, cases):
    out = {}
    program = bpftrace_program()
    for case in cases:
        plain, under, counted, lost = [], [], [], 0
        doc = dev = hits = None
        for _ in range(reps):  # alternating, so drift hits all sides alike
            plain.append(untraced(case))
            seconds, doc, dev, hits = traced(case)
            under.append(seconds)
            seconds = under_bpftrace(case, program)
            if seconds is not None:
                counted.append(seconds)
            lost += doc["events_lost"]
        out[case] = {"untraced": plain, "traced": under, "bpftrace": counted, "lost": lost,
                     "verdict": doc["verdict"], "hits": hits,
                     "vmemmap_pages": dev["vmemmap_pages"],
                     "memmap_init_seconds": dev["memmap_init_seconds"],
                     "nr_pages": dev["nr_pages"]}
    return out


# getppid(2) calls it once (task_tgid_vnr()), out of line on every lab kernel. Not
# __x64_sys_getppid: since x64_sys_call() (6.9, and stable) the syscall table is a switch that
# may inline it, so a probe on it attaches and is never hit (measured: 32-118 ns "per hit").
PERHIT_FUNCTION = "__task_pid_nr_ns"
PERHIT_KINDS = {"kprobe": ("kprobe",), "kretprobe": ("kretprobe",),
                # bpftrace 0.17 (bookworm) says kfunc/kretfunc, 0.23 (trixie) fentry/fexit
                "fentry": ("fentry", "kfunc"), "fexit": ("fexit", "kretfunc")}


def getppid_loop(calls):
    start = time.perf_counter()
    for _ in range(calls):
        os.getppid()
    return time.perf_counter() - start


def with_probe(spelling, calls):
    """The loop's time while bpftrace counts hits on the function; None where bpftrace does
    not know this spelling of the attachment, or where the probe was not hit once per call
    (an attached probe that is not hit measures nothing)."""
    program = (f'BEGIN {{ printf("attached\\n"); }} {spelling}:{PERHIT_FUNCTION} '
               '{ @hits = count(); }')
    proc = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seconds = None
    try:
        for line in proc.stdout:
            if "attached" in line:
                seconds = getppid_loop(calls)
                break
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    hits = re.search(r"@hits: (\d+)", rest or "")
    if seconds is None or not hits or int(hits.group(1)) < calls:
        return None
    return seconds


_spelled = {}


def spelling(kind):
    """How this bpftrace spells an attachment kind (PERHIT_KINDS), None where it has none."""
    if kind not in _spelled:
        _spelled[kind] = next((s for s in PERHIT_KINDS[kind] if with_probe(s, 10) is not None),
                              None)
    return _spelled[kind]


def perhit(reps, calls=100000):
    """A cheap traceable function called `calls` times from a loop, with no probe and with each
    kind of probe on it, alternating: bench.py divides the difference by the calls."""
    spelled = {kind: spelling(kind) for kind in PERHIT_KINDS}
    out = {"calls": calls, "none": [], **{k: [] for k, s in spelled.items() if s}}
    for _ in range(reps):
        out["none"].append(getppid_loop(calls))
        for kind, spelling in spelled.items():
            seconds = with_probe(spelling, calls) if spelling else None
            if seconds is not None:
                out[kind].append(seconds)
    out["unmeasured"] = [k for k in PERHIT_KINDS if not out.get(k)]
    for kind in out["unmeasured"]:
        out.pop(kind, None)
    return out


def time_until(cmd, marker, env=None, timeout=300):
    """Seconds from launch until a line containing marker appears on stdout or stderr."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=SRC, env=env)
    try:
        for line in proc.stdout:
            if marker in line:
                return time.monotonic() - start
        raise RuntimeError(f"{cmd[0]} exited without {marker!r}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # bpftrace leaving its kfunc probes (under_bpftrace)
            proc.kill()
            proc.wait()


def attached_targets():
    """What vmemtrace attaches on this kernel (its plan), by strategy: the bpftrace baseline
    attaches the same."""
    from vmemtrace.probes.plan import is_attached

    doc = json.loads(subprocess.run(VMEMTRACE + ["check", "--json"], cwd=SRC, capture_output=True,
                                    text=True).stdout)
    return {name: how for name, how in doc["strategy"].items() if is_attached(how)}


def startup(reps):
    program = bpftrace_program()
    rows = {"vmemtrace": [], "minimal BCC": [], "bpftrace": []}
    for _ in range(reps):
        rows["vmemtrace"].append(time_until(VMEMTRACE + ["trace"], "attached to"))
        rows["minimal BCC"].append(time_until([sys.executable, "-c", MINIMAL_BCC], "attached"))
        rows["bpftrace"].append(time_until(["bpftrace", "-e", program], "attached"))
    return rows


def loss(rounds):
    """The heaviest work the lab holds: the whole region, 2 MiB compound pages (one
    vmemmap_populate_address per vmemmap PTE, one compound entry per 2 MiB), then 4 KiB, created
    and destroyed back to back under one trace."""
    disable()
    script = "\n".join(f"ndctl create-namespace -f -e {NS} -m devdax -M mem -a {a} >/dev/null && "
                       f"ndctl disable-namespace {NS} >/dev/null"
                       for _ in range(rounds) for a in ("2M", "1G", "4K"))
    proc = subprocess.run(VMEMTRACE + ["record", "-o", "/tmp/loss.jsonl", "--", "sh", "-c", script],
                          cwd=SRC, capture_output=True, text=True)
    events = [json.loads(line) for line in open("/tmp/loss.jsonl")]
    lost = sum(e["count"] for e in events if e["type"] == "lost")
    errors = {}
    for e in events:
        if e["type"] == "lost":
            for k, v in e["errors"].items():
                errors[k] = errors.get(k, 0) + v
    return {"namespaces": 3 * rounds, "events": len(events), "lost": lost, "bpf_errors": errors,
            "ranges": sum(e["type"] == "range" for e in events),
            "compound": sum(e["count"] for e in events if e["type"] == "compounds"),
            "exit": proc.returncode}


def footprint(scrapes, rounds):
    """Exporter RSS and scrape latency with a ledger that holds several namespaces' events."""
    disable()
    exporter = subprocess.Popen(VMEMTRACE + ["exporter", "--listen", "127.0.0.1:9477"], cwd=SRC,
                                stderr=subprocess.PIPE, text=True)
    try:
        for line in exporter.stderr:
            if "attached to" in line:
                break
        for _ in range(rounds):
            disable()
            sh(*ndctl("mem-2M"))
        time.sleep(2)
        times = []
        body = b""
        for _ in range(scrapes):
            start = time.perf_counter()
            with urllib.request.urlopen("http://127.0.0.1:9477/metrics", timeout=10) as r:
                body = r.read()
            times.append(time.perf_counter() - start)
        with open(f"/proc/{exporter.pid}/status") as fh:
            rss = int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1)) * 1024
        times.sort()
        return {"scrapes": scrapes, "namespaces": rounds, "rss_bytes": rss,
                "p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99) - 1],
                "exposition_bytes": len(body)}
    finally:
        exporter.terminate()
        exporter.wait(timeout=60)


def main():
    sys.path.insert(0, SRC)
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--startup-reps", type=int, default=3)
    ap.add_argument("--loss-rounds", type=int, default=3)
    ap.add_argument("--scrapes", type=int, default=1000)
    ap.add_argument("--only", default="perhit,overhead,startup,loss,footprint")
    ap.add_argument("--cases", help="overhead's cases, comma-separated (default: the lab's)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    doc = {"kernel": os.uname().release, "cpus": os.cpu_count()}
    if "perhit" in only:
        doc["perhit"] = perhit(args.reps)
    if "overhead" in only:
        from vmemtrace.lab.cases import DEFAULT_CASES

        doc["overhead"] = overhead(args.reps, args.cases.split(",") if args.cases else DEFAULT_CASES)
    if "startup" in only:
        doc["startup"] = startup(args.startup_reps)
    if "loss" in only:
        doc["loss"] = loss(args.loss_rounds)
    if "footprint" in only:
        doc["footprint"] = footprint(args.scrapes, args.loss_rounds)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
