"""The one tornado ``RequestHandler``: a tornado request in, the middleware chain, bytes out.

Every route is a ``Route``: an endpoint (``async (Request) -> Response``) and what the path
answers to a method it does not serve. The adapter builds the ``Request`` (path and query
decoded with Go's rules, the body gathered under the 3 MiB bound), runs the chain, and
writes what comes back once: a bytes body with its ETag check (304) and gzip, or a
``Stream`` that writes itself through a ``Writer`` after its head. Failures found before an
endpoint runs (a method the path refuses, a bad ``Content-Length``, ``?timeout=``, a body
over the limit) are answered through the chain as well, so that every middleware sees
every answer (authentication included). Only a path Go cannot decode is answered outside it.

tornado's public API only: ``flush``, ``finish``, ``detach``, ``on_connection_close``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from tornado import iostream, web

from watchcache.http.conditional import GZIP_THRESHOLD, encoded, etag_matches
from watchcache.http.tls import JudgedStream
from watchcache.kube.bodies import MAX_BODY, content_length, request_too_large
from watchcache.kube.gourl import parse_query, request_path
from watchcache.kube.requestinfo import check_deadline
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError, method_not_allowed, not_found_path
from watchcache.middleware.core import Endpoint, Headers, Next, Request, Response, Stream

if TYPE_CHECKING:
    from tornado.http1connection import HTTP1Connection

log = logging.getLogger("watchcache.http")

# Answers larger than this leave with their head sent first (see Adapter.send_bytes).
SEPARATE_HEAD_ABOVE = 256 * 1024
MAX_PIECES = 1000  # pieces in one write_now; sendmsg takes at most IOV_MAX (1,024) buffers
SHARE_ABOVE = 64 * 1024  # a piece of a write's rest handed to the stream as it is, uncopied
# The methods a route serves itself; any other is first put to the route's ``other``.
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# As kube-apiserver sends on every answer: no shared cache may keep a user's reply.
CACHE_CONTROL = "no-cache, private"


class EveryMethod(tuple[str, ...]):
    """SUPPORTED_METHODS that admits every method, so that TRACE, CONNECT and unknown ones
    reach the route and get the answer kube-apiserver gives on that path (404, 405, or the
    GET answer), not tornado's blanket 405."""

    def __contains__(self, item: object) -> bool:
        return True


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


class Out:
    """The ``Writer`` a Stream gets: the handler's own flush, detach and connection."""

    __slots__ = ("chunked", "handler", "sock", "stream")

    def __init__(self, handler: Adapter, chunked: bool = False) -> None:
        self.handler = handler
        # The body goes out in chunks (tornado's rule for an answer: an HTTP/1.1 request
        # other than HEAD, a status with a body, no Content-Length): ``write_now`` frames so.
        self.chunked = chunked
        self.stream = self.connection.stream
        # The socket ``write_now`` sends on itself: a chunked body on a plain connection.
        plain = chunked and not isinstance(self.stream, iostream.SSLIOStream)
        self.sock = self.stream.socket if plain else None

    @property
    def closed(self) -> bool:
        h = self.handler
        return h.gone or h.done or self.stream.closed()

    @property
    def connection(self) -> HTTP1Connection:
        return cast("HTTP1Connection", self.handler.request.connection)

    def start(self) -> Awaitable[None]:
        self.handler.head_out = True
        return self.handler.flush()

    def write(self, data: bytes) -> Awaitable[None]:
        h = self.handler
        h.head_out = True
        h.write(data)
        return h.flush()

    def write_now(self, pieces: Sequence[bytes]) -> Awaitable[None] | None:
        """One chunk straight onto an idle plain socket: one ``sendmsg`` of its size line,
        the pieces and its CRLF, framed as tornado frames a chunk. The pieces are the
        cache's shared frames (or an entry's raw bytes between two constants), sent without
        a join or a copy: a fan-out writes each event to every watcher, and a watcher that
        stops reading pins nothing of its own. Only when the head is out and the stream
        holds nothing, so the bytes stay in order; anything else (TLS, a stream still
        writing, a body not chunked, more pieces than one ``sendmsg`` takes) joins them
        and takes ``write``. The handler's own buffer is empty here: ``write`` flushes
        whatever it adds."""
        stream, sock = self.stream, self.sock
        if (
            sock is None
            or not self.handler.head_out
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
        h = self.handler
        h.head_out = True
        h.end()
        return h.detach()

    def abort(self) -> None:
        self.connection.close()


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


@web.stream_request_body
class Adapter(web.RequestHandler):
    """Turns one tornado request into a ``Request``, runs it, writes its ``Response``."""

    SUPPORTED_METHODS = EveryMethod(STANDARD_METHODS)

    def initialize(self, route: Route, served: Served) -> None:
        self.route = route
        self.served = served
        self.chunks: list[bytes] = []
        self.received = 0
        self.done = False  # finished (or detached): nothing more is written
        self.head_out = False  # the status line has been sent
        self.gone = False
        self.req: Request | None = None
        self.method = ""

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def compute_etag(self) -> str | None:
        return None  # an answer has the ETag its endpoint gives it, or none

    # ---- the request -----------------------------------------------------------------------
    def prepare(self) -> Awaitable[None] | None:
        """Builds the Request; an awaitable only when it is answered here (no coroutine on
        the common path: tornado wraps one in a future of its own)."""
        req = self.request
        route = self.route
        kwargs = self.path_kwargs
        request = Request(
            method=req.method or "GET",
            path=req.path,
            query=parse_query(req.query),
            headers=Headers(req.headers.get_all()),
            path_params={k: v for k, v in kwargs.items() if v is not None},
            resource=route.resource,
            remote_ip=req.remote_ip,
            target=req.uri or req.path,
            endpoint=route.endpoint,
            local=self.local_address,
        )
        self.req = request
        stream = cast("HTTP1Connection", req.connection).stream
        if isinstance(stream, JudgedStream) and stream.client_certificate is not None:
            cert = stream.client_certificate
            request.peer_cert, request.peer_cert_der = cert.subject, cert.der
            request.peer_cert_error = cert.error
        self.method = request.method
        if request.method not in STANDARD_METHODS:
            # tornado calls the handler's method of that name: every one is ``handle``.
            req.method = "GET"
        try:
            self.check(request)
        except StatusError as err:
            req.method = self.method
            return self.answer_early(request, err)
        return None

    def check(self, request: Request) -> None:
        """What is refused before any endpoint runs, in kube-apiserver's order."""
        if request.method not in STANDARD_METHODS:
            err = self.route.other(request)
            if err is not None:
                raise err
        lengths = self.request.headers.get_list("Content-Length")
        length = content_length(lengths) if lengths else None
        if lengths and length is None:
            raise StatusError(400, f"bad Content-Length {lengths[0][:40]!r}")
        # ?timeout=, checked as the API server does ahead of everything (kube.requestinfo).
        path = request_path(self.request) or request.path
        check_deadline(request.method, path, request.query, self.request.request_time())
        if length is not None and length > MAX_BODY:
            raise request_too_large()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.done:
            return None
        self.received += len(chunk)
        if self.received > MAX_BODY:
            # Answer now; tornado then drops the rest of the body instead of handing it on.
            self.chunks = []
            assert self.req is not None
            return self.answer_early(self.req, request_too_large())
        self.chunks.append(chunk)
        return None

    async def answer_early(self, request: Request, err: StatusError) -> None:
        """An error found before the endpoint: answered through the chain all the same."""

        async def failing(_: Request) -> Response:
            raise err

        request.endpoint = failing
        await self.handle()
        if err.code == 400 and err.message.startswith("bad Content-Length"):
            # Go's server answers 400 and closes; tornado would append a bare 400 of its
            # own to this answer, so the connection goes once the Status is out.
            cast("HTTP1Connection", self.request.connection).close()

    async def handle(self, *args: str, **kwargs: str) -> None:
        """The request through the chain (or its endpoint alone), then its answer, once."""
        self.request.method = self.method  # as the client sent it (logs, metrics)
        request = self.req
        if self.done or request is None:
            return  # answered while the body arrived (413), or before it (prepare)
        request.body = b"".join(self.chunks)
        self.chunks = []
        try:
            if self.route.chained:
                response = await self.served.chain(request)
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

    get = head = post = put = patch = delete = options = handle

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
            if not self.done:
                cast("HTTP1Connection", self.request.connection).close()
            return
        self.clear()
        self.send_bytes(request, Response.from_status(internal_error(eid), request))

    # ---- the answer ------------------------------------------------------------------------
    def write_head(self, response: Response) -> None:
        """Status and headers, as the response has them (nothing of tornado's defaults but
        Date), with the API server's Cache-Control unless the response says otherwise."""
        self.set_status(response.status)
        self.clear_header("Content-Type")
        for name, value in response.headers.get_all():
            self.add_header(name, value)
        if "Cache-Control" not in response.headers:
            self.set_header("Cache-Control", CACHE_CONTROL)

    async def send_stream(self, response: Response) -> None:
        """The head, then the body as the stream writes it, then the end of the body."""
        assert isinstance(response.body, Stream)
        self.write_head(response)
        chunked = (
            self.request.version == "HTTP/1.1"
            and self.request.method != "HEAD"
            and response.status >= 200
            and response.status not in (204, 304)
            and "Content-Length" not in response.headers
        )
        await response.body.run(Out(self, chunked))
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
        self.write_head(response)
        if len(body) > SEPARATE_HEAD_ABOVE and request.method != "HEAD":
            # tornado joins the head and the first body chunk into one new bytes object: for a
            # list of many megabytes that is a copy as big as the answer. Send the head alone.
            self.set_header("Content-Length", str(len(body)))
            self.flush()
            self.write(body)
            self.end()
            return
        self.end(body or None)  # 204 and 304 must carry no body at all

    def end(self, body: bytes | None = None) -> None:
        if not self.done:
            self.done = True
            self.head_out = True
            self.finish(body)

    def local_address(self) -> str | None:
        """host:port of the server's end of this connection: where this client reached it."""
        try:
            stream = cast("HTTP1Connection", self.request.connection).stream
            host, port = stream.socket.getsockname()[:2]
        except (AttributeError, OSError, TypeError, ValueError):
            return None
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def on_connection_close(self) -> None:
        self.gone = True
        request = self.req
        if request is not None and request.gone:
            callbacks, request.gone = request.gone, None
            for callback in callbacks:
                callback()

    # ---- what tornado itself refuses -------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """tornado's own refusals (a path argument it cannot decode) as a Status."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StatusError):
            err = exc
        elif status_code == 404:
            err = not_found_path()
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            err = StatusError(status_code, exc.log_message or "bad request")
        else:
            err = internal_error(error_id())
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", CACHE_CONTROL)
        self.done = True
        self.finish(err.body())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, web.HTTPError):
            log.debug("%d %s: %s", value.status_code, (self.request.path or "")[:512], value)
            return
        log.error(
            "internal error in %s", (self.request.path or "")[:512], exc_info=(typ, value, tb)
        )


def routed(rule: tuple[Any, Route], served: Served) -> tuple[Any, type[Adapter], dict[str, object]]:
    """A tornado rule for one route: every route is served by the one adapter."""
    pattern, route = rule
    return (pattern, Adapter, {"route": route, "served": served})
