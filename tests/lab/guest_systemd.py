"""Runs inside a `lab --systemd` guest (systemd PID 1, the .deb installed, its unit enabled and
started by the lab): the shipped unit traces, judges a namespace made now, and a real Prometheus
scrapes it and evaluates the alert rules, a pool of hugetlb pages allocated with HVO on among
them; then the unit under the hardening that hid
/proc/kallsyms says so and alerts; then it stops clean; with --package-on SERIES, on that kernel
the installed package is checked too (guest_install.py). Prints one JSON document.

Driven by tests/lab/test_lab_e2e_systemd.py; the assertions live there.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, "/opt/vmemtrace")
# Only the lab's helpers and tables: the unit runs the installed package, not this tree.
from tests.lab import guest_install  # noqa: E402
from tests.lab.guest_prometheus import (  # noqa: E402
    POOL,
    alert_rules,
    expected_saving,
    get,
    kprobes,
    lhs,
    poll,
    query,
    start_prometheus,
    write,
)
from vmemtrace.lab import deb  # noqa: E402
from vmemtrace.lab.cases import CASES  # noqa: E402

EXPORTER = "http://127.0.0.1:9477/metrics"  # the unit's own --listen (VMEMTRACE_OPTS)
RULES = "/usr/share/vmemtrace/dashboards/alerts.yml"  # as the package installs them
DROPIN = "/etc/systemd/system/vmemtrace-exporter.service.d"


START = time.monotonic()


def note(message):
    """Progress on stderr, which the lab prints: where a guest that timed out had got to."""
    print(f"guest_systemd: {time.monotonic() - START:6.1f}s {message}", file=sys.stderr, flush=True)


def wait(what, test, timeout=600):
    note(f"waiting for {what}")
    got = poll(test, timeout)
    if got:
        return got
    raise SystemExit(f"timed out waiting for {what}; unit: {' | '.join(deb.journal(8))}; "
                     f"exporter: {' | '.join(exporter_state())}")


def exporter_state():
    """The exporter's own account of what it sees, for a message that says why a wait failed."""
    try:
        text = get(EXPORTER)
    except OSError as e:
        return [f"{EXPORTER}: {e}"]
    return [line for line in text.splitlines() if not line.startswith("#") and (
        "dax0.0" in line and "check_status" not in line or line.endswith(" 1.0") and "check_status" in line
        or line.startswith(("vmemtrace_tracing", "vmemtrace_devices", "vmemtrace_events_lost",
                            "vmemtrace_bpf_errors")))]


def series(name):
    """The exporter's samples of one metric: {label text: value}."""
    out = {}
    for line in get(EXPORTER).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):]] = float(value)
    return out


def tracing():
    return series("vmemtrace_tracing")


def unit_state():
    show = deb.systemctl("show", deb.UNIT, "-p", "MainPID,ActiveState,SubState,ExecMainStatus,"
                         "NRestarts").stdout
    state = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    pid = int(state.get("MainPID", "0"))
    if pid:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            state["cmdline"] = [a.decode() for a in fh.read().split(b"\0")[:3]]
    return state


def security():
    """systemd-analyze's exposure score of the unit as installed (lower is tighter)."""
    proc = deb.systemctl("--version")  # the systemd that scores it
    score = subprocess.run(["systemd-analyze", "security", "--no-pager", deb.UNIT],
                           capture_output=True, text=True, env=deb.CLEAN_ENV)
    last = [line for line in score.stdout.splitlines() if "Overall exposure level" in line]
    return {"systemd": proc.stdout.split("\n", 1)[0], "exit": score.returncode,
            "line": last[-1] if last else score.stderr.strip()[-300:]}


def rules_now():
    out = {}
    for name, expr in alert_rules(RULES):
        status, firing = query(expr)
        _, data = query(lhs(expr))
        out[name] = {"status": status, "firing": [r["metric"] for r in firing],
                     "data": len(data)}
    return out


def restart_with(dropin):
    """The unit restarted under one more setting (None: as shipped)."""
    os.makedirs(DROPIN, exist_ok=True)
    path = f"{DROPIN}/lab.conf"
    if dropin is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        with open(path, "w") as fh:
            fh.write(f"[Service]\n{dropin}\n")
    deb.systemctl("daemon-reload")
    deb.systemctl("restart", deb.UNIT)


def hugetlb_pool():
    """HVO on, 16 pages of 2 MiB allocated: the unit, under its hardening, must walk them
    (/proc/kpageflags, /proc/kcore) and report each optimised."""
    write("/proc/sys/vm/hugetlb_optimize_vmemmap", "1")
    write("/proc/sys/vm/compact_memory", "1")
    write(POOL, "16")

    def states():
        got = {r["metric"]["state"]: float(r["value"][1]) for r in
               query('vmemtrace_hugetlb_folios{device="hugetlb-2048kB"}')[1]}
        return got if got.get("optimized") == 16 else None

    return wait("the hugetlb pool in Prometheus", states)


def main():
    out = {"unit": unit_state(), "security": security()}
    # The root's own Prometheus (Debian's package enables its unit) holds :9090 under systemd:
    # stopped, so that the one started here, which scrapes the unit, answers the queries.
    out["system_prometheus"] = deb.systemctl("stop", "prometheus.service").returncode
    prom = start_prometheus(RULES)
    try:
        out["tracing"] = wait("the unit to trace", lambda: tracing().get('{reason=""}') == 1
                              and tracing())
        out["kprobes_during"] = kprobes()
        if prom.poll() is not None:  # e.g. its port taken
            with open("/tmp/prometheus.err") as fh:
                raise SystemExit(f"prometheus exited {prom.returncode}: {fh.read()[-1000:]}")
        subprocess.run(["ndctl", "disable-namespace", "namespace0.0"], capture_output=True)
        made = subprocess.run(CASES["mem-2M"].ndctl_args("namespace0.0"), capture_output=True,
                              text=True)
        out["ndctl_exit"] = made.returncode
        expected = expected_saving()
        out["expected_saved"] = expected
        out["saved"] = wait("the saving in Prometheus", lambda: [
            float(r["value"][1]) for r in query('vmemtrace_vmemmap_saved_bytes{device="dax0.0"}')[1]
            if float(r["value"][1]) == expected])
        out["checks"] = {k: v for k, v in series("vmemtrace_check_status").items() if v == 1}
        out["hugetlb"] = hugetlb_pool()
        time.sleep(6)  # more scrapes: rules with increase() over 1m have their two samples
        out["rules"] = rules_now()
        # The hardening that hid /proc/kallsyms and /proc/kcore: the unit must say so, alert, and
        # recover once it is gone.
        restart_with("ProtectKernelTunables=yes")
        out["hidden_tracing"] = wait("the hidden-kallsyms diagnosis", lambda: (
            tracing() if tracing().get('{reason="kallsyms_unreadable"}') == 0 else None))
        out["hidden_alerts"] = wait("the alert on hidden kallsyms", lambda: [
            r["metric"]["alertname"] for r in query("ALERTS")[1]
            if r["metric"]["alertname"] == "VmemtraceKernelSymbolsHidden"])
        out["hidden_journal"] = deb.journal(30)
        restart_with(None)
        out["recovered"] = wait("the unit to trace again", lambda: tracing().get('{reason=""}') == 1
                                and tracing())
        deb.systemctl("stop", deb.UNIT)
        out["stopped"] = unit_state()
        out["kprobes_after"] = kprobes()
    finally:
        prom.terminate()
        prom.wait(timeout=60)
    # The package itself, on one kernel (--package-on SERIES): in this boot, not one of its own.
    if len(sys.argv) == 3 and sys.argv[1] == "--package-on" \
            and os.uname().release.startswith(sys.argv[2] + "."):
        note("the installed package: man pages, unit files, every case by the .deb and the wheel")
        out["package"] = guest_install.report()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
