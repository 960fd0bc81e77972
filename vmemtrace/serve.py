"""`vmemtrace exporter`: serve the collector over HTTP(S), or keep a node_exporter textfile.

The order matters: everything the user got wrong (address, port in use, certificate, textfile)
fails before the BPF compile; then the probes attach, then the devices that already exist are
audited (anything created later is traced), then scrapes see both.
"""

import errno
import inspect
import os
import ssl
import time
from typing import Callable, Optional, Tuple

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.process_collector import ProcessCollector

from vmemtrace.errors import VmemtraceError
from vmemtrace.exporter import LedgerCollector, Snapshot
from vmemtrace.kernel import daxdev

DEFAULT_LISTEN = "127.0.0.1:9477"


def parse_listen(text: str) -> Tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all addresses: the user's explicit choice)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise VmemtraceError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class Exporter:
    """Holds the snapshot the collector reads; the tracing loop updates it."""

    def __init__(self):
        self.snap = Snapshot(log=[])
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LedgerCollector(self.snapshot, daxdev.inventory))
        ProcessCollector(namespace="vmemtrace", registry=self.registry)
        self.server = None

    def snapshot(self) -> Snapshot:
        s = self.snap
        return Snapshot(list(s.log), s.lost, dict(s.errors), list(s.attached))

    def serve(self, listen: str, cert: Optional[str], key: Optional[str]) -> Tuple[str, int]:
        host, port = parse_listen(listen)
        if bool(cert) != bool(key):
            raise VmemtraceError("--tls-cert and --tls-key go together")
        tls = {}
        if cert:
            if "certfile" not in inspect.signature(start_http_server).parameters:
                raise VmemtraceError("--tls-cert needs prometheus-client 0.17 or newer (Debian 12 "
                                     "ships 0.16: pip install 'prometheus-client>=0.17')")
            for path in (cert, key):
                try:
                    open(path, "rb").close()
                except OSError as e:
                    raise VmemtraceError(f"cannot read {path}: {e.strerror}")
            tls = {"certfile": cert, "keyfile": key}
        try:
            started = start_http_server(port, host, self.registry, **tls)
        except ssl.SSLError as e:
            # prometheus-client re-raises it with only a message: no .reason to read
            detail = str(e.args[0]) if len(e.args) == 1 else str(e)
            raise VmemtraceError(f"bad TLS certificate or key ({cert}, {key}): "
                                 f"{detail.split(': ')[-1]}")
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise VmemtraceError(f"{host}:{port} is in use (another exporter running?)")
            raise VmemtraceError(f"cannot listen on {host}:{port}: {e.strerror}")
        # prometheus-client 0.17+ returns (server, thread); 0.16 (Debian 12) returns nothing and
        # its daemon thread ends with the process.
        self.server = started[0] if started else None
        return host, self.server.server_address[1] if self.server else port

    @staticmethod
    def check_textfile(path: str) -> None:
        """Fail now, before the compile, when the textfile cannot be written, without writing
        it: a start that fails later must not leave a .prom saying the exporter is up."""
        if not path.endswith(".prom"):
            raise VmemtraceError(f"--textfile {path}: node_exporter only reads *.prom files")
        probe = f"{path}.vmemtrace-check"
        try:
            open(probe, "w").close()
            os.unlink(probe)
        except OSError as e:
            raise VmemtraceError(f"cannot write {path}: {e.strerror}")

    def write_textfile(self, path: str) -> None:
        """Atomically (write then rename), as node_exporter's textfile collector requires."""
        if not path.endswith(".prom"):
            raise VmemtraceError(f"--textfile {path}: node_exporter only reads *.prom files")
        try:
            write_to_textfile(path, self.registry)
        except OSError as e:
            raise VmemtraceError(f"cannot write {path}: {e.strerror}")

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def run(listen: str, textfile: Optional[str], interval: float, cert: Optional[str],
        key: Optional[str], progress: Callable[[str], None]) -> None:
    from vmemtrace.session import traced

    exporter = Exporter()
    try:
        if textfile:
            exporter.check_textfile(textfile)  # unwritable: fail now, not after the compile
        else:
            host, port = exporter.serve(listen, cert, key)
            progress(f"serving metrics on {'https' if cert else 'http'}://{host}:{port}/metrics")
        with traced(progress, audit_existing=True) as (tracer, take, log):
            exporter.snap.log = log
            exporter.snap.attached = list(tracer.attached)
            next_write = time.monotonic()
            try:
                while True:
                    take(tracer.poll(100))
                    exporter.snap.lost = tracer.lost
                    exporter.snap.errors = tracer.errors()
                    if textfile and time.monotonic() >= next_write:
                        exporter.write_textfile(textfile)
                        next_write += interval
            except KeyboardInterrupt:
                progress("stopping: detaching the probes")
    finally:
        exporter.close()
    if textfile and os.path.exists(textfile):
        progress(f"left the last metrics in {textfile}")
