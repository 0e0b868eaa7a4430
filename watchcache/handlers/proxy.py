"""Pass-through: a request streamed to the API server and its answer streamed back.

Neither body is held whole: the request body flows through a small queue as it arrives
(``data_received`` waits while the queue is full), and the response is written and
flushed chunk by chunk, with each flush pausing the upstream read (backpressure), so a
``?watch=true`` response streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable

from tornado import httputil, iostream, web

from watchcache.handlers.base import BaseHandler
from watchcache.status import StatusError
from watchcache.upstream import UpstreamError

log = logging.getLogger(__name__)

# The Kubernetes API server's own limit on a request body (3 MiB).
MAX_BODY = 3 * 1024 * 1024

# Request headers the client may pass on. Never Authorization or Impersonate-*: upstream
# calls carry the server's credentials, and a client must not borrow them to be someone else.
FORWARD_REQUEST_HEADERS = (
    "Accept",
    "Content-Length",
    "Accept-Encoding",
    "Content-Type",
    "Content-Encoding",
    "User-Agent",
    "If-None-Match",
    "X-Request-Id",
)

# Hop-by-hop headers (RFC 9110 7.6.1) and those tornado sets itself.
DROP_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "date", "server"}
)


def forward_headers(request: httputil.HTTPServerRequest) -> dict[str, str]:
    return {
        name: request.headers[name] for name in FORWARD_REQUEST_HEADERS if name in request.headers
    }


class _Relay:
    """A ResponseSink writing straight to the downstream handler, flush by flush."""

    def __init__(self, handler: web.RequestHandler) -> None:
        self.handler = handler
        self.started = False

    def head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        h = self.handler
        h.set_status(code, reason or httputil.responses.get(code, "Unknown"))
        h.clear_header("Content-Type")
        for name, value in headers.get_all():
            if name.lower() not in DROP_RESPONSE_HEADERS:
                h.add_header(name, value)
        self.started = True
        # A body of unknown length may be a stream (a watch): the client must see the
        # headers now, not when the first event happens to arrive.
        return None if "Content-Length" in headers else h.flush()

    def data(self, chunk: bytes) -> Awaitable[None]:
        self.handler.write(chunk)
        return self.handler.flush()

    def end(self) -> None:
        pass


@web.stream_request_body
class PassThroughHandler(BaseHandler):
    """Forwards any method on a served path to the API server, unchanged."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def prepare(self) -> Awaitable[None] | None:
        self._received = 0
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._task: asyncio.Task[None] | None = None
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise request_too_large()
        self._relay = _Relay(self)
        self._chunks: list[bytes] | None = None
        method = self.request.method
        if method in ("POST", "PUT", "PATCH") or (method == "DELETE" and length is not None):
            self._queue = asyncio.Queue(maxsize=4)
            self._task = asyncio.ensure_future(self._send(self._body_chunks()))
        elif method == "DELETE":
            # A chunked DeleteOptions body: tornado can only stream a DELETE body with a
            # known length, and these bodies are small, so this one is gathered first.
            self._chunks = []
        else:
            self._task = asyncio.ensure_future(self._send(None))
        return None

    async def _body_chunks(self) -> AsyncIterator[bytes]:
        assert self._queue is not None
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        self._received += len(chunk)
        if self._finished:
            return
        if self._received > MAX_BODY:
            # Answer now; tornado then drops the rest of the body instead of handing it on.
            if self._task is not None:
                self._task.cancel()
            self.send_status(request_too_large())
            return
        if self._queue is not None:
            await self._queue.put(chunk)
        elif self._chunks is not None:
            self._chunks.append(chunk)

    async def _send(self, body: AsyncIterator[bytes] | bytes | None) -> None:
        runtime = self.runtime
        await runtime.upstream.send(
            self.request.method or "GET",
            self.request.uri or "/",
            self._relay,
            headers=forward_headers(self.request),
            body=body,
        )

    async def _finish_proxy(self) -> None:
        if self._finished:
            return
        if self._queue is not None:
            await self._queue.put(None)
        elif self._chunks is not None:
            self._task = asyncio.ensure_future(self._send(b"".join(self._chunks)))
        assert self._task is not None
        try:
            await self._task
        except UpstreamError as exc:
            if self._relay.started:
                log.info("upstream stream ended early: %s", exc)
                self.finish()
                return
            raise StatusError(503, f"the Kubernetes API server is unavailable: {exc}") from exc
        except iostream.StreamClosedError:
            return  # the client went away; nothing to answer
        if not self._finished:
            self.finish()

    def on_connection_close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    get = head = post = put = patch = delete = _finish_proxy  # type: ignore[assignment]


def request_too_large() -> StatusError:
    return StatusError(413, "Request entity too large: limit is 3145728")
