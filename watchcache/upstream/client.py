"""The async HTTP/1.1 client to the Kubernetes API server.

Written on tornado's HTTP1Connection rather than AsyncHTTPClient for two reasons the
hot paths need: connections are kept alive and reused (no TLS handshake per write), and
a response body is handed over chunk by chunk with backpressure (the sink's ``data``
may return an awaitable, which pauses reading until the downstream client has taken
the bytes). Credentials come from the ``kubernetes`` package's config loaders, so
kubeconfig exec plugins, token files and in-cluster service accounts all work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import orjson
from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.tcpclient import TCPClient

from watchcache.cache.listwatch import SourceError

log = logging.getLogger(__name__)

Body = bytes | AsyncIterator[bytes] | None

# TCP keepalive on every upstream socket: a peer that vanished (a host gone, a NAT entry
# dropped) is noticed after about a minute of silence instead of the kernel's two hours.
# It cannot notice a peer that is there but sends nothing: the reflector's silence bound does.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3

# How long a new connection, its TLS handshake included, may take. A connection cut during
# the handshake can leave tornado waiting for it forever; a healthy loopback or in-cluster
# handshake takes milliseconds.
CONNECT_TIMEOUT = 10.0

# Open connections (in use and idle together) of one pool. Every one is a descriptor, and
# the client-connection limit is what the descriptor limit leaves after them (serving.py's
# descriptor_cap); only forwarded requests (writes, uncached reads, delegated watches) hold
# one, so a thousand in flight at once is far past what a dashboard deployment sends, and it
# costs the client side 1,024 of its ~20,000 descriptors rather than half of them.
MAX_CONNECTIONS = 1024
# How long a request waits for a connection to be released once the bound is reached,
# before it is refused (429). A forwarded read or write takes milliseconds; waiting longer
# would only hold the client's own connection and build a queue kube-apiserver cannot serve.
CONNECTION_WAIT = 5.0
# What the refusal says, and when to come back (kube-apiserver's max-in-flight filter: 1 s).
BUSY_MESSAGE = "too many requests in flight to the Kubernetes API server"
BUSY_RETRY_AFTER = 1


def hung_up(stream: iostream.IOStream) -> bool:
    """Whether an idle kept-alive connection is gone: closed as tornado knows it, or readable
    while no request is out, which is the server's FIN or TLS close alert (nothing else may
    arrive on an idle HTTP/1.1 connection). tornado reads an idle stream for nothing, so
    it notices neither by itself."""
    if stream.closed() or stream.socket is None:
        return True
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def enable_keepalive(sock: socket.socket) -> None:
    """Turns TCP keepalive on, with Linux's per-socket timings where it has them."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError as exc:  # a socket closed meanwhile: the request will say so itself
        log.debug("cannot enable TCP keepalive: %s", exc)


# Request headers: a mapping, or pairs when a name repeats (Impersonate-Group).
Headers = Mapping[str, str] | Sequence[tuple[str, str]]


class UpstreamError(SourceError):
    """The API server could not be reached, or the connection broke mid-response."""


class UpstreamBusy(UpstreamError):
    """Every connection the pool may open is in use and none was released in time: the
    request was never sent. Forwarding answers it 429 (http/proxy.py)."""


class ResponseSink(Protocol):
    """Receives one upstream response as it arrives; return an awaitable to apply backpressure."""

    def head(
        self, code: int, reason: str, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None: ...

    def data(self, chunk: bytes) -> Awaitable[None] | None: ...

    def end(self) -> None: ...


@dataclass(slots=True)
class Response:
    """A whole (buffered) upstream response, for small internal calls."""

    code: int
    headers: httputil.HTTPHeaders
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


class _Delegate(httputil.HTTPMessageDelegate):
    """Adapts a ResponseSink to tornado's message delegate, recording whether it completed."""

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink
        self.started = False
        self.finished = False
        self.keep_alive = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.started = True
        self.keep_alive = start_line.version == "HTTP/1.1" and (
            headers.get("Connection", "").lower() != "close"
        )
        return self.sink.head(start_line.code, start_line.reason, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.sink.data(chunk)

    def finish(self) -> None:
        self.finished = True
        self.sink.end()

    def on_connection_close(self) -> None:
        pass


class _Buffer:
    """A sink that keeps the whole response."""

    def __init__(self) -> None:
        self.code = 0
        self.headers = httputil.HTTPHeaders()
        self.chunks: list[bytes] = []

    def head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> None:
        self.code, self.headers = code, headers

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def end(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the API server is and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext | None
    # Called per request: exec plugins and projected service-account tokens rotate.
    authorization: Callable[[], str | None]


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """Kubeconfig (``--kubeconfig``/``$KUBECONFIG``/~/.kube/config) or, failing that, in-cluster."""
    from kubernetes import client, config

    # The kubernetes client's functions carry no annotations.
    load_kube_config = cast("Callable[..., None]", config.load_kube_config)
    load_incluster_config = cast("Callable[..., None]", config.load_incluster_config)
    cfg = client.Configuration()
    try:
        load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except config.ConfigException:
        if kubeconfig or context:
            raise
        load_incluster_config(client_configuration=cfg)

    ctx: ssl.SSLContext | None = None
    if cfg.host.startswith("https"):
        ctx = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.verify_ssl
            else (ssl._create_unverified_context())
        )
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.tls_server_name:
            ctx.check_hostname = True

    def authorization() -> str | None:
        # The loaders keep the token under "BearerToken" (older releases: "authorization");
        # the call runs their refresh hook, so expiring exec-plugin tokens are renewed.
        token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            return token
        return cfg.get_basic_auth_token() if cfg.username else None

    return Credentials(server=cfg.host, ssl_context=ctx, authorization=authorization)


class Upstream:
    """A pool of keep-alive HTTP/1.1 connections to one API server, at most
    ``max_connections`` open at once (in use and idle together).

    A request takes an idle connection if there is one, else opens one while under the
    bound, else waits up to ``wait`` seconds for one to be released; waiters are served in
    arrival order, and a connection released while someone waits goes straight to the
    first of them. One that waits in vain gets ``UpstreamBusy`` without anything being
    sent. A long-running request (a watch) holds its connection for as long as it runs.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        max_connections: int = MAX_CONNECTIONS,
        wait: float = CONNECTION_WAIT,
        max_idle: int = 64,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        url = urlsplit(credentials.server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.base_path = url.path.rstrip("/")
        self.netloc = url.netloc
        self._tcp = TCPClient()
        self.max_connections = max(1, max_connections)
        self.wait = max(0.0, wait)
        self._idle: list[iostream.IOStream] = []
        self._max_idle = max_idle
        self._in_use = 0  # connections handed to a request (or being opened for one)
        # Requests waiting for a connection, first come first served: each future gets a
        # kept-alive stream, or None for the right to open a new one.
        self._waiters: deque[asyncio.Future[iostream.IOStream | None]] = deque()
        self.refused = 0  # requests failed with UpstreamBusy (/metrics)
        self._params = HTTP1ConnectionParameters(
            no_keep_alive=False, decompress=False, max_body_size=1 << 40, chunk_size=65536
        )

    @property
    def open_connections(self) -> int:
        """Connections open now, in use or idle (/metrics)."""
        return self._in_use + sum(1 for stream in self._idle if not stream.closed())

    @property
    def waiting(self) -> int:
        return sum(1 for fut in self._waiters if not fut.done())

    async def _acquire(self) -> iostream.IOStream | None:
        """A kept-alive stream, or None for a slot to open a new one; counted in use."""
        # The newest idle connection the server has not hung up on (see ``hung_up``); those
        # it has are closed on the way, so each is polled once, not on every request.
        while self._idle:
            stream = self._idle.pop()
            if not hung_up(stream):
                self._in_use += 1
                return stream
            stream.close()
        if self._in_use < self.max_connections:
            self._in_use += 1
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[iostream.IOStream | None] = loop.create_future()
        self._waiters.append(fut)

        def expire() -> None:
            if not fut.done():
                fut.set_exception(UpstreamBusy(BUSY_MESSAGE))

        timer = loop.call_later(self.wait, expire)
        try:
            return await fut
        except UpstreamBusy:
            self.refused += 1
            log.warning(
                "%s: no connection released within %gs (%d open, the bound)",
                BUSY_MESSAGE,
                self.wait,
                self.max_connections,
            )
            raise
        except asyncio.CancelledError:
            # The request was stopped while waiting; a slot granted meanwhile goes on.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                granted = fut.result()
                if granted is None:
                    self._free()
                else:
                    self._give_back(granted, keep=True)
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _next_waiter(self) -> asyncio.Future[iostream.IOStream | None] | None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                return fut
        return None

    def _free(self) -> None:
        """A connection in use is gone (closed): its slot passes to the first waiter."""
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(None)  # the slot stays counted, now the waiter's
        else:
            self._in_use -= 1

    def _give_back(self, stream: iostream.IOStream, *, keep: bool) -> None:
        """The end of a request's use of ``stream``: to the first waiter, to the idle
        list, or closed."""
        if not keep or stream.closed():
            stream.close()
            self._free()
            return
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(stream)
        elif len(self._idle) < self._max_idle:
            self._in_use -= 1
            self._idle.append(stream)
        else:
            stream.close()
            self._in_use -= 1

    async def _connect(self) -> tuple[iostream.IOStream, bool]:
        """A connection for one request, counted in use, and whether it was kept alive
        from an earlier request (a stale one may fail before answering)."""
        reused = await self._acquire()
        if reused is not None:
            return reused, True
        try:
            return await self._open(), False
        except BaseException:
            self._free()
            raise

    async def _open(self) -> iostream.IOStream:
        try:
            # Not connect's own timeout: on expiry tornado logs the handshake's later failure
            # with a traceback; cancelling the connect closes the half-made stream quietly.
            stream = await asyncio.wait_for(
                self._tcp.connect(
                    self.host,
                    self.port,
                    ssl_options=self.credentials.ssl_context,
                    max_buffer_size=1 << 28,
                ),
                self.connect_timeout,
            )
        except (OSError, iostream.StreamClosedError, ssl.SSLError, ValueError) as exc:
            # ValueError: tornado's "IOStream is not idle" when the server closed the new
            # connection before the TLS handshake began; as transient as a refused connect.
            # OSError includes the TimeoutError of connect_timeout.
            reason = str(exc) or f"no connection within {self.connect_timeout:g}s"
            raise UpstreamError(f"cannot connect to the Kubernetes API server: {reason}") from exc
        stream.set_nodelay(True)
        if stream.socket is not None:
            enable_keepalive(stream.socket)
        return stream

    def close(self) -> None:
        """Closes the idle connections (those in use close when their request ends)."""
        for stream in self._idle:
            stream.close()
        self._idle.clear()

    def _headers(self, headers: Headers | None) -> httputil.HTTPHeaders:
        out = httputil.HTTPHeaders()
        if headers:
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            for name, value in pairs:
                out.add(name, value)
        out["Host"] = self.netloc
        auth = self.credentials.authorization()
        if auth:
            out["Authorization"] = auth
        elif "Authorization" in out:
            del out["Authorization"]
        return out

    async def send(
        self,
        method: str,
        target: str,
        sink: ResponseSink,
        *,
        headers: Headers | None = None,
        body: Body = None,
        stream: iostream.IOStream | None = None,
        replay: bool = True,
    ) -> None:
        """Sends one request and feeds its response to ``sink``.

        A stale kept-alive connection fails before any response byte arrives; such a
        request is sent again once on a fresh connection when its body can be replayed and
        ``replay`` allows it (a create that could make a duplicate must say False: the
        server may have received it before the connection broke). With every connection
        of the pool busy past its wait, ``UpstreamBusy`` is raised and nothing is sent.
        A ``stream`` given by the caller is outside the pool and stays the caller's.
        """
        for attempt in (0, 1):
            own = stream is None
            if stream is None:
                conn_stream, reused = await self._connect()
            else:
                conn_stream, reused = stream, False
            delegate = _Delegate(sink)
            keep = False
            try:
                await self._exchange(conn_stream, method, target, headers, body, delegate)
                keep = delegate.finished and delegate.keep_alive
            except (iostream.StreamClosedError, OSError, ssl.SSLError) as exc:
                replayable = replay and not isinstance(body, AsyncIterator)
                if attempt == 0 and reused and not delegate.started and replayable:
                    # The server let this one go while it was idle (its idle timeout, a
                    # restart): the others idle as long may be gone too, and unnoticed if
                    # their hang-up is still on its way. The second try opens a fresh one.
                    self.close()
                    continue
                raise UpstreamError(
                    f"connection to the Kubernetes API server failed: {exc}"
                ) from exc
            finally:
                # A sink that gave up (a cancelled proxy, a reflector's Gone) leaves the
                # connection mid-response: closed, never reused.
                if own:
                    self._give_back(conn_stream, keep=keep)
                elif not keep:
                    conn_stream.close()
            if not delegate.finished:
                raise UpstreamError("the Kubernetes API server closed the connection mid-response")
            return

    async def _exchange(
        self,
        stream: iostream.IOStream,
        method: str,
        target: str,
        headers: Headers | None,
        body: Body,
        delegate: _Delegate,
    ) -> None:
        conn = HTTP1Connection(stream, True, self._params)
        out = self._headers(headers)
        if isinstance(body, bytes):
            out["Content-Length"] = str(len(body))
            out.pop("Transfer-Encoding", None)
        elif body is None:
            if method in ("POST", "PUT", "PATCH"):
                out["Content-Length"] = "0"
            out.pop("Transfer-Encoding", None)
        else:
            # tornado frames a streamed body itself: chunked for POST/PUT/PATCH without a
            # Content-Length, raw bytes when the caller passed one on.
            out.pop("Transfer-Encoding", None)
            if "Content-Length" not in out and method not in ("POST", "PUT", "PATCH"):
                raise ValueError(f"a streamed {method} body needs a Content-Length")
        start = httputil.RequestStartLine(method, self.base_path + target, "HTTP/1.1")
        await conn.write_headers(start, out)
        if isinstance(body, bytes):
            if body:
                await conn.write(body)
        elif body is not None:
            async for chunk in body:
                if chunk:
                    await conn.write(chunk)
        conn.finish()
        await conn.read_response(delegate)
        if not delegate.started and stream.closed():
            raise iostream.StreamClosedError()

    def line_sink(
        self,
        on_line: Callable[[bytes], Awaitable[None] | None],
        on_head: Callable[[int], None] | None = None,
    ) -> LineSink:
        """A sink for a watch's body, line by line (the reflector's ``Source`` seam)."""
        return LineSink(on_line, on_head)

    async def fetch(
        self,
        method: str,
        target: str,
        *,
        headers: Headers | None = None,
        body: bytes | None = None,
    ) -> Response:
        """A whole response; for small internal calls (discovery, CRDs), not for proxying."""
        buf = _Buffer()
        await self.send(method, target, buf, headers=headers, body=body)
        return Response(buf.code, buf.headers, b"".join(buf.chunks))


class LineSink:
    """A sink that splits a streamed body into lines (watch events), delivered to ``on_line``.

    ``on_line`` may return an awaitable; the stream then waits for it, so a slow consumer
    slows the read instead of growing a buffer.
    """

    def __init__(
        self,
        on_line: Callable[[bytes], Awaitable[None] | None],
        on_head: Callable[[int], None] | None = None,
    ) -> None:
        self.on_line = on_line
        self.on_head = on_head
        self.code = 0
        self.headers = httputil.HTTPHeaders()
        self.error_body = b""
        self._partial = b""
        # When the last byte arrived (at first: when the request was made). A watch that
        # stays silent longer than a bound is presumed stalled.
        self.last_data = time.monotonic()
        self.any_data = False  # whether any byte (the head included) has arrived

    def head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> None:
        self.code, self.headers = code, headers
        self.last_data, self.any_data = time.monotonic(), True
        if self.on_head is not None:
            self.on_head(code)

    async def _deliver(self, lines: list[bytes]) -> None:
        for line in lines:
            result = self.on_line(line)
            if result is not None:
                await result

    def data(self, chunk: bytes) -> Awaitable[None] | None:
        self.last_data, self.any_data = time.monotonic(), True
        if self.code != 200:
            if len(self.error_body) < 65536:
                self.error_body += chunk
            return None
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        lines = [line for line in lines if line.strip()]
        return self._deliver(lines) if lines else None

    def end(self) -> None:
        if self.code == 200 and self._partial.strip():
            self.on_line(self._partial)
        self._partial = b""
