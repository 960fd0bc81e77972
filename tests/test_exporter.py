"""The exporter's collector on ledgers recorded in lab guests, and its refusals (port in use,
bad certificate, unwritable textfile) through the real command line."""

import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FIXTURES, run_cli
from vmemtrace import events, geometry
from vmemtrace.errors import VmemtraceError
from vmemtrace.exporter import LedgerCollector, Snapshot
from vmemtrace.serve import Exporter, parse_listen

LOGS = FIXTURES / "events"


def log_of(series_dir: str, case: str) -> list:
    path = next(LOGS.glob(series_dir + "*")) / case
    with open(path) as fh:
        return events.read(fh, str(path))


def registry_for(path: Path, devices_now=None) -> CollectorRegistry:
    with open(path) as fh:
        log = events.read(fh, str(path))
    live = [e for e in log if e["type"] not in ("device", "lost")]
    devices = [e for e in log if e["type"] == "device"] if devices_now is None else devices_now
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(lambda: Snapshot(live, attached=list(
        f for f, how in log[0]["strategy"].items() if how.startswith("kprobe"))), lambda: devices))
    return reg


def samples(reg) -> dict:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def shape_of(log) -> geometry.RangeShape:
    from vmemtrace.ledger import fold

    (d,) = fold(log).devices
    return d.shape(True)


@pytest.mark.parametrize("case", ["mem-2M.jsonl", "mem-1G.jsonl", "mem-2M.audit.jsonl",
                                  "mem-1G.audit.jsonl"])
def test_saved_bytes_is_what_geometry_expects(case):
    path = next(LOGS.glob("6.12*")) / case
    s = samples(registry_for(path))
    want = geometry.saved_bytes(shape_of(log_of("6.12", case)))
    assert want > 0
    assert s[("vmemtrace_vmemmap_saved_bytes", (("device", "dax0.0"),))] == want
    assert s[("vmemtrace_check_status", (("check", "tail-reuse"), ("device", "dax0.0")))] == 1
    assert s[("vmemtrace_devices", ())] == 1


def test_live_ledger_metrics_6_12_mem_2m():
    s = samples(registry_for(next(LOGS.glob("6.12*")) / "mem-2M.jsonl"))
    dev = (("device", "dax0.0"),)
    assert s[("vmemtrace_vmemmap_pages", dev + (("kind", "observed"),))] == 3072
    assert s[("vmemtrace_vmemmap_pages", dev + (("kind", "naive"),))] == 12288
    assert s[("vmemtrace_struct_pages_initialized", dev + (("kind", "observed"),))] == 196608
    assert s[("vmemtrace_check_status", (("check", "no-false-optimisation"),) + dev)] == -1
    assert s[("vmemtrace_memmap_init_seconds_count", ())] == 1
    assert s[("vmemtrace_events_lost_total", ())] == 0
    attached = {dict(k[1])["function"]: v for k, v in s.items() if k[0] == "vmemtrace_probe_attached"}
    assert attached["vmemmap_populate_address"] == 1 and attached["__init_zone_device_page"] == 0
    # seen through its fallback __populate_section_memmap, which is attached
    assert attached["vmemmap_populate_compound_pages"] == 1
    (build,) = [k for k in s if k[0] == "vmemtrace_build_info"]
    assert dict(build[1])["kernel"] == "6.12.117+deb12-amd64"


def test_a_probe_planned_but_not_attached_reads_0():
    path = next(LOGS.glob("6.12*")) / "mem-2M.jsonl"
    with open(path) as fh:
        log = events.read(fh, str(path))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(lambda: Snapshot(log, attached=["memmap_init_zone_device"]),
                                 lambda: []))
    attached = {dict(k[1])["function"]: v for k, v in samples(reg).items()
                if k[0] == "vmemtrace_probe_attached"}
    assert attached["vmemmap_populate_address"] == 0 and attached["memmap_init_zone_device"] == 1


def test_walk_strategy_counts_as_seen_on_6_1():
    s = samples(registry_for(next(LOGS.glob("6.1.*")) / "mem-2M.jsonl"))
    key = ("vmemtrace_probe_attached", (("function", "vmemmap_populate_address"), ("strategy", "walk")))
    assert s[key] == 1
    assert s[("vmemtrace_vmemmap_pages", (("device", "dax0.0"), ("kind", "observed")))] == 3072


def test_audited_device_has_no_observed_init_and_removed_devices_vanish():
    path = next(LOGS.glob("6.12*")) / "mem-2M.audit.jsonl"
    s = samples(registry_for(path))
    dev = (("device", "dax0.0"),)
    assert ("vmemtrace_struct_pages_initialized", dev + (("kind", "observed"),)) not in s
    assert s[("vmemtrace_check_status", (("check", "init-skip"),) + dev)] == -1
    gone = samples(registry_for(path, devices_now=[]))
    assert gone[("vmemtrace_devices", ())] == 0
    assert not [k for k in gone if k[0] == "vmemtrace_vmemmap_pages"]


def test_before_the_probes_attach_only_build_info():
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(lambda: Snapshot([]), lambda: []))
    assert {k[0] for k in samples(reg)} == {"vmemtrace_build_info"}


@pytest.mark.parametrize("text,want", [("127.0.0.1:9477", ("127.0.0.1", 9477)),
                                       (":9100", ("0.0.0.0", 9100)),
                                       ("[::1]:9477", ("::1", 9477))])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9477", "host:", "host:99999", "host:http"])
def test_parse_listen_refuses(text):
    with pytest.raises(VmemtraceError, match="expected HOST:PORT"):
        parse_listen(text)


def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def one_line_exit_2(res):
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    return res.stderr.strip()


def test_port_in_use_is_one_line():
    s = busy_port()
    try:
        port = s.getsockname()[1]
        err = one_line_exit_2(run_cli("exporter", "--listen", f"127.0.0.1:{port}", timeout=60))
        assert err == f"vmemtrace: 127.0.0.1:{port} is in use (another exporter running?)"
    finally:
        s.close()


def test_bad_certificate_is_one_line(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate\n")
    (tmp_path / "k.pem").write_text("not a key\n")
    err = one_line_exit_2(run_cli("exporter", "--listen", "127.0.0.1:0", "--tls-cert",
                                  str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem"),
                                  timeout=60))
    assert err.startswith("vmemtrace: bad TLS certificate or key")
    err = one_line_exit_2(run_cli("exporter", "--tls-cert", str(tmp_path / "no.pem"), "--tls-key",
                                  str(tmp_path / "k.pem"), timeout=60))
    assert err == f"vmemtrace: cannot read {tmp_path}/no.pem: No such file or directory"
    err = one_line_exit_2(run_cli("exporter", "--tls-cert", str(tmp_path / "c.pem"), timeout=60))
    assert err == "vmemtrace: --tls-cert and --tls-key go together"


def test_unwritable_textfile_is_one_line(tmp_path):
    err = one_line_exit_2(run_cli("exporter", "--textfile", str(tmp_path / "no/such/dir/v.prom"),
                                  timeout=60))
    assert err.startswith(f"vmemtrace: cannot write {tmp_path}/no/such/dir/v.prom")
    err = one_line_exit_2(run_cli("exporter", "--textfile", str(tmp_path / "v.txt"), timeout=60))
    assert "only reads *.prom" in err


def test_textfile_is_written_whole(tmp_path):
    ex = Exporter()
    ex.snap.log = log_of("6.12", "mem-1G.jsonl")
    out = tmp_path / "vmemtrace.prom"
    ex.write_textfile(str(out))
    fams = {f.name for f in text_string_to_metric_families(out.read_text())}
    assert {"vmemtrace_build_info", "vmemtrace_probe_attached", "vmemtrace_memmap_init_seconds"} <= fams
    assert [p.name for p in tmp_path.iterdir()] == ["vmemtrace.prom"]  # no temporary left


@pytest.mark.parametrize("args,message", [
    (["exporter", "--interval", "nan", "--textfile", "x.prom"], "--interval nan: must be a positive"),
    (["exporter", "--interval", "-1", "--textfile", "x.prom"], "--interval -1.0: must be a positive"),
    (["stats", "inf"], "INTERVAL inf: must be a positive"),
])
def test_intervals_are_validated(args, message):
    res = run_cli(*args)
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1


def test_a_failed_start_leaves_no_textfile(tmp_path):
    """This host cannot trace: the exporter fails after checking the textfile, and must not
    leave a .prom behind that says it is up (vmemtrace_build_info 1)."""
    out = tmp_path / "vmemtrace.prom"
    res = run_cli("exporter", "--textfile", str(out))
    assert res.returncode == 2 and "cannot trace" in res.stderr
    assert list(tmp_path.iterdir()) == []
