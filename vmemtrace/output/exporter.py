"""`vmemtrace exporter`: serve the collector over HTTP(S), or keep a node_exporter textfile.

The order matters: everything the user got wrong (address, port in use, certificate, textfile)
fails before the BPF compile; then the probes attach, then the devices that already exist are
audited (anything created later is traced), then scrapes see both.
"""

import contextlib
import errno
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from vmemtrace.errors import VmemtraceError, stops_held, terminate_on_sigterm
from vmemtrace.kernel import daxdev, environment, hugetlb
from vmemtrace.log import events
from vmemtrace.output.metrics import LedgerCollector, LiveLedger, Snapshot
from vmemtrace.output.scrape_server import ScrapeServer

DEFAULT_LISTEN = "127.0.0.1:9477"


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all addresses: the user's explicit choice)."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise VmemtraceError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class Only:
    """The families of a registry that Prometheus' name[] asks for, by family or sample name
    (prometheus-client's restricted_registry needs collectors that describe themselves; ours
    reads the ledger at scrape time and does not)."""

    def __init__(self, registry, names):
        self.registry, self.names = registry, names

    def collect(self):
        for family in self.registry.collect():
            if family.name in self.names or any(s.name in self.names for s in family.samples):
                yield family


class Exporter:
    """Holds the snapshot the collector reads; the tracing loop updates it."""

    def __init__(self, only=()):
        """only (-d): report these devices (by chardev or namespace) and no other, whenever
        they exist."""
        self.snap = Snapshot(LiveLedger())
        self.registry = CollectorRegistry(auto_describe=False)
        self.only = tuple(only)
        self.registry.register(LedgerCollector(self.snapshot, self.devices_now,
                                               environment.bcc_version(), self.only))
        # process_*, as node_exporter and ebpf_exporter name their own process's metrics.
        ProcessCollector(registry=self.registry)
        self.server = None

    def devices_now(self) -> list:
        return [d for d in daxdev.inventory() if events.named(d, self.only)]

    def render(self, names: set[str] | None, accept: str = "") -> tuple[bytes, str]:
        """The page a scrape gets (prometheus' name[] filter: only those families), in the
        text format or, where the Accept header asks for it, OpenMetrics."""
        encoder, kind = choose_encoder(accept)
        return encoder(Only(self.registry, names) if names else self.registry), kind

    def snapshot(self) -> Snapshot:
        s = self.snap
        return Snapshot(s.live, s.lost, dict(s.errors), list(s.attached), s.not_tracing,
                        s.updated)

    def serve(self, listen: str, cert: str | None, key: str | None) -> tuple[str, int]:
        host, port = parse_listen(listen)
        if bool(cert) != bool(key):
            raise VmemtraceError("--tls-cert and --tls-key go together")
        context = None
        if cert:
            for path in (cert, key):
                try:
                    open(path, "rb").close()
                except OSError as e:
                    raise VmemtraceError(f"cannot read {path}: {e.strerror}") from None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as e:
                raise VmemtraceError(f"bad TLS certificate or key ({cert}, {key}): "
                                     f"{e.reason or e.strerror or e}") from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=1024)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise VmemtraceError(f"{host}:{port} is in use (another exporter running?)") from None
            raise VmemtraceError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.server = ScrapeServer(sock, self.render, context)
        self.server.start()
        return host, self.server.server_address[1]

    @staticmethod
    def check_textfile(path: str) -> None:
        """Fail now, before the compile, when the textfile cannot be written, without writing
        it: a start that fails later must not leave a .prom saying the exporter is up."""
        if not path:
            raise VmemtraceError("--textfile: an empty path (give PATH.prom, or leave the "
                                 "option out to serve HTTP)")
        if not path.endswith(".prom"):
            raise VmemtraceError(f"--textfile {path}: node_exporter only reads *.prom files")
        probe = f"{path}.vmemtrace-check"
        try:
            open(probe, "w").close()
            os.unlink(probe)
        except OSError as e:
            raise VmemtraceError(f"cannot write {path}: {e.strerror}") from None

    def write_textfile(self, path: str) -> None:
        """Atomically (write then rename), as node_exporter's textfile collector requires, with
        SIGTERM and Ctrl-C held off meanwhile: a stop between the write and the rename would
        leave the temporary behind (prometheus-client's write_to_textfile does). The path was
        checked once, by check_textfile, before the first write."""
        tmp = f"{path}.{os.getpid()}.tmp"
        with stops_held():
            try:
                with open(tmp, "wb") as fh:
                    fh.write(generate_latest(self.registry))
                os.replace(tmp, path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise VmemtraceError(f"cannot write {path}: {e.strerror}") from None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


# How often the exporter forgets the ranges that are gone: a destroyed device is forgotten
# after one to two of these.
PRUNE_SECONDS = 30.0
# How often, at most, it reads which dax devices exist, to judge again when they change.
DEVICES_SECONDS = 1.0


def _trace(exporter: Exporter, textfile: str | None, interval: float,
           progress: Callable[[str], None]) -> None:
    """Attach and keep the snapshot current until SIGTERM or Ctrl-C (KeyboardInterrupt)."""
    from vmemtrace.session import pools_walked, traced

    live = LiveLedger()
    with traced(progress, audit_existing=True, sink=live, hugetlb="watch") as (tracer, take, _,
                                                                              watch):
        exporter.snap = Snapshot(live, attached=list(tracer.attached))
        next_write = next_prune = next_look = time.monotonic()
        try:
            while True:
                before = live.count
                take(tracer.poll(100))  # a generator: what it brought is what live counted
                quiet = live.count == before
                exporter.snap.lost = tracer.lost
                exporter.snap.updated = time.time()
                # Judged again once a range's events are in (a poll brings none), or when the
                # devices change: never per scrape.
                if (quiet and live.count != live.judged) or time.monotonic() >= next_look:
                    watch, walked = pools_walked(watch, progress)
                    if walked is not None:
                        live.replace_hugetlb(walked)
                    live.refresh(exporter.devices_now(), quiet)
                    next_look = time.monotonic() + DEVICES_SECONDS
                if time.monotonic() >= next_prune:
                    # A map read blinds the probes on its CPU while it runs (bpf/vmemtrace.bpf.c):
                    # the error counters are read at this pace, not at every poll.
                    exporter.snap.errors = tracer.errors()
                    live.retire(daxdev.inventory())
                    next_prune = time.monotonic() + PRUNE_SECONDS
                if textfile and time.monotonic() >= next_write:
                    exporter.write_textfile(textfile)
                    next_write += interval
        except KeyboardInterrupt:
            progress("stopping: detaching the probes")


def pools_state() -> str:
    """The hugetlb pools and HVO's switches, to audit again when they change."""
    return json.dumps([hugetlb.pools(), hugetlb.switches().as_json()])


def _audit_only(exporter: Exporter, why: str, textfile: str | None, interval: float,
                progress: Callable[[str], None], hangup: threading.Event) -> None:
    """Tracing cannot start: serve the audit of the devices that exist (re-audited when the set
    of dax devices changes), with vmemtrace_tracing 0 and the reason's code (the sentence is in
    the log), until SIGHUP (returns: try
    again) or SIGTERM/Ctrl-C (KeyboardInterrupt). As ebpf_exporter does with a program that
    cannot attach: loud, not fatal."""
    from vmemtrace.walk.audit import audit_or_header

    hangup.clear()
    seen, next_write = None, time.monotonic()
    while not hangup.is_set():
        # The devices as sysfs describes them, not only their names: a namespace re-created
        # under the same name with another size or align must be audited again.
        names = sorted(json.dumps(d, sort_keys=True) for d in daxdev.inventory())
        names.append(pools_state())
        if names != seen:
            log, problem = audit_or_header(progress, hugetlb=True)
            live = LiveLedger(log)
            live.refresh(exporter.devices_now())
            exporter.snap = Snapshot(live, not_tracing=why)
            if problem:
                progress(f"the audit cannot run either: {problem}")
            seen = names
        exporter.snap.updated = time.time()
        if textfile and time.monotonic() >= next_write:
            exporter.write_textfile(textfile)
            next_write += interval
        hangup.wait(1.0)
    progress("SIGHUP: trying to attach again")


def run(listen: str, textfile: str | None, interval: float, cert: str | None,
        key: str | None, progress: Callable[[str], None], only=()) -> None:
    """Bad configuration (address, port, certificate, textfile) exits 2 before anything else;
    a host that cannot trace is served as well as it can be, never given up on."""
    exporter = Exporter(only)
    try:
        if textfile is not None:
            exporter.check_textfile(textfile)  # unwritable: fail now, not after the compile
        else:
            host, port = exporter.serve(listen, cert, key)
            progress(f"serving metrics on {'https' if cert else 'http'}://{host}:{port}/metrics")
        # SIGHUP (systemctl reload) retries a failed attach; while tracing it changes nothing
        # (its default action would end the process).
        hangup = threading.Event()
        old = signal.signal(signal.SIGHUP, lambda signum, frame: hangup.set())
        with terminate_on_sigterm():
            try:
                while True:
                    try:
                        return _trace(exporter, textfile, interval, progress)
                    except VmemtraceError as e:
                        progress(f"not tracing: {e}; serving the audit of existing devices "
                                 "(SIGHUP tries again)")
                        _audit_only(exporter, e.reason or "cannot_trace", textfile, interval,
                                    progress, hangup)
            except KeyboardInterrupt:
                progress("stopping")
            finally:
                signal.signal(signal.SIGHUP, old)
    finally:
        exporter.close()
        if textfile and os.path.exists(textfile):
            progress(f"left the last metrics in {textfile}")
