"""The HTTP server's own bounds: connections, header and idle time, header size, the accept loop.

tornado's HTTPServer leaves these to the application. Left alone, a half-open connection may
take an hour to send its headers, at the descriptor limit the accept loop spins and logs a
traceback per attempt, and a header block over the limit or a query of too many fields is
answered with an empty 400 or a closed socket. ``BoundedHTTPServer`` keeps tornado's request
handling (tornado's own HTTP/1.1 connection, through its public API) and bounds what
surrounds it:

- at most ``max_connections`` open connections, below what the descriptor limit leaves
  after the bounded upstream connections (``descriptor_cap``); when full, the
  connection that has waited longest for its request headers is closed to make room (that is
  where slowloris and half-open clients sit), and only when every connection is busy is the
  newcomer refused, with a 429 ``Status``;
- a new connection has ``header_timeout`` to send its request headers, a kept-alive one
  ``idle_timeout`` (idle time and headers together) to send the next request;
- ``EMFILE`` and its kin pause accepting with a backoff instead of spinning, logged at most
  once per ``LOG_EVERY`` seconds;
- a header block over ``max_header_bytes`` is answered 431, an unparsable request or a query
  of too many fields 400, each with a ``Status`` body;
- ``drain()`` closes idle connections and lets busy ones finish their answer (shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from http.client import responses
from typing import Any

from tornado import httputil, iostream
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.ioloop import IOLoop

from watchcache.config import ServerLimits
from watchcache.http.tls import JudgedStream, ServingCertificate, accept_tls
from watchcache.kube.status import StatusError, too_many_requests

log = logging.getLogger("watchcache.http")

LOG_EVERY = 10.0  # seconds between two log lines about the same accept failure
BACKOFF_FIRST, BACKOFF_MAX = 0.005, 1.0  # pause of the accept loop at the descriptor limit
LINGER_SECONDS, LINGER_BYTES = 1.0, 1 << 20  # reading what follows a refused header block
ACCEPTS_PER_WAKEUP = 128
# What tornado writes, alone, for a request it cannot parse.
BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
# Descriptors kept free, beyond the upstream pools' bound, for listening sockets, logs,
# files and the odd descriptor of a library.
FD_RESERVE = 64
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raw_answer(err: StatusError, *, close: bool = True) -> bytes:
    """A whole HTTP/1.1 answer carrying ``err`` as a Status, for the paths outside tornado's
    handlers (refused connections, unparsable requests)."""
    body = err.body()
    reason = responses.get(err.code, "Unknown")
    head = [
        f"HTTP/1.1 {err.code} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in err.headers.items()),
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def headers_too_large(limit: int) -> StatusError:
    return StatusError(
        431, f"request header fields too large: limit is {limit} bytes", reason="BadRequest"
    )


def descriptor_cap(wanted: int, upstream: int, soft: int | None = None) -> int:
    """``wanted`` client connections, or fewer if the descriptor limit cannot hold them
    beside ``upstream`` connections to the API server (the most its pools may open, see
    upstream.client.Upstream) and FD_RESERVE more. Only forwarded requests hold an upstream
    connection and their pools are bounded, so the clients get all the rest, not half.

    ``soft``: the descriptor limit to fit (tests); None reads it, first raising the soft
    limit to the hard one, as Go does."""
    if soft is None:
        soft = descriptor_limit()
        if soft is None:
            return wanted
    return max(1, min(wanted, soft - FD_RESERVE - upstream))


def fit_upstream(wanted: int, others: int, soft: int | None) -> int:
    """The forwarded requests' pool bound, ``wanted``, lowered under a small descriptor
    limit so that it takes at most half of what FD_RESERVE and the ``others`` pools leave:
    the clients always keep the other half (at 20,000 descriptors nothing is lowered)."""
    if soft is None:
        return wanted
    return max(1, min(wanted, (soft - FD_RESERVE - others) // 2))


def descriptor_limit() -> int | None:
    """The soft RLIMIT_NOFILE, raised to the hard one when allowed; None when unbounded."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass
class ConnectionStats:
    """What /metrics shows of the connections (counters only grow)."""

    open: int = 0
    evicted: int = 0
    refused: int = 0
    accept_pauses: int = 0
    header_refusals: int = 0


class Throttled:
    """One log line per ``LOG_EVERY`` seconds for a recurring failure, with a count."""

    def __init__(self) -> None:
        self.last = -LOG_EVERY
        self.skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < LOG_EVERY:
            self.skipped += 1
            return
        suffix = f" ({self.skipped} more since the last report)" if self.skipped else ""
        self.last, self.skipped = now, 0
        log.warning(message + suffix, *args)


class Stream(iostream.IOStream):
    """An IOStream that answers, rather than drops, the requests tornado refuses itself."""

    server: BoundedHTTPServer
    reading_headers = True
    refusal: str | None = None  # why the guard refused the request, for the 400 below
    answered = False  # the current request's answer has begun
    refuse_headers = False

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        if len(data) == len(BARE_400) and bytes(data) == BARE_400:
            if self.answered:
                # The handler answered already (a 413 for a Content-Length tornado then
                # refuses too): a second answer would only confuse the client.
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
            message = self.refusal or "the request could not be parsed as HTTP/1.1"
            data = raw_answer(StatusError(400, message))
        elif not self.answered and bytes(data[:9]) == b"HTTP/1.1 " and data[9:10] != b"1":
            self.answered = True  # a final answer's head (a 100 Continue is not one)
        return super().write(data)

    def close(self, exc_info: Any = False) -> None:
        if not self.closed() and isinstance(exc_info, iostream.UnsatisfiableReadError):
            # Only a bounded read overflows: the header block, or a chunk-size line.
            self.refuse_headers = True
        super().close(exc_info)

    def close_fd(self) -> None:
        if self.refuse_headers and self.socket is not None and not isinstance(self, TLSStream):
            # Annotated a socket, but tornado's own close_fd sets it to None as well.
            sock, self.socket = self.socket, None  # type: ignore[assignment]
            if self.reading_headers:
                err = headers_too_large(self.server.limits.max_header_bytes)
                self.server.stats.header_refusals += 1
            else:
                err = StatusError(400, "malformed chunked request body")
            self.server.linger(sock, raw_answer(err))
            return
        super().close_fd()


class TLSStream(Stream, JudgedStream):
    """A connection over TLS. A header block over the limit is dropped here, not answered:
    the answer would have to go through the TLS session tornado is closing."""


class ConnectionContext:
    """What a request knows of its connection (the exchange reads ``remote_ip``)."""

    def __init__(self, address: Any, protocol: str) -> None:
        self.address = address
        ip = address[0] if isinstance(address, tuple) and address else None
        self.remote_ip = ip if isinstance(ip, str) else "0.0.0.0"
        self.protocol = protocol

    def __str__(self) -> str:
        return self.remote_ip


class Guard(httputil.HTTPMessageDelegate):
    """Wraps the application's delegate for one request: marks the connection busy once its
    headers are in, and turns tornado's own input errors into a message for the 400."""

    def __init__(
        self,
        server: BoundedHTTPServer,
        conn: HTTP1ServerConnection,
        inner: httputil.HTTPMessageDelegate,
    ) -> None:
        self.server = server
        self.conn = conn
        self.inner = inner

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self.server.busy_now(self.conn)
        stream = self.conn.stream
        if isinstance(stream, Stream):
            stream.reading_headers = False
        try:
            return self.inner.headers_received(start_line, headers)
        except httputil.HTTPInputError as exc:
            if isinstance(stream, Stream):
                stream.refusal = str(exc)[:200]
            raise

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


class BoundedHTTPServer(httputil.HTTPServerConnectionDelegate):
    """Accepts connections and serves HTTP/1.1 on them with tornado's connection class,
    within the bounds this module describes."""

    def __init__(
        self,
        app: httputil.HTTPServerConnectionDelegate,
        limits: ServerLimits,
        tls: ServingCertificate | None = None,
        *,
        upstream: int | None = None,
    ) -> None:
        """``upstream``: the most connections to the API server this process may open (its
        pools' bounds together); None, ``limits.max_upstream_connections``."""
        self.app = app
        self.limits = limits
        self.tls = tls  # HTTPS only when set; plain HTTP to it gets kube's 400
        # The header timeout is set per request (start_request).
        self.params = HTTP1ConnectionParameters(
            max_header_size=limits.max_header_bytes,
            header_timeout=limits.idle_timeout,
            body_timeout=limits.body_timeout,
        )
        if upstream is None:
            upstream = limits.max_upstream_connections
        self.max_connections = descriptor_cap(limits.max_connections, upstream)
        self.stats = ConnectionStats()
        self.draining = False
        self.stopped = False
        self.sockets: dict[int, socket.socket] = {}
        self.connections: set[HTTP1ServerConnection] = set()
        self.waiting: OrderedDict[HTTP1ServerConnection, None] = OrderedDict()
        self.served: set[HTTP1ServerConnection] = set()  # has had a request (keep-alive)
        self.lingering: set[asyncio.Task[None]] = set()
        self.handshaking: set[asyncio.Task[None]] = set()  # TLS handshakes under way
        self.backoff = BACKOFF_FIRST
        self.accept_log = Throttled()
        self.settled: asyncio.Event | None = None  # set once draining has no request left

    # ---- accepting -----------------------------------------------------------------------
    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            sock.setblocking(False)
            self.sockets[sock.fileno()] = sock
            self.watch(sock)

    def watch(self, sock: socket.socket) -> None:
        IOLoop.current().add_handler(sock.fileno(), lambda _fd, _ev: self.accept(sock), IOLoop.READ)

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            IOLoop.current().remove_handler(fd)

    def stop(self) -> None:
        """Stops accepting: the listening sockets are closed; connections stay."""
        self.stopped = True
        for fd, sock in self.sockets.items():
            self.unwatch(fd)
            sock.close()
        self.sockets.clear()

    def accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self.pause(sock, exc)
                else:
                    self.accept_log.warning("accept failed: %s", exc)
                return
            self.backoff = BACKOFF_FIRST
            self.admit(conn, address)

    def pause(self, sock: socket.socket, exc: OSError) -> None:
        """Out of descriptors: stop polling the listener for a while instead of spinning."""
        fd = sock.fileno()
        self.stats.accept_pauses += 1
        self.accept_log.warning(
            "accept failed (%s) with %d connections open; pausing accept for %.3fs",
            exc.strerror or exc,
            len(self.connections),
            self.backoff,
        )
        self.unwatch(fd)
        delay, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX)

        def resume() -> None:
            if not self.stopped and fd in self.sockets:
                self.watch(sock)

        IOLoop.current().call_later(delay, resume)

    def admit(self, conn: socket.socket, address: Any) -> None:
        held = len(self.connections) + len(self.lingering) + len(self.handshaking)
        if held >= self.max_connections:
            if self.waiting:
                oldest = next(iter(self.waiting))
                self.waiting.pop(oldest)
                self.stats.evicted += 1
                oldest.stream.close()
            else:
                self.stats.refused += 1
                self.refuse(conn)
                return
        if self.tls is not None:
            task = asyncio.ensure_future(self.secure(iostream.IOStream(conn), address))
            self.handshaking.add(task)
            task.add_done_callback(self.handshaking.discard)
            return
        stream = Stream(conn)
        stream.server = self
        self.serve(stream, address)

    async def secure(self, plain: iostream.IOStream, address: Any) -> None:
        """The TLS handshake (bounded by the header timeout, as Go bounds it), then HTTP."""
        assert self.tls is not None
        stream = await accept_tls(
            plain, self.tls, self.limits.header_timeout, make_stream=TLSStream
        )
        if stream is None or self.stopped:
            if stream is not None:
                stream.close()
            return
        assert isinstance(stream, TLSStream)
        stream.server = self
        self.serve(stream, address, "https")

    def refuse(self, conn: socket.socket) -> None:
        err = too_many_requests("too many open connections, please try again later", 1)
        try:
            conn.setblocking(False)
            conn.send(raw_answer(err))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.close()

    # ---- connections ---------------------------------------------------------------------
    def serve(self, stream: iostream.IOStream, address: Any, protocol: str = "http") -> None:
        # Parameters of its own: its header timeout changes after its first request.
        conn = HTTP1ServerConnection(
            stream, copy.copy(self.params), ConnectionContext(address, protocol)
        )
        self.connections.add(conn)
        self.stats.open = len(self.connections)
        conn.start_serving(self)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        conn: HTTP1ServerConnection = server_conn  # type: ignore[assignment]
        inner = self.app.start_request(server_conn, request_conn)
        if conn in self.served:
            conn.params.header_timeout = self.limits.idle_timeout
        else:
            conn.params.header_timeout = self.limits.header_timeout
            self.served.add(conn)
        stream = conn.stream
        if isinstance(stream, Stream):
            stream.reading_headers = True
            stream.refusal = None
            stream.answered = False
        if self.draining:
            stream.close()  # the previous answer is out; no new request starts
        else:
            self.waiting[conn] = None
        self.check_settled()
        return Guard(self, conn, inner)

    def busy_now(self, conn: HTTP1ServerConnection) -> None:
        self.waiting.pop(conn, None)

    def on_close(self, server_conn: object) -> None:
        conn: HTTP1ServerConnection = server_conn  # type: ignore[assignment]
        self.waiting.pop(conn, None)
        self.served.discard(conn)
        self.connections.discard(conn)
        self.stats.open = len(self.connections)
        self.check_settled()

    def linger(self, sock: socket.socket, answer: bytes) -> None:
        """Sends ``answer`` on a socket tornado gave up, then reads and drops what the client
        still sends for a moment, so that closing does not reset the answer away."""
        task = asyncio.ensure_future(linger(sock, answer))
        self.lingering.add(task)
        task.add_done_callback(self.lingering.discard)

    # ---- shutdown ------------------------------------------------------------------------
    def drain(self) -> None:
        """Closes every idle connection; busy ones close once their answer is out."""
        self.draining = True
        for conn in list(self.waiting):
            conn.stream.close()
        self.waiting.clear()

    def busy(self) -> int:
        return len(self.connections) - len(self.waiting)

    async def wait_idle(self, grace: float) -> bool:
        """Waits up to ``grace`` seconds for requests in flight; True if none is left."""
        self.settled = asyncio.Event()
        self.check_settled()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), grace)
        return self.busy() == 0

    def check_settled(self) -> None:
        if self.settled is not None and self.busy() == 0:
            self.settled.set()

    async def close_all_connections(self) -> None:
        """Closes every connection left, and waits for each to be done."""
        while self.connections:
            conn = next(iter(self.connections))
            self.connections.discard(conn)
            await conn.close()


async def linger(sock: socket.socket, answer: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_sendall(sock, answer), LINGER_SECONDS)
        sock.shutdown(socket.SHUT_WR)
        deadline = loop.time() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES and loop.time() < deadline:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), deadline - loop.time())
            if not chunk:
                break
            drained += len(chunk)
    except (TimeoutError, OSError):
        pass
    finally:
        sock.close()
