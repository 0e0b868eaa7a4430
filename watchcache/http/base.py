"""What every handler shares: Kubernetes ``Status`` errors and the server's collaborators."""

from __future__ import annotations

import logging
import uuid
from asyncio import Future
from http.client import responses
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from tornado import httputil, web

from watchcache.kube.bodies import MAX_BODY, content_length, request_too_large
from watchcache.kube.gourl import decode_path, parse_query
from watchcache.kube.negotiation import wants_pretty
from watchcache.kube.requestinfo import check_deadline
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError, method_not_allowed, not_found_path
from watchcache.middleware.core import Request, Response

if TYPE_CHECKING:
    from tornado.http1connection import HTTP1Connection

    from watchcache.http.context import Context

log = logging.getLogger("watchcache.http")


# Answers larger than this leave with their head sent first (see BaseHandler._emit).
SEPARATE_HEAD_ABOVE = 256 * 1024


# The methods tornado dispatches to a handler's own method; any other is answered in prepare.
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class _EveryMethod(tuple[str, ...]):
    """SUPPORTED_METHODS that admits every method, so that TRACE, CONNECT and unknown ones
    reach ``prepare`` and get the answer kube-apiserver gives on that path (404, 405, or the
    GET answer), not tornado's blanket 405."""

    def __contains__(self, item: object) -> bool:
        return True


def decoded_query(request: httputil.HTTPServerRequest) -> dict[str, list[str]]:
    """The query as kube-apiserver's Go reads it (watchcache.kube.gourl); bytes that are not UTF-8
    become U+FFFD rather than a 500."""
    return parse_query(request.query)


@web.stream_request_body
class BaseHandler(web.RequestHandler):
    """Runs every request through the middleware chain and renders every failure as a
    Kubernetes ``Status``, never an HTML page or a traceback.

    A request body is gathered as it arrives, bounded: past 3 MiB (the Kubernetes limit) the
    request is answered with 413 at once and the rest is never held. Subclasses implement
    ``endpoint``; what it answers is captured as a ``Response`` for the middleware to see,
    unless it streams (it flushed), in which case the middleware see ``body=None``.
    """

    SUPPORTED_METHODS = _EveryMethod(STANDARD_METHODS)
    runtime: Context
    resource_spec: ResourceSpec | None = None
    # The query the endpoint answers: the client's, as the middleware left it.
    query: dict[str, list[str]]

    def initialize(self, runtime: Context) -> None:
        self.runtime = runtime
        self.body = b""
        self._capturing = False
        self.set_default_headers()  # tornado ran it before initialize, without the runtime

    def prepare(self) -> None:
        self._received = 0
        self._chunks: list[bytes] = []
        self.client_method = self.request.method or ""
        if self.client_method not in STANDARD_METHODS:
            self.other_method()
        lengths = self.request.headers.get_list("Content-Length")
        length = content_length(lengths) if lengths else None
        if lengths and length is None:
            # Go's server answers 400 and closes; tornado would append a bare 400 of its own
            # to this answer, so the connection goes once the Status is out.
            self.send_status(StatusError(400, f"bad Content-Length {lengths[0][:40]!r}"))
            cast("HTTP1Connection", self.request.connection).close()
            return
        req = self.request
        # ?timeout=, checked as the API server does ahead of everything (kube.requestinfo).
        path = decode_path(req.path) or req.path
        check_deadline(req.method or "GET", path, decoded_query(req), req.request_time())
        if length is not None and length > MAX_BODY:
            raise request_too_large()

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        if self._received > MAX_BODY:
            # Answer now; tornado then drops the rest of the body instead of handing it on.
            self._chunks = []
            self.send_status(request_too_large())
            return
        self._chunks.append(chunk)

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        raise self.refuse_method()

    def other_method(self) -> None:
        """A method outside STANDARD_METHODS, before any middleware: refused by default;
        a handler that answers every method as GET (as kube-apiserver does on some paths)
        rewrites ``request.method`` instead."""
        raise self.refuse_method()

    def refuse_method(self) -> StatusError:
        """What kube-apiserver answers to a method a path does not serve: on a resource,
        405 naming it, but 404 on the all-namespaces list of a namespaced one (it has no
        verb but GET there); elsewhere its generic 405."""
        spec = self.resource_spec
        if spec is None:
            return method_not_allowed()
        if spec.namespaced and not self.path_kwargs.get("namespace"):
            return not_found_path()
        err = method_not_allowed({"group": spec.group, "kind": spec.plural})
        kind = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
        # kube's message names the verb, which is empty for a method it does not know.
        err.message = f' is not supported on resources of kind "{kind}"'
        return err

    # ---- the middleware chain --------------------------------------------------------------
    async def _chained(self, *args: str | None, **kwargs: str | None) -> None:
        if self._finished:
            return  # answered while the body arrived (413)
        req = self.request
        request = Request(
            method=req.method or "GET",
            path=req.path,
            query=decoded_query(req),
            headers=req.headers,
            body=b"".join(self._chunks),
            path_params={k: v for k, v in kwargs.items() if v is not None},
            resource=self.resource_spec,
        )
        request.handler = self  # type: ignore[attr-defined]
        # A copy: a middleware may change request.query in place.
        self._original = (
            request.method,
            request.path,
            {k: list(v) for k, v in request.query.items()},
        )
        try:
            response = await self.runtime.chain(request)
        except BaseException:
            self._capturing = False
            raise
        self._emit(response)

    get = head = post = put = patch = delete = options = _chained

    async def run_endpoint(self, request: Request) -> Response:
        """The innermost step of the chain: the handler's own work, its answer captured."""
        self._apply(request)
        self._capturing = True
        try:
            await self.endpoint(*self.path_args, **self.path_kwargs)
        except StatusError as err:
            if self._headers_written:
                raise
            self._capturing = False
            self.clear()
            return Response.from_status(err, request)
        if not self._finished and self._capturing and not self._headers_written:
            self.finish()
        self._capturing = False
        if self._headers_written:
            return Response(status=self._status_code, headers=self._headers, body=None)
        body = b"".join(self._write_buffer)
        self._write_buffer = []
        return Response(status=self._status_code, headers=self._headers, body=body)

    def _apply(self, request: Request) -> None:
        """Makes what the middleware changed the request the endpoint handles."""
        req = self.request
        req.method = request.method
        req.headers = request.headers
        self.body = request.body
        self.query = request.query
        if (request.method, request.path, request.query) != self._original:
            self.set_target(request.path, request.query)

    def set_target(self, path: str, query: dict[str, list[str]]) -> None:
        """Points the request (what ``forward`` sends upstream) at ``path`` with ``query``."""
        req = self.request
        encoded = urlencode([(k, v) for k, vs in query.items() for v in vs])
        req.path = path
        req.uri = path + ("?" + encoded if encoded else "")
        req.query = encoded
        req.query_arguments = {k: [v.encode() for v in vs] for k, vs in query.items()}
        self.query = query

    def _emit(self, response: Response) -> None:
        if self._finished:
            return
        if response.body is None:
            self.finish()
            return
        self.clear()
        self.set_status(response.status, responses.get(response.status, "Unknown"))
        self._headers = response.headers
        body = response.body
        if len(body) > SEPARATE_HEAD_ABOVE and self.request.method != "HEAD":
            # tornado joins the head and the first body chunk into one new bytes object: for a
            # list of many megabytes that is a copy as big as the answer. Send the head alone.
            self.set_header("Content-Length", str(len(body)))
            self.flush()
            self.write(body)
            self.finish()
            return
        self.finish(body or None)  # 204 and 304 must carry no body at all

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        if self._capturing and not self._headers_written:
            # Inside the chain: keep the answer for the middleware instead of sending it.
            if chunk is not None:
                self.write(chunk)
            self._capturing = False
            done: Future[None] = Future()
            done.set_result(None)
            return done
        return super().finish(chunk)

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        # As kube-apiserver sends on every answer: no shared cache may keep a user's reply.
        self.set_header("Cache-Control", "no-cache, private")
        # Set here, not only by the CORS middleware: a stream's headers leave before any
        # middleware sees its response.
        origin = self.runtime.settings.cors_allow_origin if hasattr(self, "runtime") else None
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)

    def send_status(self, err: StatusError) -> None:
        if self._headers_written:
            # The response has begun (a stream): all that is left is to end it.
            self.finish()
            return
        self.clear()
        self.set_status(err.code, err.reason or None)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        headers = self.request.headers
        pretty = wants_pretty(
            decoded_query(self.request), headers.get("User-Agent"), headers.get("Accept")
        )
        self.finish(err.body(pretty=pretty))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StatusError):
            err = exc
        elif status_code == 404:
            err = not_found_path()
        elif status_code == 405:
            err = self.refuse_method()
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            err = StatusError(status_code, exc.log_message or self._reason)
        else:
            error_id = getattr(self, "_error_id", None) or _error_id()
            err = StatusError(
                500,
                f"an internal error occurred in watchcache (error id {error_id}); see its log",
            )
        self.send_status(err)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StatusError):
            if not self._finished:
                self.send_status(e)
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """A StatusError is an answer, not a failure; tornado's own HTTPError is one line;
        anything else is a failure watchcache could not classify: logged with its traceback
        under an id that the 500 Status names, so the two can be matched."""
        if isinstance(value, StatusError):
            return
        method = self.request.method or ""
        path = self.request.path or ""
        if isinstance(value, web.HTTPError):
            log.debug("%d %s %s: %s", value.status_code, method[:32], path[:512], value)
            return
        self._error_id = _error_id()
        log.error(
            "internal error %s in %s %s",
            self._error_id,
            method[:32],
            path[:512],
            exc_info=(typ, value, tb),
        )


def _error_id() -> str:
    return uuid.uuid4().hex[:16]


class AnyMethodHandler(BaseHandler):
    """A path kube-apiserver answers the same whatever the method (the health checks,
    /metrics): every method is served by ``get``, HEAD without its body."""

    def other_method(self) -> None:
        self.request.method = "GET"

    def post(self, *args: str, **kwargs: str) -> Any:  # type: ignore[override]
        return self.get(*args, **kwargs)

    head = put = patch = delete = options = post  # type: ignore[assignment]


class NotFoundHandler(BaseHandler):
    """Every path watchcache does not serve: a 404 Status, as the KubeRay APIServer gives
    (after the middleware, which may answer such paths themselves)."""

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        raise not_found_path()

    def refuse_method(self) -> StatusError:
        return not_found_path()


class BadPathHandler(BaseHandler):
    """A path with an escape that does not decode: Go's server refuses it with a 400."""

    def prepare(self) -> None:
        raise StatusError(400, "malformed HTTP request: the path has an invalid escape")


class HealthHandler(AnyMethodHandler):
    """``/healthz`` and ``/livez``: the process answers (outside the middleware chain)."""

    def get(self) -> None:  # type: ignore[override]
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(b"ok")


class ReadyHandler(AnyMethodHandler):
    """``/readyz``: ready once every cache has synced (at once in pass-through mode), and
    not while a synced cache is known to be behind (its watch restarting, or a re-list)."""

    def get(self) -> None:  # type: ignore[override]
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        waiting = self.runtime.not_ready()
        waiting += [
            f"{r.name} behind: {r.behind}" for r in self.runtime.reflectors if r.lists and r.behind
        ]
        if waiting:
            self.set_status(503)
            self.finish(("not ready: " + ", ".join(waiting)).encode())
        else:
            self.finish(b"ok")


class MetricsHandler(AnyMethodHandler):
    """``/metrics``: Prometheus text, outside the middleware chain."""

    def get(self) -> None:  # type: ignore[override]
        from watchcache.metrics import render

        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(render(self.runtime, self.runtime.requests))
