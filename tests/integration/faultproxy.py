"""A loopback reverse proxy in front of kube-apiserver that fails requests on demand.

watchcache talks plain HTTP to it, over connections kept alive as HTTP/1.1 allows (so
watchcache reuses them, as it reuses its connections to kube-apiserver); it talks HTTPS to
kube-apiserver, one connection per request. A test arms faults on a method and path: answer
the next N such requests with status S (and Retry-After); drop the connection without an
answer; forward the request, then break its answer off after the head; or deliver what
kube-apiserver sends on a path L seconds late (a lagging watch). Every request, faulted or
forwarded, is recorded. A forwarded response is relayed as it arrives, piece by piece, so a
watch streams through. Two faults act below HTTP: a stalled path's answers stop being relayed
while their connections stay open (a watch gone silent, TCP alive), and the next N connections
can be reset as soon as they are accepted. With ``tls`` (a serving context, see
``serving_context``) watchcache talks HTTPS to it, as to kube-apiserver, and a reset lands
before the TLS handshake.

It runs its own asyncio loop on a daemon thread, holds at most ``max_connections``
connections and reads at most ``MAX_BODY`` of a request, and stops by itself after
``lifetime`` seconds if nobody stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 8 * 1024 * 1024
MAX_HEAD = 64 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


@dataclass(slots=True)
class Fault:
    method: str
    path: str
    times: int
    status: int | None  # None: drop the connection without answering (or cut the answer)
    retry_after: str | None = None
    cut: bool = False  # forward the request, then break the answer off after its head


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        ssl_context: ssl.SSLContext,
        *,
        lifetime: float = 900.0,
        max_connections: int = 256,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(upstream)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 443
        self._ssl = ssl_context
        self._lifetime = lifetime
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._seen: list[tuple[str, str]] = []
        self._lags: dict[str, float] = {}
        self._stalled: set[str] = set()
        self._resets = 0
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._listener: socket.socket
        self._acceptor: asyncio.Future[None]
        self._tasks: set[asyncio.Task[None]] = set()  # one per open connection
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    # ---- control, from the test's thread ----------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def fail(
        self, method: str, path: str, status: int, *, times: int = 1, retry_after: str | None = None
    ) -> None:
        """The next ``times`` requests ``method path`` (path without query) get ``status``."""
        with self._lock:
            self._faults.append(Fault(method, path, times, status, retry_after))

    def drop(self, method: str, path: str, *, times: int = 1) -> None:
        """The next ``times`` requests ``method path`` lose their connection, unanswered."""
        with self._lock:
            self._faults.append(Fault(method, path, times, None))

    def cut(self, method: str, path: str, *, times: int = 1) -> None:
        """The next ``times`` requests ``method path`` reach kube-apiserver, and their answers
        break off after the head and a few bytes of the body."""
        with self._lock:
            self._faults.append(Fault(method, path, times, None, cut=True))

    def lag(self, path: str, seconds: float) -> None:
        """Each piece of a response on ``path`` (open streams included) is relayed ``seconds``
        after kube-apiserver sent it; 0 ends the lag."""
        with self._lock:
            self._lags[path] = seconds

    def stall(self, path: str, stalled: bool = True) -> None:
        """While stalled, nothing more of any answer on ``path`` (open streams included, the
        head of a new one too) is relayed, and its connection stays open; False resumes."""
        with self._lock:
            (self._stalled.add if stalled else self._stalled.discard)(path)

    def reset_connections(self, times: int) -> None:
        """The next ``times`` connections are reset (RST) as soon as they are accepted."""
        with self._lock:
            self._resets = times

    def attempts(self, method: str, path: str) -> int:
        """How many requests ``method path`` arrived, faulted or forwarded."""
        with self._lock:
            return self._seen.count((method, path))

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._seen.clear()
            self._lags.clear()
            self._stalled.clear()
            self._resets = 0

    async def _unstalled(self, path: str) -> None:
        while True:
            with self._lock:
                if path not in self._stalled:
                    return
            await asyncio.sleep(0.05)

    def _take_reset(self) -> bool:
        with self._lock:
            if self._resets > 0:
                self._resets -= 1
                return True
        return False

    def _lag(self, path: str) -> float:
        with self._lock:
            return self._lags.get(path, 0.0)

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self._seen.append((method, path))
            for fault in self._faults:
                if (fault.method, fault.path) == (method, path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # ---- the loop ---------------------------------------------------------------------------
    async def _start(self) -> None:
        # Its own accept loop, not asyncio.start_server: a connection is reset before any
        # byte of it is read, and TLS begins before the stream reads (a start_tls after the
        # stream has read the ClientHello would wait for it forever).
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = asyncio.ensure_future(self._accept(listener))
        self._loop.call_later(self._lifetime, lambda: asyncio.ensure_future(self._shutdown()))

    async def _shutdown(self) -> None:
        self._acceptor.cancel()
        self._listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            task = asyncio.ensure_future(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            if self._take_reset():
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return  # closed below: with that linger, an RST
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=MAX_HEAD)
            protocol = asyncio.StreamReaderProtocol(reader)
            tls = {"ssl": self._tls, "ssl_handshake_timeout": 10} if self._tls else {}
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, **tls)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            while await self._one_request(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # ssl.SSLError is an OSError
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()
            self._slots.release()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serves one request; returns whether the connection may carry another."""
        method, target, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        body = await _read_body(reader, headers)
        path = target.split("?", 1)[0]
        fault = self._take(method, path)
        if fault is not None and fault.cut:
            await self._forward(method, target, headers, body, writer, path, cut=True)
            return False
        if fault is not None and fault.status is None:
            writer.transport.abort()
            return False
        if fault is not None:
            assert fault.status is not None
            writer.write(_status_response(fault.status, fault.retry_after))
            await writer.drain()
            return True
        return await self._forward(method, target, headers, body, writer, path)

    async def _forward(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        writer: asyncio.StreamWriter,
        path: str,
        *,
        cut: bool = False,
    ) -> bool:
        up_reader, up_writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl, server_hostname=self._host, limit=MAX_HEAD
        )
        try:
            lines = [f"{method} {target} HTTP/1.1"]
            lines += [f"{n}: {v}" for n, v in headers if n.lower() not in HOP_BY_HOP]
            lines += [f"Content-Length: {len(body)}", "Connection: close"]
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            kept = [h for h in header_lines if h and h.split(":", 1)[0].lower() != "connection"]
            response_headers = _headers(header_lines)
            framed = _get(response_headers, "content-length") is not None or (
                (_get(response_headers, "transfer-encoding") or "").lower() == "chunked"
            )
            if not framed:
                kept.append("Connection: close")  # the body ends where the connection does
            await self._unstalled(path)
            writer.write(("\r\n".join([status_line, *kept]) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            if cut:
                writer.write(await up_reader.read(16))
                await writer.drain()
                writer.transport.abort()
                return False
            await self._relay(_body_pieces(up_reader, response_headers), writer, path)
            return framed
        finally:
            up_writer.transport.abort()

    async def _relay(
        self, pieces: AsyncIterator[bytes], dst: asyncio.StreamWriter, path: str
    ) -> None:
        """Writes each piece as it comes, or, while ``path`` lags, when it falls due: the
        read goes on meanwhile, so the lag does not add up over the pieces."""
        loop = asyncio.get_running_loop()
        due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=4096)

        async def write() -> None:
            while (item := await due.get()) is not None:
                wait = item[0] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._unstalled(path)
                dst.write(item[1])
                await dst.drain()

        writer = asyncio.ensure_future(write())
        try:
            async for piece in pieces:
                if writer.done():
                    break  # the client went away: its error is raised below
                await due.put((loop.time() + self._lag(path), piece))
            else:
                await due.put(None)
            await writer
        finally:
            writer.cancel()


def serving_context(cert: str, key: str) -> ssl.SSLContext:
    """A server-side TLS context (kube-apiserver's serving pair fits: it names 127.0.0.1)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            out.append((name.strip(), value.strip()))
    return out


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for n, v in headers if n.lower() == name), None)


def _parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    return method, target, _headers(lines)


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    if (_get(headers, "transfer-encoding") or "").lower() == "chunked":
        chunks: list[bytes] = []
        size = 0
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            size += n
            if size > MAX_BODY:
                raise ValueError("request body too large")
            data = await reader.readexactly(n + 2)
            if n == 0:
                return b"".join(chunks)
            chunks.append(data[:-2])
    length = int(_get(headers, "content-length") or 0)
    if length > MAX_BODY:
        raise ValueError("request body too large")
    return await reader.readexactly(length)


async def _body_pieces(
    src: asyncio.StreamReader, headers: list[tuple[str, str]]
) -> AsyncIterator[bytes]:
    """A response body as it arrives, framing and all (each chunk whole when chunked)."""
    if (_get(headers, "transfer-encoding") or "").lower() == "chunked":
        while True:
            size_line = await src.readuntil(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                yield size_line + await src.readuntil(b"\r\n")  # kube sends no trailers
                return
            yield size_line + await src.readexactly(n + 2)
    length = _get(headers, "content-length")
    left = int(length) if length is not None else -1
    while left != 0:
        data = await src.read(65536 if left < 0 else min(left, 65536))
        if not data:
            return
        if left > 0:
            left -= len(data)
        yield data


def _status_response(code: int, retry_after: str | None) -> bytes:
    reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(
        code, "InjectedFault"
    )
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"injected by the fault proxy: {code}",
            "reason": reason,
            "code": code,
        }
    ).encode()
    lines = [
        f"HTTP/1.1 {code} Injected",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def behind(
    faults: FaultProxy,
    controlplane: Any,
    proxy_factory: Callable[..., Any],
    tmp: Path,
    *flags: str,
) -> Iterator[Any]:
    """A watchcache whose kubeconfig points at the fault proxy (HTTPS, kube's CA), stopped
    before the fault proxy is."""
    kubeconfig = controlplane.write_kubeconfig(
        tmp / "behind-faults.kubeconfig", controlplane.admin, server=faults.base
    )
    proxy = proxy_factory("--kubeconfig", str(kubeconfig), *flags)
    yield proxy
    proxy.proc.terminate()
    proxy.proc.wait(15)
