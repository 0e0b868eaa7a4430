"""The HTTP exchange: a request off tornado's HTTP/1.1 connection, the middleware chain, bytes out.

``Router`` is the connection delegate: it picks each request's ``Route`` on the path as Go
decodes it (watchcache.kube.gourl) and hands the request to an ``Exchange``, one per request.
The exchange builds the ``Request`` (query decoded with Go's rules, the body gathered under
the 3 MiB bound), runs the chain, and writes what comes back once: a bytes body with its ETag
check (304) and gzip, or a ``Stream`` that writes itself through a ``Writer`` after its head.
Failures found before an endpoint runs (a method the path refuses, a bad ``Content-Length``,
``?timeout=``, a body over the limit) are answered through the chain as well, so that every
middleware sees every answer (authentication included). Only a path Go cannot decode is
answered outside it.

This sits on tornado's HTTP layer, not on ``tornado.web``: a ``RequestHandler`` costs about
as much again as the connection beneath it (its own headers object, a parsed and deep-copied
query, a task per request), and watchcache needs none of it. The connection's public API only:
``write_headers``, ``write``, ``finish``, ``detach``, ``set_close_callback``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http.client import responses
from typing import TYPE_CHECKING, Any, cast

from tornado import httputil, iostream

from watchcache.http.conditional import GZIP_THRESHOLD, encoded, etag_matches
from watchcache.http.tls import JudgedStream
from watchcache.kube.bodies import MAX_BODY, content_length, request_too_large
from watchcache.kube.gourl import decode_path, parse_query
from watchcache.kube.requestinfo import check_deadline
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError, method_not_allowed, not_found_path
from watchcache.middleware.core import Endpoint, Headers, Next, Request, Response

if TYPE_CHECKING:
    from tornado.http1connection import HTTP1Connection

log = logging.getLogger("watchcache.http")

# Answers larger than this leave with their head sent first (see Exchange.send_bytes).
SEPARATE_HEAD_ABOVE = 256 * 1024
MAX_PIECES = 1000  # pieces in one write_now; sendmsg takes at most IOV_MAX (1,024) buffers
SHARE_ABOVE = 64 * 1024  # a piece of a write's rest handed to the stream as it is, uncopied
# The methods a route serves itself; any other is first put to the route's ``other``.
STANDARD_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
# As kube-apiserver sends on every answer: no shared cache may keep a user's reply.
CACHE_CONTROL = "no-cache, private"
# An answer of these statuses carries no body, and no header describing one.
NO_BODY = frozenset((204, 304))
REPRESENTATION = ("Content-Encoding", "Content-Language", "Content-Type")
# A header value may hold tab, visible ASCII and obs-text (RFC 9110 5.5), nothing else.
HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Bytes Go's server accepts in a Host header (httpguts.ValidHostHeader).
HOST = re.compile(r"[0-9A-Za-z!$%&'()*+,\-.:;=\[\]_~]*")
LOGGED_URI = 512  # characters of a request's URI (and 32 of its method) in the log


def refuse_method(spec: ResourceSpec | None, namespace: str | None) -> StatusError:
    """What kube-apiserver answers to a method a path does not serve: on a resource, 405
    naming it, but 404 on the all-namespaces list of a namespaced one (it has no verb but
    GET there); elsewhere its generic 405."""
    if spec is None:
        return method_not_allowed()
    if spec.namespaced and not namespace:
        return not_found_path()
    err = method_not_allowed({"group": spec.group, "kind": spec.plural})
    kind = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
    # kube's message names the verb, which is empty for a method it does not know.
    err.message = f' is not supported on resources of kind "{kind}"'
    return err


def refuse(request: Request) -> StatusError | None:
    """The default for a method outside STANDARD_METHODS: refused as the path's kind says."""
    return refuse_method(request.resource, request.path_params.get("namespace"))


def as_get(request: Request) -> StatusError | None:
    """Paths kube-apiserver answers the same whatever the method: served as GET."""
    request.method = "GET"
    return None


@dataclass(frozen=True, slots=True)
class Route:
    """What a path serves: its endpoint, the resource it names, what it answers to a method
    outside STANDARD_METHODS (an error, or None once it has rewritten the method), and
    whether it runs inside the middleware chain."""

    endpoint: Endpoint
    resource: ResourceSpec | None = None
    other: Callable[[Request], StatusError | None] = refuse
    chained: bool = True


class Served:
    """What the adapter needs of the server: the chain, and where it counts requests."""

    def __init__(self, chain: Next, count: Callable[[str, int], None]) -> None:
        self.chain = chain
        self.count = count


def error_id() -> str:
    return uuid.uuid4().hex[:16]


def internal_error(eid: str) -> StatusError:
    return StatusError(
        500, f"an internal error occurred in watchcache (error id {eid}); see its log"
    )


class Router(httputil.HTTPServerConnectionDelegate):
    """Every route, first match wins, matched on the decoded path as kube-apiserver matches
    its routes: a pattern may meet any character (``.`` a newline too) and must reach the
    very end. Named groups are the request's ``path_params``. A path Go cannot decode gets
    ``undecodable``; one no pattern matches, ``fallback``."""

    def __init__(
        self,
        table: Iterable[tuple[str, Route]],
        served: Served,
        *,
        fallback: Route,
        undecodable: Route,
        max_query_params: int = 10_000,
    ) -> None:
        self.rules = [
            (re.compile(pattern.removesuffix("$") + r"\Z", re.DOTALL), route)
            for pattern, route in table
        ]
        self.served = served
        self.fallback = fallback
        self.undecodable = undecodable
        self.max_query_params = max_query_params

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return Exchange(self, cast("HTTP1Connection", request_conn))

    def find(self, path: str | None) -> tuple[Route, dict[str, str]]:
        """The route for a decoded path (None: it did not decode), and its path parameters."""
        if path is None:
            return self.undecodable, {}
        for regex, route in self.rules:
            found = regex.match(path)
            if found is not None:
                if not regex.groupindex:
                    return route, {}
                return route, {k: v for k, v in found.groupdict().items() if v is not None}
        return self.fallback, {}


def check_request(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> None:
    """What Go's server refuses (400) before any handler sees the request: an HTTP/1.1
    request without its Host, or with more than one, or one Go would not read."""
    hosts = headers.get_list("Host")
    if not hosts:
        if start_line.version == "HTTP/1.1":
            raise httputil.HTTPInputError("missing required Host header")
        return
    if len(hosts) > 1:
        raise httputil.HTTPInputError("too many Host headers")
    if HOST.fullmatch(hosts[0]) is None:
        raise httputil.HTTPInputError("malformed Host header")


class HttpDate:
    """The Date header's value, formatted once a second (every answer carries one)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, formatdate(second, usegmt=True)
        return self.text


DATE = HttpDate()


def safe_value(value: str) -> str:
    """``value``, if it may go in a header as it is; ValueError otherwise (a newline would
    inject a header of its own)."""
    if (value.isascii() and value.isprintable()) or HEADER_VALUE.fullmatch(value) is not None:
        return value
    raise ValueError(f"unsafe header value {value[:80]!r}")


class Exchange(httputil.HTTPMessageDelegate):
    """One request and its answer, on one connection: tornado calls ``headers_received``,
    ``data_received`` for each piece of the body, then ``finish``; the answer is written
    with the connection's own calls."""

    __slots__ = (
        "chunks",
        "conn",
        "done",
        "gone",
        "head_out",
        "method",
        "pending",
        "received",
        "req",
        "route",
        "router",
        "started",
        "status",
        "task",
        "uri",
        "version",
    )

    def __init__(self, router: Router, conn: HTTP1Connection) -> None:
        self.router = router
        self.conn = conn
        self.route = router.fallback
        self.chunks: list[bytes] = []
        self.received = 0
        self.done = False  # finished (or detached): nothing more is written
        self.head_out = False  # the status line has been sent
        self.gone = False
        self.req: Request | None = None
        self.method = ""  # as the client sent it (logs, metrics)
        self.uri = ""
        self.version = "HTTP/1.1"
        self.pending: httputil.HTTPHeaders | None = None  # a stream's head, not sent yet
        self.status = 200
        self.started = 0.0
        self.task: asyncio.Task[None] | None = None

    # ---- the request -----------------------------------------------------------------------
    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        """Builds the Request; an awaitable only when it is answered here, before its body."""
        assert isinstance(start_line, httputil.RequestStartLine)
        self.started = time.monotonic()
        check_request(start_line, headers)
        self.method, self.uri, self.version = start_line
        raw_path, _, raw_query = self.uri.partition("?")
        if raw_query and raw_query.count("&") >= self.router.max_query_params:
            raise httputil.HTTPInputError("Invalid query string: Max number of fields exceeded")
        path = decode_path(raw_path)
        route, params = self.router.find(path)
        self.route = route
        conn = self.conn
        request = Request(
            method=self.method,
            path=raw_path,
            query=parse_query(raw_query),
            headers=Headers(headers.get_all()),
            path_params=params,
            resource=route.resource,
            remote_ip=getattr(conn.context, "remote_ip", None),
            target=self.uri,
            endpoint=route.endpoint,
            local=self.local_address,
        )
        self.req = request
        stream = conn.stream
        if isinstance(stream, JudgedStream) and stream.client_certificate is not None:
            cert = stream.client_certificate
            request.peer_cert, request.peer_cert_der = cert.subject, cert.der
            request.peer_cert_error = cert.error
        conn.set_close_callback(self.on_connection_close)
        try:
            self.check(request, headers, path)
        except StatusError as err:
            return self.answer_early(request, err)
        return None

    def check(self, request: Request, headers: httputil.HTTPHeaders, path: str | None) -> None:
        """What is refused before any endpoint runs, in kube-apiserver's order."""
        if request.method not in STANDARD_METHODS:
            err = self.route.other(request)
            if err is not None:
                raise err
        lengths = headers.get_list("Content-Length")
        length = content_length(lengths) if lengths else None
        if lengths and length is None:
            raise StatusError(400, f"bad Content-Length {lengths[0][:40]!r}")
        # ?timeout=, checked as the API server does ahead of everything (kube.requestinfo).
        elapsed = time.monotonic() - self.started
        check_deadline(request.method, path or request.path, request.query, elapsed)
        if length is not None and length > MAX_BODY:
            raise request_too_large()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.done:
            return None
        self.received += len(chunk)
        if self.received > MAX_BODY:
            # Answer now; tornado then reads the rest of the body without handing it on.
            self.chunks = []
            assert self.req is not None
            return self.answer_early(self.req, request_too_large())
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        """The whole body is in: the exchange runs, at once (tornado waits for
        ``conn.finish`` only when it does not finish here)."""
        self.task = eager(self.handle())

    def on_connection_close(self) -> None:
        """The client went away: during the request (tornado's call) or during its answer
        (the connection's close callback)."""
        self.gone = True
        request = self.req
        if request is not None and request.gone:
            callbacks, request.gone = request.gone, None
            for callback in callbacks:
                callback()

    async def answer_early(self, request: Request, err: StatusError) -> None:
        """An error found before the endpoint: answered through the chain all the same."""

        async def failing(_: Request) -> Response:
            raise err

        request.endpoint = failing
        await self.handle()
        if err.code == 400 and err.message.startswith("bad Content-Length"):
            # Go's server answers 400 and closes; tornado would append a bare 400 of its
            # own to this answer, so the connection goes once the Status is out.
            self.conn.close()

    async def handle(self) -> None:
        """The request through the chain (or its endpoint alone), then its answer, once."""
        request = self.req
        if self.done or request is None:
            return  # answered while the body arrived (413), or before it
        request.body = b"".join(self.chunks)
        self.chunks = []
        try:
            if self.route.chained:
                response = await self.router.served.chain(request)
            else:
                assert request.endpoint is not None
                try:
                    response = await request.endpoint(request)
                except StatusError as err:
                    response = Response.from_status(err, request)
            if isinstance(response.body, bytes):
                self.send_bytes(request, response)
            else:
                await self.send_stream(response)
        except iostream.StreamClosedError:
            pass  # the client went away
        except Exception as exc:
            self.fail(request, exc)
        finally:
            for callback in request.ended or ():
                callback()
            request.ended = None
            if not self.done:
                # Broken off (the client left, or a failure after the head): the connection
                # goes, so that a partial answer cannot look whole.
                self.done = True
                self.conn.close()
                self.logged()

    def fail(self, request: Request, exc: BaseException) -> None:
        """A failure watchcache could not classify: logged with its traceback under an id
        that the 500 Status names, so the two can be matched."""
        eid = error_id()
        log.error(
            "internal error %s in %s %s",
            eid,
            request.method[:32],
            request.path[:512],
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if self.head_out or self.done:
            return  # the answer is broken off: handle closes the connection
        self.send_bytes(request, Response.from_status(internal_error(eid), request))

    # ---- the answer ------------------------------------------------------------------------
    def head(self, response: Response) -> httputil.HTTPHeaders:
        """The answer's headers as the response has them, after the Date, with the API
        server's Cache-Control unless the response says otherwise."""
        headers = httputil.HTTPHeaders()
        headers["Date"] = DATE.now()
        for name, value in response.headers.get_all():
            headers.add(name, safe_value(value))
        if "Cache-Control" not in response.headers:
            headers["Cache-Control"] = CACHE_CONTROL
        status = self.status = response.status
        if status in NO_BODY or 100 <= status < 200:
            for name in REPRESENTATION:  # nothing describes the body there is not
                if name in headers:
                    del headers[name]
        return headers

    def start_line(self) -> httputil.ResponseStartLine:
        return httputil.ResponseStartLine("", self.status, responses.get(self.status, "Unknown"))

    async def send_stream(self, response: Response) -> None:
        """The head, then the body as the stream writes it, then the end of the body."""
        body = response.body
        # Not isinstance(body, Stream): a runtime Protocol check walks the class's members
        # at every call, once per watch.
        assert not isinstance(body, bytes)
        self.pending = self.head(response)
        chunked = (
            self.version == "HTTP/1.1"
            and self.method != "HEAD"
            and response.status >= 200
            and response.status not in NO_BODY
            and "Content-Length" not in response.headers
        )
        await body.run(Out(self, chunked))
        self.end()

    def send_bytes(self, request: Request, response: Response) -> None:
        body = response.body
        assert isinstance(body, bytes)
        etag = response.headers.get("ETag")
        if (
            etag
            and response.status == 200
            and request.method in ("GET", "HEAD")
            and etag_matches(request.headers.get("If-None-Match"), etag)
        ):
            response.status, body = 304, b""
        elif response.compress and len(body) > GZIP_THRESHOLD:
            holder = response.compress if not isinstance(response.compress, bool) else None
            body, zipped = encoded(
                body,
                request.headers.get("Accept-Encoding"),
                kept=holder.gzipped if holder is not None else None,
                keep=holder.keep_gzip if holder is not None else None,
            )
            if zipped:
                response.headers["Content-Encoding"] = "gzip"
                response.headers.add("Vary", "Accept-Encoding")
        self.pending = None
        headers = self.head(response)
        status = response.status
        if status in NO_BODY or 100 <= status < 200:
            body = b""  # 204 and 304 carry no body at all
        elif "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        if self.method == "HEAD" or not body:
            self.conn.write_headers(self.start_line(), headers)
        elif len(body) > SEPARATE_HEAD_ABOVE:
            # The connection joins the head and a first chunk into one new bytes object: for
            # a list of many megabytes that is a copy as big as the answer. Send the head alone.
            self.conn.write_headers(self.start_line(), headers)
            self.conn.write(body)
        else:
            self.conn.write_headers(self.start_line(), headers, body)
        self.head_out = True
        self.end()

    def write_head(self, chunk: bytes = b"") -> Awaitable[None]:
        """A stream's head, with ``chunk`` as the first piece of its body (none for HEAD);
        done once the socket took them."""
        headers, self.pending = self.pending, None
        self.head_out = True
        if headers is None:
            return self.write_body(chunk)
        body = chunk if chunk and self.method != "HEAD" else None
        return self.conn.write_headers(self.start_line(), headers, body)

    def write_body(self, data: bytes) -> Awaitable[None]:
        """More of a stream's body (framed by the connection); nothing at all for HEAD."""
        if not self.head_out:
            return self.write_head(data)
        if not data or self.method == "HEAD":
            return settled()
        return self.conn.write(data)

    def end(self) -> None:
        """The answer is whole: the connection may read the next request."""
        if self.done:
            return
        if self.pending is not None:
            self.write_head()
        self.done = self.head_out = True
        self.conn.set_close_callback(None)
        self.conn.finish()
        self.logged()

    def logged(self) -> None:
        """Counted, and logged (a 5xx as a warning)."""
        status = self.status
        self.router.served.count(self.method, status)
        level = logging.WARNING if status >= 500 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s %d %.1fms",
                clip(self.method, 32),
                clip(self.uri, LOGGED_URI),
                status,
                1000.0 * (time.monotonic() - self.started),
            )

    def local_address(self) -> str | None:
        """host:port of the server's end of this connection: where this client reached it."""
        try:
            host, port = self.conn.stream.socket.getsockname()[:2]
        except (AttributeError, OSError, TypeError, ValueError):
            return None
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Out:
    """The ``Writer`` a Stream gets: its exchange's head and body writes, and its connection."""

    __slots__ = ("chunked", "exchange", "sock", "stream")

    def __init__(self, exchange: Exchange, chunked: bool = False) -> None:
        self.exchange = exchange
        # The body goes out in chunks (the connection's rule for an answer: an HTTP/1.1
        # request other than HEAD, a status with a body, no Content-Length): ``write_now``
        # frames so.
        self.chunked = chunked
        self.stream = exchange.conn.stream
        # The socket ``write_now`` sends on itself: a chunked body on a plain connection.
        plain = chunked and not isinstance(self.stream, iostream.SSLIOStream)
        self.sock = self.stream.socket if plain else None

    @property
    def closed(self) -> bool:
        x = self.exchange
        return x.gone or x.done or self.stream.closed()

    def start(self) -> Awaitable[None]:
        return self.exchange.write_head()

    def write(self, data: bytes) -> Awaitable[None]:
        return self.exchange.write_body(data)

    def write_now(self, pieces: Sequence[bytes]) -> Awaitable[None] | None:
        """One chunk straight onto an idle plain socket: one ``sendmsg`` of its size line,
        the pieces and its CRLF, framed as tornado frames a chunk. The pieces are the
        cache's shared frames (or an entry's raw bytes between two constants), sent without
        a join or a copy: a fan-out writes each event to every watcher, and a watcher that
        stops reading pins nothing of its own. Only when the head is out and the stream
        holds nothing, so the bytes stay in order; anything else (TLS, a stream still
        writing, a body not chunked, more pieces than one ``sendmsg`` takes) joins them
        and takes ``write``."""
        stream, sock = self.stream, self.sock
        if (
            sock is None
            or not self.exchange.head_out
            or len(pieces) > MAX_PIECES
            or stream.writing()
            or stream.closed()
        ):
            return self.write(b"".join(pieces))
        size = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
        bufs = [b"%x\r\n" % size, *pieces, b"\r\n"]
        try:
            sent = sock.sendmsg(bufs)
        except BlockingIOError:
            sent = 0
        except OSError:
            return self.write(b"".join(pieces))  # tornado sees the error again, closes
        if sent == len(bufs[0]) + size + 2:
            return None
        return write_rest(stream, bufs, sent)  # in order: nothing was queued

    def idle(self) -> bool:
        return not self.stream.writing()

    def upgrade(self) -> iostream.IOStream:
        x = self.exchange
        x.end()
        return x.conn.detach()

    def abort(self) -> None:
        self.exchange.conn.close()


def write_rest(stream: iostream.IOStream, bufs: list[bytes], sent: int) -> Awaitable[None]:
    """What ``sendmsg`` left of ``bufs`` after ``sent`` bytes, handed to the stream without
    copying the large pieces (tornado keeps those as views); runs of small ones are joined,
    so that the stream does not try the socket once per piece."""
    i = 0
    while sent >= len(bufs[i]):
        sent -= len(bufs[i])
        i += 1
    rest: list[bytes | memoryview] = [memoryview(bufs[i])[sent:], *bufs[i + 1 :]]
    done: Awaitable[None] | None = None
    small: list[bytes | memoryview] = []
    for piece in rest:
        if len(piece) < SHARE_ABOVE:
            small.append(piece)
            continue
        if small:
            stream.write(b"".join(small))
            small = []
        done = stream.write(piece)
    if small:
        done = stream.write(b"".join(small))
    assert done is not None
    return done


def eager(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Runs ``coro`` now, up to its first wait; None when it finished without one, else the
    task that runs the rest (what Python 3.12's eager tasks do). A cached read answers
    without ever waiting, so it is written before tornado looks at the connection again:
    no task, no turn of the loop, no close callback registered for an answer to come. It
    runs in a context of its own, as a task would."""
    context = contextvars.copy_context()
    try:
        first = context.run(coro.send, None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(resumed(coro, first), context=context)


@types.coroutine
def resumed(coro: Coroutine[Any, Any, None], first: Any) -> Generator[Any, Any, None]:
    """``coro``, suspended on ``first``, driven on by the task that runs this: what the
    task sends or throws in goes on to ``coro``, what ``coro`` waits on goes out to it."""
    waiting = first
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # a cancellation, passed on
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(sent)
        except StopIteration:
            return


def settled() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def clip(text: str, limit: int) -> str:
    """A client's text for the log: bounded, so that a huge method or URI cannot flood it."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"
