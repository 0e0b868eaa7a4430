"""Pass-through: a request sent on to the API server and its answer streamed back.

The response streams: it is written and flushed chunk by chunk, each flush pausing the
upstream read (backpressure), so a ``?watch=true`` response streams. A request body is
gathered (it is at most 3 MiB, the Kubernetes limit, and a larger one is refused with 413
as soon as it passes the limit, never held whole) so that a transient failure can be
retried with the same bytes. Retries are decided on the response's status line, before any
byte of it reaches the client. A status line other than a transient failure means the
server has handled the request: if its answer then breaks off, the request is not sent
again; a held answer becomes a 502, a relayed one is broken off for the client too, never
ended as if it were whole. A create that could make a duplicate (only ``generateName``)
is sent exactly once, not even replayed on a fresh connection.

A successful write to a cached resource is held until the cache has seen it
(read-your-writes): the client's next read, answered from the cache, shows its write.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import TYPE_CHECKING, cast

from tornado import httputil, iostream, web

from watchcache.http.base import BaseHandler
from watchcache.kube.status import StatusError
from watchcache.upstream.client import UpstreamError
from watchcache.upstream.retry import INSPECT_LIMIT, INSPECTED, may_duplicate, request_deadline

if TYPE_CHECKING:
    from tornado.http1connection import HTTP1Connection

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


# Given an answer's status code (None: no answer), Retry-After and body (None: not read),
# the seconds to wait before sending the request again, or None not to.
RetryDecision = Callable[[int | None, str | None, bytes | None], float | None]


class _Relay:
    """A ResponseSink writing to the downstream handler, flush by flush.

    It swallows a response that will be retried, and holds a successful one whole when
    ``hold`` is set, so that the handler can release it once the cache has caught up. An
    answer whose body tells whether it may be retried (retry.INSPECTED) is held, bounded,
    until its end, and decided then.
    """

    def __init__(self, handler: web.RequestHandler, decide: RetryDecision, hold: bool):
        self.handler = handler
        self.decide = decide
        self.hold = hold
        # A status line arrived: the server has handled the request, whatever follows.
        self.answered = False
        # Part of the answer reached the client: it can no longer be retried or replaced.
        self.started = False
        self.retry_code: int | None = None
        self.retry_wait: float | None = None  # set: this answer is dropped and retried
        self.held: tuple[int, str, httputil.HTTPHeaders] | None = None
        self.chunks: list[bytes] = []
        self.deferred: tuple[int, str, httputil.HTTPHeaders] | None = None
        self.deferred_size = 0

    def head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.answered = True
        if code in INSPECTED:
            self.deferred = (code, reason, headers)
            return None
        return self._decided(code, reason, headers, None)

    def _decided(
        self, code: int, reason: str, headers: httputil.HTTPHeaders, body: bytes | None
    ) -> Awaitable[None] | None:
        # Decided here, once, with the Retry-After and the time spent so far, so that what
        # is decided is also what is done.
        wait = self.decide(code, headers.get("Retry-After"), body)
        if wait is not None:
            self.retry_code, self.retry_wait = code, wait
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
        h.set_status(code, reason or responses.get(code, "Unknown"))
        h.clear_header("Content-Type")
        h.clear_header("Cache-Control")  # the upstream's own, if any, is relayed below
        for name, value in headers.get_all():
            if name.lower() not in DROP_RESPONSE_HEADERS:
                h.add_header(name, value)

    def _settle(self, body: bytes | None, *, flush: bool) -> Awaitable[None] | None:
        """Decides a deferred answer; one that is not retried is passed on as it came."""
        assert self.deferred is not None
        code, reason, headers = self.deferred
        self.deferred = None
        chunks, self.chunks = self.chunks, []
        flushed = self._decided(code, reason, headers, body)
        if self.retry_wait is not None:
            return None
        if self.held is not None:
            self.chunks = chunks
            return None
        for chunk in chunks:
            self.handler.write(chunk)
        if flush:
            return self.handler.flush()
        if isinstance(flushed, asyncio.Future):
            # Nobody awaits it (the answer ends here): a client gone meanwhile is no error.
            flushed.add_done_callback(lambda f: f.cancelled() or f.exception())
        return None

    def data(self, chunk: bytes) -> Awaitable[None] | None:
        if self.retry_wait is not None:
            return None
        if self.deferred is not None:
            self.chunks.append(chunk)
            self.deferred_size += len(chunk)
            # Past the limit it is no Status: decided on its code alone.
            return self._settle(None, flush=True) if self.deferred_size > INSPECT_LIMIT else None
        if self.held is not None:
            self.chunks.append(chunk)
            return None
        self.handler.write(chunk)
        return self._flushed()

    async def _flushed(self) -> None:
        # The client left mid-stream: on_connection_close ends the exchange. Raised into
        # tornado's read of the upstream answer, this would be logged as a traceback.
        with contextlib.suppress(iostream.StreamClosedError):
            await self.handler.flush()

    def end(self) -> None:
        if self.deferred is not None:
            self._settle(b"".join(self.chunks), flush=False)

    def broke(self) -> None:
        """A deferred answer broke off before its end: decided on its code alone, and
        nothing of it is passed on."""
        if self.deferred is not None:
            code, _, headers = self.deferred
            self.deferred, self.chunks = None, []
            wait = self.decide(code, headers.get("Retry-After"), None)
            if wait is not None:
                self.retry_code, self.retry_wait = code, wait


def decide_after_failure(relay: _Relay, exc: UpstreamError, wait: float | None) -> float:
    """The wait before sending again a request whose answer never came whole, or the error
    to answer instead."""
    if relay.answered:
        # A held answer broke off: the server has applied the request, and sending it
        # again could apply it twice (an append, a create).
        raise StatusError(
            502,
            "the connection to the Kubernetes API server broke during its answer; the "
            f"request may have been applied: {exc}",
        ) from exc
    if wait is None:
        raise StatusError(503, f"the Kubernetes API server is unavailable: {exc}") from exc
    return wait


def decoded(body: bytes, headers: httputil.HTTPHeaders) -> bytes:
    """The answer's JSON: kube-apiserver gzips one over 128 KiB for a client that accepts it.
    Undecodable bytes are returned as they are (the cache wait then gives up on them)."""
    if headers.get("Content-Encoding", "").lower() != "gzip":
        return body
    try:
        return gzip.decompress(body)
    except (OSError, EOFError):
        return body


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

    _exchange: asyncio.Future[None] | None = None
    _client_gone = False

    def _no_answer(self, relay: _Relay) -> None:
        if not relay.started and relay.held is None and self._exchange is not None:
            self._exchange.cancel()

    def on_connection_close(self) -> None:
        # A forwarded watch whose client left must not wait for its next event to notice.
        self._client_gone = True
        if self._exchange is not None and not self._exchange.done():
            self._exchange.cancel()
        super().on_connection_close()

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
        deadline = request_deadline(getattr(self, "query", {}))
        hold = self.hold_for_cache() and method != "GET"
        started = time.monotonic()
        attempt = 0
        while True:

            def decide(
                code: int | None,
                retry_after: str | None,
                answer: bytes | None = None,
                attempt: int = attempt,
            ) -> float | None:
                if once:
                    return None
                elapsed = time.monotonic() - started
                return policy.delay(
                    attempt,
                    elapsed,
                    code=code,
                    retry_after=retry_after,
                    body=answer,
                    deadline=deadline,
                )

            relay = _Relay(self, decide, hold)
            self._exchange = asyncio.ensure_future(
                self.runtime.upstream.send(
                    method,
                    self.request.uri or "/",
                    relay,
                    headers=forward_headers(self.request),
                    body=body,
                    replay=not once,
                )
            )
            # An API server that accepts the request but never answers must not hold the
            # client forever: no status line within upstream_timeout counts as no answer.
            timer = asyncio.get_running_loop().call_later(
                self.runtime.settings.upstream_timeout, self._no_answer, relay
            )
            try:
                await self._exchange
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this handler itself is being stopped
                if self._client_gone:
                    return  # the client went away: the upstream request was abandoned
                timeout = self.runtime.settings.upstream_timeout
                relay.broke()
                if relay.retry_wait is None:
                    relay.retry_wait = decide_after_failure(
                        relay, UpstreamError(f"no answer within {timeout:g}s"), decide(None, None)
                    )
            except UpstreamError as exc:
                if relay.started:
                    # The client has the head and part of the body. Ending the answer
                    # cleanly would pass a truncated one off as whole: break it off too.
                    log.warning("%s %s: answer broke off: %s", method, self.request.path, exc)
                    cast("HTTP1Connection", self.request.connection).close()
                    return
                relay.broke()
                if relay.retry_wait is None:  # else a retried answer broke off: no matter
                    relay.retry_wait = decide_after_failure(relay, exc, decide(None, None))
            except iostream.StreamClosedError:
                return  # the client went away; nothing to answer
            finally:
                timer.cancel()
            if relay.retry_wait is None:
                break
            log.info(
                "%s %s: %s; retry in %.1fs",
                method,
                self.request.path,
                f"HTTP {relay.retry_code}" if relay.retry_code else "no answer",
                relay.retry_wait,
            )
            await asyncio.sleep(relay.retry_wait)
            attempt += 1
        if relay.held is not None:
            code, reason, headers = relay.held
            payload = b"".join(relay.chunks)
            await self.wait_for_cache(code, decoded(payload, headers))
            relay.send_head(code, reason, headers)
            self.write(payload)
        if not self._finished:
            self.finish()
