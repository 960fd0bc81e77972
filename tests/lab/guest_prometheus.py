"""Runs inside a lab guest (python3 tests/lab/guest_prometheus.py): a real Prometheus scrapes a real
`vmemtrace exporter` while namespaces are created; then every query of the dashboard and the
alert rules is evaluated through Prometheus' HTTP API. Prints one JSON document.

Driven by tests/lab/test_lab_e2e_prometheus.py; the assertions live there.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORTER = "http://127.0.0.1:9477/metrics"
PROM = "http://127.0.0.1:9090"
# Grafana's variables, as the dashboard would send them with "All" selected
VARIABLES = {"$instance": ".*", "$__rate_interval": "1m"}


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def query(expr, at=None):
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    doc = json.loads(get(f"{PROM}/api/v1/query?" + urllib.parse.urlencode(params)))
    return doc["status"], doc["data"]["result"]


def poll(test, timeout):
    """test() once a second until it returns something true (an OSError is "not yet"); None
    when timeout seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = test()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(1)
    return None


def wait(what, test, timeout=300, alive=None):
    def alive_test():
        if alive is not None and alive.poll() is not None:
            with open("/tmp/exporter.err") as fh:
                raise SystemExit(f"the exporter exited {alive.returncode} while waiting for "
                                 f"{what}: {fh.read()[-2000:]}")
        return test()

    got = poll(alive_test, timeout)
    if got:
        return got
    with open("/tmp/exporter.err") as fh:
        raise SystemExit(f"timed out waiting for {what}; exporter: {fh.read()[-2000:]}")


def saved(expected):
    status, result = query('vmemtrace_vmemmap_saved_bytes{device="dax0.0"}')
    values = [float(r["value"][1]) for r in result]
    return values == [expected] and time.time()


def lhs(expr):
    """An alert expression without its final comparison: the data it compares."""
    return re.split(r"\s(==|!=|>|<|>=|<=)\s", expr)[0]


def expected_saving():
    """What geometry expects for the dax device that exists now (its pgmap range from sysfs)."""
    from vmemtrace.judge import geometry
    from vmemtrace.kernel import daxdev

    (dev,) = daxdev.inventory()
    shape = geometry.RangeShape(dev["pgmap_start_pfn"], dev["pgmap_nr_pages"],
                                dev["align"] // geometry.PAGE_SIZE)
    return geometry.saved_bytes(shape)


def kprobes():
    """Probes on two targets, kprobes or BPF trampolines (which ftrace lists among its enabled
    functions, with their direct call)."""
    n = 0
    for path in ("/sys/kernel/debug/kprobes/list", "/sys/kernel/tracing/enabled_functions"):
        with open(path) as fh:
            n += sum(1 for line in fh if "memmap_init_zone_device" in line
                     or "vmemmap_populate_address" in line)
    return n


def start_prometheus(rule_file):
    """Debian's Prometheus on :9090, scraping the exporter every 2 s and evaluating rule_file."""
    with open("/tmp/prometheus.yml", "w") as fh:
        fh.write("global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
                 f"rule_files: [{rule_file}]\n"
                 "scrape_configs:\n  - job_name: vmemtrace\n"
                 "    static_configs: [{targets: ['127.0.0.1:9477']}]\n")
    return subprocess.Popen(["prometheus", "--config.file=/tmp/prometheus.yml",
                             "--storage.tsdb.path=/tmp/prom-data",
                             "--web.listen-address=127.0.0.1:9090"],
                            stdout=subprocess.DEVNULL, stderr=open("/tmp/prometheus.err", "w"))


def alert_rules(rule_file):
    """(name, expression) of each alert in rule_file."""
    with open(rule_file) as fh:
        return re.findall(r"^\s*- alert: (\S+)\n\s*(?:#.*\n\s*)*expr: (.+)$", fh.read(), re.M)


POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
HVO_SERIES = ("vmemtrace_hugetlb_folios", "vmemtrace_hugetlb_vmemmap_saved_bytes",
              "vmemtrace_hugetlb_optimize_vmemmap", "vmemtrace_vmemmap_saved_bytes",
              "vmemtrace_check_status")


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def hugetlb_pool(exporter):
    """HVO switched on, then 16 pages of 2 MiB allocated while the exporter runs: Prometheus
    must see each optimised; the series as Prometheus has them then."""
    write("/proc/sys/vm/hugetlb_optimize_vmemmap", "1")
    write("/proc/sys/vm/compact_memory", "1")
    write(POOL, "16")
    with open(POOL) as fh:
        allocated = int(fh.read())

    def optimised():
        _, r = query('vmemtrace_hugetlb_folios{device="hugetlb-2048kB",state="optimized"}')
        return sum(float(x["value"][1]) for x in r) == allocated and time.time()

    at = wait("the hugetlb pool in Prometheus", optimised, alive=exporter)
    return {"allocated": allocated, "at": at,
            "series": {name: [[r["metric"], r["value"][1]] for r in
                              query(name + '{device="hugetlb-2048kB"}', at)[1]]
                       for name in HVO_SERIES}}


def hugetlb_freed(exporter):
    """The pool freed: the exporter's series once it has judged the restore."""
    write(POOL, "0")
    def judged():
        return [line for line in get(EXPORTER).splitlines()
                if line.startswith("vmemtrace_check_status{") and 'check="restore"' in line
                and 'device="hugetlb-2048kB"' in line and line.endswith(" 1.0")]

    wait("the freed pool's restore check", judged, alive=exporter)
    return [line for line in get(EXPORTER).splitlines() if 'device="hugetlb-2048kB"' in line]


def main():
    sys.path.insert(0, SRC)
    out = {"cases": {}, "queries": {}, "rules": {}}
    subprocess.run(["ndctl", "disable-namespace", "namespace0.0"], capture_output=True)
    exporter = subprocess.Popen([sys.executable, "-m", "vmemtrace", "exporter"], cwd=SRC,
                                stderr=open("/tmp/exporter.err", "w"))
    prom = start_prometheus(f"{SRC}/dashboards/alerts.yml")
    try:
        wait("the exporter's probes", lambda: "vmemtrace_probe_attached" in get(EXPORTER),
             alive=exporter)
        wait("Prometheus", lambda: query("vmemtrace_build_info")[1])
        out["kprobes_during"] = kprobes()
        from vmemtrace.lab.cases import CASES

        for case in ("mem-2M", "mem-1G"):
            subprocess.run(["ndctl", "disable-namespace", "namespace0.0"], capture_output=True)
            subprocess.run(CASES[case].ndctl_args("namespace0.0"), check=True, capture_output=True)
            expected = expected_saving()
            at = wait(f"{case} in Prometheus", lambda want=expected: saved(want))
            out["cases"][case] = {"expected": expected, "at": at,
                                  "prometheus": query('vmemtrace_vmemmap_saved_bytes', at)[1]}
        out["hugetlb"] = hugetlb_pool(exporter)
        time.sleep(6)  # a few more scrapes, so that increase() over 1m has its two samples
        with open(f"{SRC}/dashboards/vmemtrace.json") as fh:
            dashboard = json.load(fh)
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                status, result = query(expr)
                out["queries"][f"{panel['title']} [{target['refId']}]"] = {
                    "expr": expr, "status": status,
                    "values": [[r["metric"], r["value"][1]] for r in result]}
        for name, expr in alert_rules(f"{SRC}/dashboards/alerts.yml"):
            status, firing = query(expr)
            _, data = query(lhs(expr))
            out["rules"][name] = {"expr": expr, "status": status, "firing": len(firing),
                                  "data": [[r["metric"], r["value"][1]] for r in data]}
        loaded = json.loads(get(f"{PROM}/api/v1/rules"))["data"]["groups"]
        out["rules_loaded"] = {r["name"]: r["health"] for g in loaded for r in g["rules"]}
        promtool = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"],
                                  cwd=f"{SRC}/dashboards", capture_output=True, text=True)
        out["promtool_test"] = promtool.returncode
        out["metrics_text"] = get(EXPORTER)
        out["hugetlb_freed"] = hugetlb_freed(exporter)
    finally:
        exporter.send_signal(signal.SIGTERM)
        out["exporter_exit"] = exporter.wait(timeout=60)
        prom.terminate()
        prom.wait(timeout=60)
    out["kprobes_after"] = kprobes()
    with open("/tmp/exporter.err") as fh:
        out["exporter_stderr"] = fh.read().splitlines()[-5:]
    out["restart"] = restarted_textfile()
    print(json.dumps(out))


def restarted_textfile():
    """A second exporter, started while the mem-1G namespace exists, in textfile mode: it must
    report the device it audited at start, then stop clean."""
    prom_file = "/tmp/textfile/vmemtrace.prom"
    os.makedirs("/tmp/textfile", exist_ok=True)
    exporter = subprocess.Popen([sys.executable, "-m", "vmemtrace", "exporter", "--textfile",
                                 prom_file, "--interval", "1"], cwd=SRC,
                                stderr=open("/tmp/exporter.err", "w"))

    def saved_line():
        with open(prom_file) as fh:
            return [line for line in fh if line.startswith("vmemtrace_vmemmap_saved_bytes{")]

    try:
        lines = wait("the restarted exporter's textfile", saved_line, alive=exporter)
    finally:
        exporter.send_signal(signal.SIGTERM)
        code = exporter.wait(timeout=60)
    return {"lines": lines, "exit": code, "files": sorted(os.listdir("/tmp/textfile")),
            "kprobes_after": kprobes()}


if __name__ == "__main__":
    main()
