"""dashboards/ and deploy/: the alert rules under promtool, the dashboard against Grafana's
schema (grafana-foundation-sdk, generated from Grafana 11.6's kinds), every query naming only
metrics the exporter really exports, and the systemd unit under systemd-analyze."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES
from vmemtrace.output.manual import RUNBOOK

ROOT = Path(__file__).resolve().parents[2]
DASH = ROOT / "dashboards"
GRAFANA_SCHEMA = 39  # Grafana 10.4 - 11.x
BUILTIN = {"up"}  # Prometheus' own series


def dashboard():
    return json.loads((DASH / "vmemtrace.json").read_text())


def dashboard_exprs():
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def rule_exprs():
    doc = yaml.safe_load((DASH / "alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def promtool(*args, cwd=DASH):
    assert shutil.which("promtool"), "promtool comes with Debian's prometheus (scripts/install.sh)"
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)


def test_promtool_checks_and_tests_the_rules():
    res = promtool("check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout
    res = promtool("test", "rules", "alerts_test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_catches_a_broken_rule(tmp_path):
    """The rule tests can fail: with the check rule inverted they must."""
    shutil.copy(DASH / "alerts_test.yml", tmp_path)
    (tmp_path / "alerts.yml").write_text((DASH / "alerts.yml").read_text().replace(
        'vmemtrace_check_status{status="fail"} == 1', 'vmemtrace_check_status{status="pass"} == 1'))
    res = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert res.returncode != 0 and "VmemtraceCheckFailed" in res.stdout + res.stderr


def test_scrape_config_example_is_valid(tmp_path):
    cfg = yaml.safe_load((DASH / "prometheus-scrape.yml").read_text())
    cfg["rule_files"] = [str(DASH / "alerts.yml")]
    (tmp_path / "p.yml").write_text(yaml.safe_dump(cfg))
    res = promtool("check", "config", str(tmp_path / "p.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_kubernetes_scrape_config_matches_the_daemonset():
    """Debian's promtool has no Kubernetes discovery to check it with: the job must keep the
    DaemonSet's pods by their label and TLS port name, and label them job="vmemtrace", the job
    the alerts (VmemtraceExporterDown) name."""
    (job,) = yaml.safe_load((DASH / "prometheus-scrape-kubernetes.yml").read_text())["scrape_configs"]
    _, ds = daemonset()
    pod = ds["spec"]["template"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    label, port = keep["regex"].split(";")
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == label and port in ports
    assert job["scheme"] == "https"
    assert {"target_label": "job", "replacement": "vmemtrace"} in job["relabel_configs"]
    assert 'up{job="vmemtrace"}' in (DASH / "alerts.yml").read_text()


def lost_in(raw, again, path="$"):
    """Paths of raw whose key or value did not survive the round trip (defaults the SDK adds
    are fine: Grafana fills them in the same way)."""
    if isinstance(raw, dict):
        if not isinstance(again, dict):
            return [path]
        return [p for k, v in raw.items()
                for p in ([f"{path}.{k}"] if k not in again else lost_in(v, again[k], f"{path}.{k}"))]
    if isinstance(raw, list):
        if not isinstance(again, list) or len(raw) != len(again):
            return [path]
        return [p for i, (a, b) in enumerate(zip(raw, again)) for p in lost_in(a, b, f"{path}[{i}]")]
    return [] if raw == again else [path]


def grafana_round_trip(raw):
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and targets decoded by their plugin types
    decoded = Dashboard.from_json(raw)
    return decoded, json.loads(json.dumps(decoded, default=lambda o: o.to_json()))


def test_dashboard_round_trips_through_grafana_schema():
    """Decode with Grafana 11.6's dashboard model and encode again: a field the schema does
    not know is dropped on the way, a wrong type raises; so nothing lost means every field of
    the dashboard, its variables, panels, options and targets is one Grafana knows. (The
    export envelope, __inputs and __requires, is Grafana's import format, not the model.)"""
    raw = {k: v for k, v in dashboard().items() if not k.startswith("__")}
    decoded, again = grafana_round_trip(raw)
    assert decoded.schema_version == GRAFANA_SCHEMA
    assert lost_in(raw, again) == []


def test_round_trip_catches_fields_grafana_does_not_know():
    raw = {k: v for k, v in dashboard().items() if not k.startswith("__")}
    raw["templating"]["list"][1]["definitionn"] = "typo"
    raw["panels"][0]["gridPos"]["width"] = 3
    _, again = grafana_round_trip(raw)
    assert lost_in(raw, again) == ["$.templating.list[1].definitionn", "$.panels[0].gridPos.width"]


def test_dashboard_variables_and_layout():
    d = dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    # no two panels overlap on the 24-column grid
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_dashboard_is_exportable_and_provisionable():
    """Import asks for the one input the dashboard uses; __requires names every panel type in
    it; the provisioning file is a file provider Grafana's schema accepts."""
    d = dashboard()
    (inp,) = d["__inputs"]
    assert inp["type"] == "datasource" and inp["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "${" + inp["name"] + "}"
    required = {(r["type"], r["id"]) for r in d["__requires"]}
    assert {("panel", p["type"]) for p in d["panels"]} | {("datasource", "prometheus"),
                                                          ("grafana", "grafana")} == required
    prov = yaml.safe_load((DASH / "grafana-provisioning.yml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_every_alert_has_a_runbook_section():
    runbook = (ROOT / "docs/runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-"))
               for h in re.findall(r"^## (.+)$", runbook, re.M)}
    rules = yaml.safe_load((DASH / "alerts.yml").read_text())["groups"][0]["rules"]
    for r in rules:
        url = r["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        # where the .deb installs it, uncompressed (tests/unit/test_package.py)
        assert page == f"file://{RUNBOOK}" and anchor == r["alert"].lower(), url
        assert anchor in anchors, r["alert"]


def metric_names(expr):
    names = set(re.findall(r"\b(vmemtrace_[a-z_]+|up)\b", expr))
    return names


@pytest.fixture(scope="module")
def exposition():
    """The exporter's real output for ledgers recorded in 6.12 guests: mem-2M, and a pool of
    2 MiB hugetlb pages (HVO on)."""
    from prometheus_client import generate_latest

    from tests.unit.test_exporter import registry_for
    from tests.unit.test_hvo import load
    from tests.unit.test_hvo_exporter import registry
    dax = registry_for(FIXTURES / "events/6.12.117+deb12-amd64/mem-2M.jsonl")
    return (generate_latest(dax) + generate_latest(registry(load("6.12", "hvo-2M")))).decode()


def test_every_query_names_only_exported_metrics(exposition):
    exported = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M))
    series = {name for name, kind in exported}
    series |= {f"{n}_total" for n, k in exported if k == "counter"}
    series |= {f"{n}_{s}" for n, k in exported if k == "histogram" for s in ("bucket", "sum", "count")}
    for expr in dashboard_exprs() + rule_exprs():
        for name in metric_names(expr) - BUILTIN:
            assert name in series, (name, expr)


def test_systemd_unit_verifies_and_is_sandboxed(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze missing (systemd is part of every Debian host)")
    unit = (ROOT / "deploy/vmemtrace-exporter.service").read_text()
    exe = Path(sys.executable).parent / "vmemtrace"
    (tmp_path / "vmemtrace-exporter.service").write_text(
        unit.replace("/usr/bin/vmemtrace", str(exe)))
    # Its Documentation= names the man page: systemd-analyze runs man for it, here on man/.
    (tmp_path / "man/man8").mkdir(parents=True)
    for page in (ROOT / "man").glob("*.8"):
        (tmp_path / "man/man8" / page.name).symlink_to(page)
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "vmemtrace-exporter.service")],
                         capture_output=True, text=True,
                         env={**os.environ, "MANPATH": str(tmp_path / "man")})
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert f"file://{RUNBOOK}" in unit.split("Documentation=", 1)[1].splitlines()[0]
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=40",
                          str(tmp_path / "vmemtrace-exporter.service")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "Overall exposure level" in res.stdout


def daemonset():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/daemonset.yaml").read_text()) if d]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return docs, ds


def test_daemonset_least_privilege():
    """Kernel capabilities (no user namespace), no SYS_ADMIN, none of what Kubernetes >= 1.30
    rejects (procMount Unmasked without hostUsers: false), the real kcore named, metrics only on
    loopback behind the TLS proxy, and no image by :latest."""
    docs, ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    c = containers["exporter"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["BPF", "PERFMON", "SYSLOG", "SYS_RAWIO"]
    assert "procMount" not in sc and pod.get("hostUsers", True) is True
    assert sc["seccompProfile"]["type"] != "Unconfined"
    unit = (ROOT / "deploy/vmemtrace-exporter.service").read_text()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split()
    assert {"CAP_" + cap for cap in sc["capabilities"]["add"]} <= set(bounding)
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    kcore_dir = env["VMEMTRACE_KCORE"].rsplit("/", 1)[0]
    assert host[mounts[kcore_dir]] == "/proc"
    assert c["args"][:3] == ["exporter", "--listen", "127.0.0.1:9477"] and "ports" not in c
    proxy = containers["kube-rbac-proxy"]
    assert "--upstream=http://127.0.0.1:9477/" in proxy["args"]
    for each in pod["containers"]:
        assert ":" in each["image"].rsplit("/", 1)[-1] and not each["image"].endswith(":latest")
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_daemonset_is_valid_kubernetes(version):
    res = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                          "-k", version, str(ROOT / "deploy/daemonset.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("passed") == 4, res.stdout


def test_containerfile_installs_the_deb_and_runs_what_the_daemonset_runs():
    """deploy/Containerfile is not built here (no registry for a base image: README, "Container
    image"); what it says must agree with the .deb and the DaemonSet."""
    text = (ROOT / "deploy/Containerfile").read_text()
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert f"ARG VERSION={version}" in text
    changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"vmemtrace ({version})"), changelog
    assert re.search(r"apt-get install .*\\\n\s+/tmp/vmemtrace_\$\{VERSION\}_all.deb", text)
    assert "pip" not in text.split("FROM", 1)[1]
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    _, ds = daemonset()
    (c,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "exporter"]
    assert entry == ["/usr/bin/vmemtrace"] and cmd == c["args"]
    assert c["image"].endswith(":" + version)
