"""The exporter's HTTP(S) server: GET /metrics for every client, whatever the others do.

One asyncio loop in its own thread holds every connection, so a client that connects and says
nothing, sends its request a byte at a time, or never finishes its TLS handshake costs a
coroutine, never a worker: accepting never waits. Each connection has one deadline for all of
it (handshake, request, response), a client more connections than it may have is closed at once
(refused, not queued), and the page is rendered off the loop. A server with a thread per
connection and a timeout per read (http.server, prometheus-client's) lets a few dozen idle or
trickling clients hold every worker, and so every scrape, past Prometheus' 10 s timeout.
"""

import asyncio
import concurrent.futures
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlparse

# Seconds a connection may take for everything, TLS handshake included: Prometheus times a
# scrape out at 10 s by default.
DEADLINE = 5.0
# Bytes of request line and headers (a scrape sends a few hundred).
MAX_REQUEST = 8192
# Connections at once, in all and from one address; beyond that a new one is closed at once.
MAX_CONNECTIONS = 2048
PER_CLIENT = 1024
# Pages rendered at once (rendering reads the ledger: quick, but not the loop's work).
RENDERERS = 2

# (name[] filter, Accept header) -> (body, content type)
Render = Callable[[set[str] | None, str], tuple[bytes, str]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large"}


def _more_files() -> None:
    """Every connection is a file descriptor: the soft limit (often 1024) raised to the hard one,
    so that hundreds of idle clients cannot make accept() fail for the scraper."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


class ScrapeServer:
    """Serves render() at /metrics on a bound socket until close()."""

    def __init__(self, sock: socket.socket, render: Render, context: ssl.SSLContext | None):
        self.sock, self.render, self.context = sock, render, context
        self.per_client: dict[str, int] = {}
        self.open = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(RENDERERS, "render")
        self.loop = asyncio.new_event_loop()
        self.server = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    @property
    def server_address(self):
        return self.sock.getsockname()

    def start(self) -> None:
        _more_files()
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(
            self._connection, sock=self.sock, ssl=self.context, limit=MAX_REQUEST,
            ssl_handshake_timeout=DEADLINE if self.context else None, backlog=1024))
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername") or ("?",)
        client = str(peer[0])
        if self.open >= MAX_CONNECTIONS or self.per_client.get(client, 0) >= PER_CLIENT:
            writer.transport.abort()  # refused: the excess is never queued behind
            return
        self.open += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        try:
            await asyncio.wait_for(self._exchange(reader, writer), DEADLINE)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass  # a slow, silent or broken client: its problem, not the next scrape's
        finally:
            self.open -= 1
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                del self.per_client[client]
            writer.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return await self._reply(writer, 431, b"request too large\n")
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        except (UnicodeDecodeError, ValueError):
            return await self._reply(writer, 400, b"bad request\n")
        if method not in ("GET", "HEAD"):
            return await self._reply(writer, 405, b"only GET\n")
        url = urlparse(target)
        if url.path != "/metrics":
            return await self._reply(writer, 404, b"only /metrics is served here\n")
        names = parse_qs(url.query).get("name[]")
        body, kind = await self.loop.run_in_executor(
            self.pool, self.render, set(names) if names else None, _header(head, b"accept"))
        await self._reply(writer, 200, body if method == "GET" else b"", kind, len(body))

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes,
                     kind: str = "text/plain; charset=utf-8", length: int | None = None):
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: vmemtrace\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body) if length is None else length}"
                "\r\nConnection: close\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()

    def close(self) -> None:
        """Stops accepting, drops every connection, ends the loop and its thread."""
        async def stop():
            if self.server is not None:
                self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        self.pool.shutdown(wait=False)
        self.sock.close()


def _header(head: bytes, name: bytes) -> str:
    """A request header's value ("" when absent), by its lower-case name."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""
