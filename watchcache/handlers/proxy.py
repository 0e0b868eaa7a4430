"""Pass-through: a request sent on to the API server and its answer streamed back.

The response streams: it is written and flushed chunk by chunk, each flush pausing the
upstream read (backpressure), so a ``?watch=true`` response streams. A request body is
gathered (it is at most 3 MiB, the Kubernetes limit, and a larger one is refused with 413
as soon as it passes the limit, never held whole) so that a transient failure can be
retried with the same bytes. Retries are decided on the response's status line, before any
byte of it reaches the client.

A successful write to a cached resource is held until the cache has seen it
(read-your-writes): the client's next read, answered from the cache, shows its write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tornado import httputil, iostream, web

from watchcache.handlers.base import MAX_BODY, BaseHandler, request_too_large  # noqa: F401
from watchcache.retry import may_duplicate
from watchcache.status import StatusError
from watchcache.upstream import UpstreamError

log = logging.getLogger(__name__)

# Request headers the client may pass on. Never Authorization or Impersonate-*: upstream
# calls carry the server's credentials, and a client must not borrow them to be someone else.
FORWARD_REQUEST_HEADERS = (
    "Accept",
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
    return {n: request.headers[n] for n in FORWARD_REQUEST_HEADERS if n in request.headers}


class _Relay:
    """A ResponseSink writing to the downstream handler, flush by flush.

    It swallows a response that will be retried, and holds a successful one whole when
    ``hold`` is set, so that the handler can release it once the cache has caught up.
    """

    def __init__(self, handler: web.RequestHandler, retry: Callable[[int], bool], hold: bool):
        self.handler = handler
        self.retry = retry
        self.hold = hold
        self.started = False
        self.retry_code: int | None = None
        self.retry_after: str | None = None
        self.held: tuple[int, str, httputil.HTTPHeaders] | None = None
        self.chunks: list[bytes] = []

    def head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        if self.retry(code):
            self.retry_code, self.retry_after = code, headers.get("Retry-After")
            return None
        if self.hold and 200 <= code < 300:
            self.held = (code, reason, headers)
            return None
        self.started = True
        self.send_head(code, reason, headers)
        # A body of unknown length may be a stream (a watch): the client must see the
        # headers now, not when the first event happens to arrive.
        return None if "Content-Length" in headers else self.handler.flush()

    def send_head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> None:
        h = self.handler
        h.set_status(code, reason or httputil.responses.get(code, "Unknown"))
        h.clear_header("Content-Type")
        for name, value in headers.get_all():
            if name.lower() not in DROP_RESPONSE_HEADERS:
                h.add_header(name, value)

    def data(self, chunk: bytes) -> Awaitable[None] | None:
        if self.retry_code is not None:
            return None
        if self.held is not None:
            self.chunks.append(chunk)
            return None
        self.handler.write(chunk)
        return self.handler.flush()

    def end(self) -> None:
        pass


class PassThroughHandler(BaseHandler):
    """Forwards any method on a served path to the API server, unchanged."""

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        if self.request.method == "OPTIONS":
            await super().endpoint()
        await self.forward()

    def hold_for_cache(self) -> bool:
        """Whether a successful answer waits for the cache (read-your-writes)."""
        return False

    async def wait_for_cache(self, code: int, body: bytes) -> None:
        """Returns once the cache has seen the write answered by ``body``."""

    async def forward(self) -> None:
        """Sends the request on, retrying transient failures, and relays the answer."""
        if self._finished:
            return
        method = self.request.method or "GET"
        body = self.body if method in ("POST", "PUT", "PATCH", "DELETE") else None
        if method == "DELETE" and not body:
            body = None
        policy = self.runtime.retry
        once = may_duplicate(method, body)
        hold = self.hold_for_cache() and method != "GET"
        started = time.monotonic()
        attempt = 0
        while True:
            elapsed = time.monotonic() - started

            def retry(code: int, attempt: int = attempt, elapsed: float = elapsed) -> bool:
                return not once and policy.delay(attempt, elapsed, code=code) is not None

            relay = _Relay(self, retry, hold)
            try:
                await self.runtime.upstream.send(
                    method,
                    self.request.uri or "/",
                    relay,
                    headers=forward_headers(self.request),
                    body=body,
                )
            except UpstreamError as exc:
                if relay.started:
                    log.info("upstream stream ended early: %s", exc)
                    break
                wait = None if once else policy.delay(attempt, elapsed, code=None)
                if wait is None:
                    raise StatusError(
                        503, f"the Kubernetes API server is unavailable: {exc}"
                    ) from exc
                log.info("%s %s: %s; retry in %.1fs", method, self.request.path, exc, wait)
                await asyncio.sleep(wait)
                attempt += 1
                continue
            except iostream.StreamClosedError:
                return  # the client went away; nothing to answer
            if relay.retry_code is not None:
                wait = policy.delay(
                    attempt, elapsed, code=relay.retry_code, retry_after=relay.retry_after
                )
                assert wait is not None
                log.info(
                    "%s %s: HTTP %d; retry in %.1fs",
                    method,
                    self.request.path,
                    relay.retry_code,
                    wait,
                )
                await asyncio.sleep(wait)
                attempt += 1
                continue
            break
        if relay.held is not None:
            code, reason, headers = relay.held
            payload = b"".join(relay.chunks)
            await self.wait_for_cache(code, payload)
            relay.send_head(code, reason, headers)
            self.write(payload)
        if not self._finished:
            self.finish()
