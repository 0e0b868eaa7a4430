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
is sent exactly once, not even replayed on a fresh connection. A request that finds every
upstream connection of the bound (``--max-upstream-connections``) in use, and none released
within the pool's wait, is answered 429 with ``Retry-After: 1``, as kube-apiserver's own
max-in-flight filter answers, and is not retried.

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
from urllib.parse import urlencode

from tornado import httputil, iostream

from watchcache.auth.impersonation import impersonation_headers
from watchcache.http.adapter import refuse_method
from watchcache.kube.gourl import parse_query
from watchcache.kube.status import StatusError, not_found_path, too_many_requests
from watchcache.middleware.core import Headers, Request, Response, Writer
from watchcache.upstream.client import (
    BUSY_RETRY_AFTER,
    Upstream,
    UpstreamBusy,
    UpstreamError,
)
from watchcache.upstream.retry import (
    INSPECT_LIMIT,
    INSPECTED,
    RetryPolicy,
    may_duplicate,
    request_deadline,
)

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


def forward_headers(headers: Headers) -> dict[str, str]:
    return {n: headers[n] for n in FORWARD_REQUEST_HEADERS if n in headers}


def relayed(headers: httputil.HTTPHeaders) -> Headers:
    """The upstream answer's headers a client gets: all but the hop-by-hop ones."""
    return Headers((n, v) for n, v in headers.get_all() if n.lower() not in DROP_RESPONSE_HEADERS)


def upstream_target(request: Request) -> str:
    """What is asked upstream: the client's own target, byte for byte, unless a middleware
    (or the cache's own selectors) changed the path or the query."""
    raw_path, _, raw_query = request.target.partition("?")
    if request.path == raw_path and request.query == parse_query(raw_query):
        return request.target
    encoded = urlencode([(k, v) for k, vs in request.query.items() for v in vs])
    return request.path + ("?" + encoded if encoded else "")


# Given an answer's status code (None: no answer), Retry-After and body (None: not read),
# the seconds to wait before sending the request again, or None not to.
RetryDecision = Callable[[int | None, str | None, bytes | None], float | None]


class Relay:
    """The ResponseSink of one upstream exchange.

    It swallows a response that will be retried, and holds a successful one whole when
    ``hold`` is set, so that the endpoint can release it once the cache has caught up. An
    answer whose body tells whether it may be retried (retry.INSPECTED) is held, bounded,
    until its end, and decided then. An answer passed on is ``started``: its chunks wait
    (and the upstream read with them) until the adapter attaches the client's writer.
    """

    def __init__(self, decide: RetryDecision, hold: bool) -> None:
        self.decide = decide
        self.hold = hold
        # A status line arrived: the server has handled the request, whatever follows.
        self.answered = False
        # The answer is passed on to the client: it can no longer be retried or replaced.
        self.started = False
        self.passed: tuple[int, httputil.HTTPHeaders] | None = None
        self.retry_code: int | None = None
        self.retry_wait: float | None = None  # set: this answer is dropped and retried
        self.held: tuple[int, str, httputil.HTTPHeaders] | None = None
        self.chunks: list[bytes] = []
        self.deferred: tuple[int, str, httputil.HTTPHeaders] | None = None
        self.deferred_size = 0
        loop = asyncio.get_running_loop()
        # Set once the answer is passed on, or the exchange is over: the endpoint decides then.
        self.ready: asyncio.Future[None] = loop.create_future()
        self.out: Writer | None = None
        self.waiting: list[bytes] = []  # passed-on chunks from before the writer came
        self.attached: asyncio.Future[None] = loop.create_future()

    def signal(self, *_: object) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def head(self, code: int, reason: str, headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.answered = True
        if code in INSPECTED:
            self.deferred = (code, reason, headers)
            return None
        self.decided(code, reason, headers, None)
        return None

    def decided(
        self, code: int, reason: str, headers: httputil.HTTPHeaders, body: bytes | None
    ) -> None:
        # Decided here, once, with the Retry-After and the time spent so far, so that what
        # is decided is also what is done.
        wait = self.decide(code, headers.get("Retry-After"), body)
        if wait is not None:
            self.retry_code, self.retry_wait = code, wait
            return
        if self.hold and 200 <= code < 300:
            self.held = (code, reason, headers)
            return
        self.started = True
        self.passed = (code, headers)
        self.signal()

    def settle(self, body: bytes | None) -> None:
        """Decides a deferred answer; one that is not retried is passed on as it came."""
        assert self.deferred is not None
        code, reason, headers = self.deferred
        self.deferred = None
        chunks, self.chunks = self.chunks, []
        self.decided(code, reason, headers, body)
        if self.held is not None:
            self.chunks = chunks
        elif self.started:
            self.waiting.extend(chunks)

    def data(self, chunk: bytes) -> Awaitable[None] | None:
        if self.retry_wait is not None:
            return None
        if self.deferred is not None:
            self.chunks.append(chunk)
            self.deferred_size += len(chunk)
            if self.deferred_size > INSPECT_LIMIT:  # past the limit it is no Status:
                self.settle(None)  # decided on its code alone
                return self.attached if self.started else None
            return None
        if self.held is not None:
            self.chunks.append(chunk)
            return None
        if self.out is None:
            self.waiting.append(chunk)
            return self.attached  # the upstream read waits for the client's writer
        return self.flushed(self.out.write(chunk))

    async def flushed(self, write: Awaitable[None]) -> None:
        # The client left mid-stream: its disconnect ends the exchange. Raised into
        # tornado's read of the upstream answer, this would be logged as a traceback.
        with contextlib.suppress(iostream.StreamClosedError):
            await write

    def end(self) -> None:
        if self.deferred is not None:
            self.settle(b"".join(self.chunks))

    def broke(self) -> None:
        """A deferred answer broke off before its end: decided on its code alone, and
        nothing of it is passed on."""
        if self.deferred is not None:
            code, _, headers = self.deferred
            self.deferred, self.chunks = None, []
            wait = self.decide(code, headers.get("Retry-After"), None)
            if wait is not None:
                self.retry_code, self.retry_wait = code, wait


class RelayStream:
    """The body of an answer passed on: the chunks that came before the client's writer,
    then the rest as it arrives, flush by flush (each flush pausing the upstream read)."""

    def __init__(self, relay: Relay, exchange: asyncio.Future[None], what: str) -> None:
        self.relay = relay
        self.exchange = exchange
        self.what = what

    async def run(self, out: Writer) -> None:
        relay = self.relay
        assert relay.passed is not None
        if "Content-Length" not in relay.passed[1]:
            # A body of unknown length may be a stream (a watch): the client must see the
            # head now, not when the first event happens to arrive.
            await out.start()
        relay.out = out
        waiting, relay.waiting = relay.waiting, []
        if waiting:
            await relay.flushed(out.write(b"".join(waiting)))
        if not relay.attached.done():
            relay.attached.set_result(None)
        try:
            await self.exchange
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the server itself is stopping
            # else the client went away: the upstream request was abandoned
        except UpstreamError as exc:
            # The client has the head and part of the body. Ending the answer cleanly
            # would pass a truncated one off as whole: break it off too.
            log.warning("%s: answer broke off: %s", self.what, exc)
            out.abort()


def decide_after_failure(relay: Relay, exc: UpstreamError, wait: float | None) -> float:
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


class Forward:
    """Sends a request on to the API server, retrying transient failures, and answers with
    what it answers. Given ``written``, a successful write's answer is held until that
    returns (read-your-writes)."""

    def __init__(
        self, upstream: Upstream, retry: RetryPolicy, timeout: float, *, impersonate: bool = False
    ) -> None:
        self.upstream = upstream
        self.retry = retry
        self.timeout = timeout  # no status line within this long counts as no answer
        # Sent as the authenticated caller (Impersonate-*), so that the API server's RBAC,
        # admission and audit see who asked; never the client's own Impersonate-* headers.
        self.impersonate = impersonate

    async def __call__(
        self,
        request: Request,
        written: Callable[[Request, int, bytes], Awaitable[None]] | None = None,
    ) -> Response:
        method = request.method
        body: bytes | None = request.body if method in ("POST", "PUT", "PATCH", "DELETE") else None
        if method == "DELETE" and not body:
            body = None
        policy = self.retry
        once = may_duplicate(method, body)
        deadline = request_deadline(request.query)
        hold = written is not None and method != "GET"
        target = upstream_target(request)
        headers: list[tuple[str, str]] = list(forward_headers(request.headers).items())
        if self.impersonate and request.user is not None:
            headers += impersonation_headers(request.user)
        what = f"{method} {request.path}"
        exchange: asyncio.Future[None] | None = None
        gone = False

        def disconnected() -> None:
            # A forwarded watch whose client left must not wait for its next event.
            nonlocal gone
            gone = True
            if exchange is not None and not exchange.done():
                exchange.cancel()

        request.on_disconnect(disconnected)

        def ended() -> None:
            # The stream was never run (a middleware answered instead): let the upstream go.
            if exchange is not None and not exchange.done():
                exchange.cancel()

        request.on_end(ended)
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

            relay = Relay(decide, hold)
            exchange = asyncio.ensure_future(
                self.upstream.send(
                    method, target, relay, headers=headers, body=body, replay=not once
                )
            )
            exchange.add_done_callback(relay.signal)

            def no_answer(relay: Relay = relay, exchange: asyncio.Future[None] = exchange) -> None:
                if not relay.started and relay.held is None:
                    exchange.cancel()

            # An API server that accepts the request but never answers must not hold the
            # client forever.
            timer = asyncio.get_running_loop().call_later(self.timeout, no_answer)
            try:
                await relay.ready
            except asyncio.CancelledError:
                exchange.cancel()
                raise  # this request itself is being stopped
            finally:
                timer.cancel()
            if relay.started:
                code, upstream_headers = relay.passed  # type: ignore[misc]
                return Response(
                    status=code,
                    headers=relayed(upstream_headers),
                    body=RelayStream(relay, exchange, what),
                )
            if gone:
                raise iostream.StreamClosedError()  # the client went away; nothing to answer
            try:
                exchange.result()
            except asyncio.CancelledError:
                relay.broke()
                if relay.retry_wait is None:
                    failure = UpstreamError(f"no answer within {self.timeout:g}s")
                    relay.retry_wait = decide_after_failure(relay, failure, decide(None, None))
            except UpstreamBusy as exc:
                # Our own overload, not kube-apiserver's: refused at once, as its max-in-flight
                # filter refuses, and never retried here (the wait for a connection was the
                # retry; another would only hold the client longer and queue more).
                raise too_many_requests(str(exc), BUSY_RETRY_AFTER) from exc
            except UpstreamError as exc:
                relay.broke()
                if relay.retry_wait is None:  # else a retried answer broke off: no matter
                    relay.retry_wait = decide_after_failure(relay, exc, decide(None, None))
            if relay.retry_wait is None:
                break
            log.info(
                "%s: %s; retry in %.1fs",
                what,
                f"HTTP {relay.retry_code}" if relay.retry_code else "no answer",
                relay.retry_wait,
            )
            await asyncio.sleep(relay.retry_wait)
            attempt += 1
        if relay.held is None:
            raise StatusError(502, "the Kubernetes API server sent no answer")
        code, _, upstream_headers = relay.held
        payload = b"".join(relay.chunks)
        if written is not None:
            await written(request, code, decoded(payload, upstream_headers))
        return Response(status=code, headers=relayed(upstream_headers), body=payload)


class PassThrough:
    """Any method on a served path the cache does not answer: sent on, unchanged."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward

    async def __call__(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            raise refuse_method(request.resource, request.path_params.get("namespace"))
        return await self.forward(request)


class NamespaceGet:
    """``GET /api/v1/namespaces/<name>``, passed through. Namespaces are not served, but
    kubectl asks for the namespace after a 404 in it, to tell "no such object" from "no such
    namespace"; without this its message would be wrong. Only GET: nothing else of the core
    group is served."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            raise not_found_path()
        return await self.forward(request)
