"""deploy/'s least privilege on a real kernel: the exporter with only the DaemonSet's capabilities,
under Debian's kernel.perf_event_paranoid (3) and upstream's (2), in a 6.12 guest."""

import json

import pytest
import yaml

from tests.conftest import run_cli
from tests.unit.test_dashboards import ROOT
from vmemtrace.judge import geometry

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def caps_run():
    docs = yaml.safe_load_all((ROOT / "deploy/daemonset.yaml").read_text())
    (ds,) = [d for d in docs if d and d["kind"] == "DaemonSet"]
    (c,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "exporter"]
    caps = ",".join(c["securityContext"]["capabilities"]["add"])
    # two vCPUs: perf buffers are per CPU, and on two the exporter's exceed the locked-memory
    # allowance the DaemonSet's capabilities leave it (below); on one they fit
    res = run_cli("lab", "--kernel", "6.12", "--cpus", "2", "--exec",
                  f"python3 /opt/vmemtrace/tests/lab/guest_caps.py {caps}")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    return {r["paranoid"]: r for r in doc["runs"]}, doc


def test_debian_default_paranoid_needs_more_than_the_daemonset_grants(caps_run):
    runs, doc = caps_run
    assert doc["default_paranoid"] == "3"
    r = runs[3]
    assert r["attached"] is False and r["exporter_exit"] == 0, r  # served, not given up
    (line,) = r["tracing"]
    assert line.startswith('vmemtrace_tracing{reason="') and line.endswith(" 0.0"), line


def test_upstream_paranoid_traces_with_the_daemonset_capabilities(caps_run):
    runs, _ = caps_run
    r = runs[2]
    assert r["privileged"] is True and r["attached"] is True, r
    assert r["tail_reuse"] == ['vmemtrace_check_status{check="tail-reuse",device="dax0.0",status="pass"} 1.0'], r
    # the lab's 3 GiB region at 5 GiB, in 2 MiB compound pages
    saved = geometry.saved_bytes(geometry.RangeShape(5 << 18, 3 << 18, 512))
    (line,) = r["saved"]
    assert line.startswith('vmemtrace_vmemmap_saved_bytes{device="dax0.0"} ') and float(line.split()[-1]) == saved
    assert r["exporter_exit"] == 0 and r["tracing"] == ['vmemtrace_tracing{reason=""} 1.0'], r
    # 1024-page buffers exceed 8 MiB of RLIMIT_MEMLOCK plus 516 KiB per CPU: it says it cut them
    assert "perf buffers cut to" in r["exporter_said"], r
