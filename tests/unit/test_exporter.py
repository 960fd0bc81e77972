"""The exporter's collector on ledgers recorded in lab guests, and its refusals (port in use,
bad certificate, unwritable textfile) through the real command line."""

import re
import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FIXTURES, run_cli
from vmemtrace.errors import VmemtraceError
from vmemtrace.judge import geometry
from vmemtrace.log import logfile
from vmemtrace.output import scrape_server
from vmemtrace.output.exporter import Exporter, parse_listen
from vmemtrace.output.metrics import LedgerCollector, LiveLedger, Snapshot

LOGS = FIXTURES / "events"


def log_of(series_dir: str, case: str) -> list:
    path = next(LOGS.glob(series_dir + "*")) / case
    with open(path) as fh:
        return logfile.read(fh, str(path))


def registry_for(path: Path, devices_now=None) -> CollectorRegistry:
    with open(path) as fh:
        log = logfile.read(fh, str(path))
    devices = [e for e in log if e["type"] == "device"] if devices_now is None else devices_now
    live = judged(e for e in log if e["type"] not in ("device", "lost"))
    live.refresh(devices)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(lambda: Snapshot(live, attached=list(
        f for f, how in log[0]["strategy"].items() if how.startswith("kprobe"))), lambda: devices))
    return reg


def judged(events, devices_now=()) -> LiveLedger:
    """The exporter's live ledger fed a recorded log, as the tracing loop feeds it, and judged."""
    live = LiveLedger(events)
    live.refresh(list(devices_now))
    return live


def samples(reg) -> dict:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def shape_of(log) -> geometry.RangeShape:
    from vmemtrace.judge.ledger import fold

    (d,) = fold(log).devices
    return d.shape(True)


def check_state(s: dict, check: str, device: str = "dax0.0") -> str:
    """The one state of a check's state set that reads 1; every state has its series."""
    states = {dict(k[1])["status"]: v for k, v in s.items() if k[0] == "vmemtrace_check_status"
              and dict(k[1])["check"] == check and dict(k[1])["device"] == device}
    assert set(states) == {"pass", "fail", "skip", "error"}, states
    (current,) = [state for state, v in states.items() if v == 1]
    assert sum(states.values()) == 1
    return current


@pytest.mark.parametrize("case", ["mem-2M.jsonl", "mem-1G.jsonl", "mem-2M.audit.jsonl",
                                  "mem-1G.audit.jsonl"])
def test_saved_bytes_is_what_geometry_expects(case):
    path = next(LOGS.glob("6.12*")) / case
    s = samples(registry_for(path))
    want = geometry.saved_bytes(shape_of(log_of("6.12", case)))
    assert want > 0
    assert s[("vmemtrace_vmemmap_saved_bytes", (("device", "dax0.0"),))] == want
    assert check_state(s, "tail-reuse") == "pass"
    assert s[("vmemtrace_devices", ())] == 1


def test_live_ledger_metrics_6_12_mem_2m():
    s = samples(registry_for(next(LOGS.glob("6.12*")) / "mem-2M.jsonl"))
    dev = (("device", "dax0.0"),)
    assert s[("vmemtrace_vmemmap_bytes", dev)] == 3072 * 4096
    assert s[("vmemtrace_vmemmap_expected_bytes", dev)] == 3072 * 4096
    assert s[("vmemtrace_vmemmap_naive_bytes", dev)] == 12288 * 4096
    assert s[("vmemtrace_struct_pages_initialized", dev)] == 196608
    assert s[("vmemtrace_struct_pages_initialized_naive", dev)] == 786432
    # the saving is the difference of the two byte series, as the dashboard shows it
    assert s[("vmemtrace_vmemmap_saved_bytes", dev)] == (12288 - 3072) * 4096
    assert check_state(s, "no-false-optimisation") == "skip"
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
        log = logfile.read(fh, str(path))
    reg = CollectorRegistry(auto_describe=False)
    live = judged(log)
    reg.register(LedgerCollector(lambda: Snapshot(live, attached=["memmap_init_zone_device"]),
                                 lambda: []))
    attached = {dict(k[1])["function"]: v for k, v in samples(reg).items()
                if k[0] == "vmemtrace_probe_attached"}
    assert attached["vmemmap_populate_address"] == 0 and attached["memmap_init_zone_device"] == 1


def test_walk_strategy_counts_as_seen_on_6_1():
    s = samples(registry_for(next(LOGS.glob("6.1.*")) / "mem-2M.jsonl"))
    key = ("vmemtrace_probe_attached", (("function", "vmemmap_populate_address"), ("strategy", "walk")))
    assert s[key] == 1
    assert s[("vmemtrace_vmemmap_bytes", (("device", "dax0.0"),))] == 3072 * 4096


def test_audited_device_has_no_observed_init_and_removed_devices_vanish():
    path = next(LOGS.glob("6.12*")) / "mem-2M.audit.jsonl"
    s = samples(registry_for(path))
    dev = (("device", "dax0.0"),)
    assert ("vmemtrace_struct_pages_initialized", dev) not in s
    assert s[("vmemtrace_struct_pages_initialized_expected", dev)] == 196608
    assert check_state(s, "init-skip") == "skip"
    gone = samples(registry_for(path, devices_now=[]))
    assert gone[("vmemtrace_devices", ())] == 0
    assert not [k for k in gone if k[0].startswith("vmemtrace_vmemmap")]


def test_before_the_probes_attach_only_build_info_and_the_stamp():
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(lambda: Snapshot(LiveLedger()), lambda: []))
    assert {k[0] for k in samples(reg)} == {"vmemtrace_build_info",
                                            "vmemtrace_updated_timestamp_seconds"}


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
    ex.snap = Snapshot(judged(log_of("6.12", "mem-1G.jsonl")))
    out = tmp_path / "vmemtrace.prom"
    ex.write_textfile(str(out))
    fams = {f.name for f in text_string_to_metric_families(out.read_text())}
    assert {"vmemtrace_build_info", "vmemtrace_probe_attached", "vmemtrace_memmap_init_seconds",
            "vmemtrace_updated_timestamp_seconds"} <= fams
    assert [p.name for p in tmp_path.iterdir()] == ["vmemtrace.prom"]  # no temporary left
    (written,) = [s.value for f in text_string_to_metric_families(out.read_text())
                  for s in f.samples if s.name == "vmemtrace_updated_timestamp_seconds"]
    assert abs(written - time.time()) < 60


@pytest.mark.parametrize("args,message", [
    (["exporter", "--interval", "nan", "--textfile", "x.prom"], "--interval nan: must be a positive"),
    (["exporter", "--interval", "-1", "--textfile", "x.prom"], "--interval -1.0: must be a positive"),
    (["stats", "inf"], "INTERVAL inf: must be a positive"),
])
def test_intervals_are_validated(args, message):
    res = run_cli(*args)
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1


def test_a_host_that_cannot_trace_is_served_not_given_up(tmp_path):
    """This host cannot trace (no CONFIG_KPROBES): the exporter keeps its textfile current with
    vmemtrace_tracing 0 and the reason (the audit of existing devices beside it), tries again on
    SIGHUP, and exits 0 on SIGTERM (exit 2 is for bad configuration only)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "vmemtrace.prom"
    proc = subprocess.Popen([sys.executable, "-m", "vmemtrace", "exporter", "--textfile", str(out),
                             "--interval", "0.5"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        text = out.read_text()
        (line,) = [x for x in text.splitlines() if x.startswith("vmemtrace_tracing{")]
        # A short code, the sentence in the log: this host has no kprobes, or is not root.
        assert re.fullmatch(r'vmemtrace_tracing\{reason="[a-z0-9_]+"\} 0\.0', line), line
        # BCC's version where the audit's header has none; no program reported while none is
        # loaded; the process's own metrics under the names node_exporter's users know.
        (info,) = [x for x in text.splitlines() if x.startswith("vmemtrace_build_info{")]
        assert 'bcc=""' not in info and re.search(r'bcc="[0-9]', info), info
        assert "vmemtrace_bpf_program_info" not in text
        assert "\nprocess_start_time_seconds " in text and "vmemtrace_process_" not in text
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(2)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGHUP: trying to attach again" in err and "Traceback" not in err
    assert err.count("not tracing: cannot trace") == 2


def test_not_tracing_is_served_where_not_even_the_kernel_can_be_read():
    """Hidden /proc/kallsyms (systemd's ProtectKernelTunables=): no audit, not even a header,
    yet the reason is served, so that its alert can fire; nothing is claimed beyond it."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(lambda: Snapshot(LiveLedger([]), not_tracing="kallsyms_unreadable"),
                                 lambda: []))
    s = samples(reg)
    assert s[("vmemtrace_tracing", (("reason", "kallsyms_unreadable"),))] == 0
    assert {name for name, _ in s} == {"vmemtrace_build_info", "vmemtrace_updated_timestamp_seconds",
                                       "vmemtrace_tracing"}
    still_compiling = CollectorRegistry(auto_describe=False)
    still_compiling.register(LedgerCollector(lambda: Snapshot(LiveLedger([])), lambda: []))
    assert "vmemtrace_tracing" not in {name for name, _ in samples(still_compiling)}


@pytest.fixture
def served():
    """The exporter's real server on a free loopback port, serving a recorded 6.12 log."""
    ex = Exporter()
    ex.snap = Snapshot(judged(log_of("6.12", "mem-2M.jsonl")))
    host, port = ex.serve("127.0.0.1:0", None, None)
    yield ex, port
    ex.close()


def http_get(port, path, timeout=5):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    res = conn.getresponse()
    out = res.status, res.read().decode()
    conn.close()
    return out


def test_only_metrics_is_served_and_name_filters(served):
    _, port = served
    status, body = http_get(port, "/metrics")
    assert status == 200 and "vmemtrace_vmemmap_bytes" in body
    assert http_get(port, "/")[0] == 404 and http_get(port, "/metricsx")[0] == 404
    status, body = http_get(port, "/metrics?name[]=vmemtrace_devices&name[]=vmemtrace_build_info")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert status == 200 and names == {"vmemtrace_devices", "vmemtrace_build_info"}


def test_openmetrics_is_served_when_asked_for(served):
    import http.client

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

    _, port = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    res = conn.getresponse()
    body = res.read().decode()
    conn.close()
    assert res.getheader("Content-Type").startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert "vmemtrace_vmemmap_bytes" in {f.name for f in om_families(body)}
    plain_type = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    plain_type.request("GET", "/metrics")
    assert plain_type.getresponse().getheader("Content-Type").startswith("text/plain; version=0.0.4")
    plain_type.close()


def _tls_pair(tmp_path):
    import subprocess

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _scrape_times(port, cert, n=40):
    """n scrapes one after the other, each on a new connection: their durations (s)."""
    import http.client
    import ssl
    import time

    times = []
    for _ in range(n):
        t = time.monotonic()
        if cert:
            ctx = ssl.create_default_context(cafile=str(cert))
            ctx.check_hostname = False
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        res = conn.getresponse()
        assert res.status == 200 and b"vmemtrace_vmemmap_bytes" in res.read()
        conn.close()
        times.append(time.monotonic() - t)
    return sorted(times)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("idle,slow", [(50, 0), (0, 16), (300, 0)],
                         ids=["50-idle", "16-slowloris", "300-idle"])
def test_no_client_can_stall_a_scrape(tmp_path, tls, idle, slow):
    """While clients connect and say nothing (over TLS: never start the handshake) or send a
    request a byte at a time, every scrape answers, none waiting for them."""
    import threading

    cert, key = _tls_pair(tmp_path) if tls else (None, None)
    ex = Exporter()
    ex.snap = Snapshot(judged(log_of("6.12", "mem-2M.jsonl")))
    _, port = ex.serve("127.0.0.1:0", cert and str(cert), key and str(key))
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    stop = threading.Event()

    def trickle():
        s = socket.create_connection(("127.0.0.1", port))
        held.append(s)
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            if stop.wait(0.1):
                return
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return

    slowloris = [threading.Thread(target=trickle, daemon=True) for _ in range(slow)]
    for t in slowloris:
        t.start()
    try:
        times = _scrape_times(port, cert)
        # A scrape stuck behind a held connection waits out the server's DEADLINE (5 s); half of
        # it tells the two apart on a busy machine too (a lab guest beside the unit tests).
        assert times[int(0.99 * len(times))] < scrape_server.DEADLINE / 2, times
    finally:
        stop.set()
        for s in held:
            s.close()
        ex.close()


def test_a_client_past_its_deadline_is_dropped(served, monkeypatch):
    """One deadline for the whole connection: a client still sending after it is closed."""
    from vmemtrace.output import scrape_server

    _, port = served
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metr")
    s.settimeout(scrape_server.DEADLINE + 3)
    assert s.recv(100) == b""  # closed by the server, no reply
    s.close()


def test_an_idle_tls_client_does_not_block_the_accept_loop(tmp_path):
    """The handshake runs in the connection's worker: a client that connects over TLS and never
    starts its handshake used to block every other scrape until it left."""
    import ssl
    import subprocess

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ex = Exporter()
    ex.snap = Snapshot(judged(log_of("6.12", "mem-2M.jsonl")))
    _, port = ex.serve("127.0.0.1:0", str(cert), str(key))
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        import http.client
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        idle.close()
        ex.close()


def test_devices_audited_before_tracing_are_not_an_inconsistent_log():
    """The exporter walks the devices that exist, then traces: their walks have no range. Only
    those marked as such; a walk of no range anywhere else is an edited log."""
    trace = log_of("6.12", "mem-2M.jsonl")
    audit = [dict(e) for e in log_of("6.12", "mem-1G.audit.jsonl")[1:]]
    walk = next(e for e in audit if e["type"] == "walk")
    walk["existing"] = True
    from vmemtrace.judge.ledger import fold
    assert fold([trace[0]] + audit + trace[1:]).inconsistent == []
    walk["existing"] = False
    assert "where no range was seen" in " ".join(fold([trace[0]] + audit + trace[1:]).inconsistent)


def test_a_stop_during_the_textfile_write_leaves_no_temporary(tmp_path):
    """SIGTERM arriving while the metrics are being written (here: from inside a collector) is
    held until the rename is done, then delivered: the whole file, and nothing else, is left."""
    import os
    import signal

    class Stopper:
        def collect(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return []

    def stop(signum, frame):
        raise KeyboardInterrupt

    ex = Exporter()
    ex.snap = Snapshot(judged(log_of("6.12", "mem-1G.jsonl")))
    ex.registry.register(Stopper())
    out = tmp_path / "vmemtrace.prom"
    old = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.write_textfile(str(out))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert [p.name for p in tmp_path.iterdir()] == ["vmemtrace.prom"]
    assert "vmemtrace_build_info" in out.read_text()


def _cycles(n: int) -> list:
    """A real 6.12 mem-2M recording's namespace created n times at the same place, as an
    exporter sees create/destroy cycles: one header, then each creation's events again (fresh
    dicts, as the tracer makes them)."""
    import copy

    log = log_of("6.12", "mem-2M.jsonl")
    body = [e for e in log[1:] if e["type"] not in ("device", "lost", "hits", "command", "vmstat")]
    out = [log[0]]
    for _ in range(n):
        out += copy.deepcopy(body)
    return out, [e for e in log if e["type"] == "device"]


def test_retire_keeps_one_creation_of_a_re_created_range():
    """A range re-created at the same start replaces the old one (ledger.Fold): retire() drops
    the old one, and the document is the same as after one creation."""
    from vmemtrace.judge.ledger import fold
    from vmemtrace.judge.verdict import evaluate

    once, devices = _cycles(1)
    many, _ = _cycles(5)
    live = LiveLedger(many)
    assert len(live.fold.made) == 5
    live.retire(devices)
    assert len(live.fold.made) == 1 and live.absent == set() and live.retired.count == 4
    live.refresh(devices)
    assert live.doc == evaluate(fold(once + devices))


def test_retire_drops_a_gone_range_only_at_the_second_look():
    log, _ = _cycles(1)
    live = LiveLedger(log)
    live.retire([])
    assert len(live.fold.made) == 1 and len(live.absent) == 1  # one interval's grace: sysfs may lag
    live.retire([])
    assert live.fold.made == [] and live.fold.ranges == {} and live.retired.count == 1


def test_the_document_is_made_again_only_when_something_changed():
    """A scrape reads the document the tracing loop made: it is made again once new events
    are in and a poll was quiet, or when the devices change; otherwise it is the same object."""
    once, devices = _cycles(1)
    live = LiveLedger(once[:1])
    live.refresh([])
    first = live.doc
    assert first["devices"] == []
    for ev in once[1:]:
        live.append(ev)
    live.refresh([], quiet=False)  # events still coming: not judged yet
    assert live.doc is first
    live.refresh([], quiet=True)
    second = live.doc
    assert second is not first and len(second["devices"]) == 1
    live.refresh([], quiet=True)
    assert live.doc is second  # nothing new
    live.refresh(devices, quiet=False)  # the dax device appeared in sysfs
    assert live.doc is not second and live.doc["devices"][0]["chardev"] == "dax0.0"


def test_a_view_leaves_the_fold_as_it_was():
    """Fold.view() finishes copies: judging twice, with different devices, gives what one
    fold of the same events with those devices gives, and the fold goes on folding."""
    from vmemtrace.judge.ledger import Fold, fold
    from vmemtrace.judge.verdict import evaluate

    once, devices = _cycles(1)
    f = Fold(once[0])
    for ev in once[1:]:
        f.add(ev)
    assert evaluate(f.view(devices)) == evaluate(fold(once + devices))
    assert evaluate(f.view([])) == evaluate(fold(once))
    assert evaluate(f.view(devices)) == evaluate(fold(once + devices))


def test_exporter_memory_follows_the_devices_that_exist(monkeypatch):
    """Twenty create/destroy cycles with a retire after each: the fold holds one creation,
    scrapes report the device as after one creation, and the init histogram, a counter, still
    counts all twenty ranges."""
    import copy

    from vmemtrace.kernel import daxdev
    from vmemtrace.output.exporter import Exporter

    once, devices = _cycles(1)
    monkeypatch.setattr(daxdev, "inventory", lambda: [dict(d) for d in devices])
    exp = Exporter()
    live = LiveLedger(once[:1])
    exp.snap = Snapshot(live, attached=list(f for f, how in once[0]["strategy"].items()
                                            if how.startswith("kprobe")))
    body = once[1:]
    for _ in range(20):
        for ev in copy.deepcopy(body):
            live.append(ev)
        live.retire(daxdev.inventory())
    live.refresh(exp.devices_now())
    assert len(live.fold.made) == 1
    s = samples(exp.registry)
    assert s[("vmemtrace_memmap_init_seconds_count", ())] == 20
    assert s[("vmemtrace_vmemmap_bytes", (("device", "dax0.0"),))] == 3072 * 4096
    monkeypatch.setattr(daxdev, "inventory", lambda: [])  # destroyed
    live.retire([])
    live.retire([])
    live.refresh([])
    assert live.fold.made == [] and live.doc["devices"] == []
    assert samples(exp.registry)[("vmemtrace_memmap_init_seconds_count", ())] == 20


@pytest.mark.parametrize("args,message", [
    (["--listen", "127.0.0.1:\u0663"], "expected HOST:PORT"),
    (["--textfile", ""], "--textfile: an empty path"),
])
def test_option_values_are_checked_before_anything(args, message):
    res = run_cli("exporter", *args, timeout=60)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
