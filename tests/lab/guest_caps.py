"""Runs inside a lab guest (python3 tests/lab/guest_caps.py CAP,CAP,...): which capabilities does tracing
need, as deploy/ grants them? The exporter runs as uid 0 with only the capabilities the
DaemonSet adds (setpriv's bounding set), once per kernel.perf_event_paranoid level (Debian's 3,
upstream's 2), while a namespace is created with full privileges beside it, as on a node.
Prints one JSON document.

Driven by tests/lab/test_lab_e2e_caps.py; the assertions live there.
"""

import json
import signal
import subprocess
import sys
import time

PARANOID = "/proc/sys/kernel/perf_event_paranoid"
NDCTL = ["ndctl", "create-namespace", "-f", "-e", "namespace0.0", "-m", "devdax", "-M", "mem",
         "-a", "2M"]


def restricted(caps, *args):
    bounding = "-all," + ",".join("+" + c for c in caps)
    return ["setpriv", f"--bounding-set={bounding}", "--", "vmemtrace", *args]


def metric_lines(path, name):
    try:
        with open(path) as fh:
            return [line for line in fh if line.startswith(name)]
    except OSError:
        return []


def run(caps, paranoid):
    with open(PARANOID, "w") as fh:
        fh.write(str(paranoid))
    check = subprocess.run(restricted(caps, "check", "--json"), capture_output=True, text=True)
    doc = json.loads(check.stdout) if check.stdout.strip() else {}
    prom = f"/tmp/caps-{paranoid}.prom"
    err = open(f"/tmp/caps-{paranoid}.err", "w+")
    exporter = subprocess.Popen(restricted(caps, "exporter", "--textfile", prom, "--interval", "1"),
                                stdout=err, stderr=subprocess.STDOUT)
    deadline, attached = time.monotonic() + 120, False
    while time.monotonic() < deadline and exporter.poll() is None:
        attached = any(line.rstrip().endswith(" 1.0") for line in
                       metric_lines(prom, 'vmemtrace_probe_attached{function="memmap_init_zone_device"'))
        if attached:
            break
        time.sleep(1)
    out = {"paranoid": paranoid, "check_exit": check.returncode,
           "can_trace": doc.get("can_trace"), "privileged": doc.get("privileged"),
           "attached": attached}
    if attached:
        subprocess.run(NDCTL, check=True, capture_output=True)
        time.sleep(5)
        out["tail_reuse"] = [line.strip() for line in metric_lines(prom, "vmemtrace_check_status")
                             if 'check="tail-reuse"' in line and line.rstrip().endswith(" 1.0")]
        out["saved"] = [line.strip() for line in metric_lines(prom, "vmemtrace_vmemmap_saved_bytes")]
    out["tracing"] = [line.strip() for line in metric_lines(prom, "vmemtrace_tracing{")]
    if exporter.poll() is None:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=30)
    out["exporter_exit"] = exporter.returncode
    err.seek(0)
    out["exporter_said"] = err.read()[-1500:]
    return out


def main():
    caps = [c.lower() for c in sys.argv[1].split(",")]  # the DaemonSet's, read by the driver
    before = open(PARANOID).read().strip()
    try:
        runs = [run(caps, p) for p in (3, 2)]
    finally:
        with open(PARANOID, "w") as fh:
            fh.write(before)
    json.dump({"caps": caps, "default_paranoid": before, "runs": runs}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
