"""The middleware protocol: a plain async wrapper around the next callable.

    async def my_middleware(request: Request, call_next: Next) -> Response:
        ...                      # look at or change the request
        response = await call_next(request)
        ...                      # look at or change the response
        return response

A middleware may also answer on its own: ``raise StatusError(...)`` (or return a
``Response``) without calling ``call_next``. The chain is composed once, when the server
starts. Responses that were streamed to the client as they were produced (watches, proxied
streams) reach middleware with ``body=None``: their status and headers can be read, not
changed. Every other response is still unsent and can be changed whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from tornado import httputil

from watchcache.kube import bodies
from watchcache.kube.negotiation import wants_pretty
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError


@dataclass(kw_only=True)
class Request:
    """What a middleware sees of a request; every field but ``path_params`` may be changed.

    ``body`` is the whole request body (bodies are bounded to 3 MiB before any middleware
    runs). ``resource`` is the Kubernetes resource the path names, when it is one watchcache
    serves; ``user`` is whoever an authentication middleware says sent the request.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: httputil.HTTPHeaders
    body: bytes = b""
    path_params: dict[str, str] = field(default_factory=dict)
    resource: ResourceSpec | None = None
    user: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # The last decoded body shares the nodes its YAML aliases repeat (see bodies.Decoded).
    _shared: bool = field(default=False, init=False, repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def json(self) -> object:
        """The body decoded as JSON, or as YAML when the client sent YAML (as the API server
        accepts either), with the API server's bounds (watchcache.kube.bodies)."""
        decoded = bodies.decode(self.body, self.content_type)
        self._shared = decoded.shared
        return decoded.value

    def set_json(self, obj: object) -> None:
        """Replaces the body with ``obj`` as JSON (a YAML body becomes JSON), held to the
        body limit: a YAML body whose aliases expand past it is refused here (413), as the
        API server would refuse the expanded body."""
        if self._shared:
            raise bodies.request_too_large()
        self.body = bodies.encode(obj)
        self.headers["Content-Type"] = "application/json"
        self.headers.pop("Content-Length", None)


@dataclass(kw_only=True)
class Response:
    status: int
    headers: httputil.HTTPHeaders = field(default_factory=httputil.HTTPHeaders)
    body: bytes | None = b""

    @property
    def streamed(self) -> bool:
        """True when the body already went to the client as it was produced."""
        return self.body is None

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Response:
        headers = httputil.HTTPHeaders({"Content-Type": "application/json"})
        return cls(status=status, headers=headers, body=bodies.dumps(obj))

    @classmethod
    def from_status(cls, err: StatusError, request: Request | None = None) -> Response:
        """The Status as the API server writes it, indented when ``request`` asks."""
        pretty = request is not None and wants_pretty(
            request.query, request.headers.get("User-Agent"), request.headers.get("Accept")
        )
        headers = httputil.HTTPHeaders({"Content-Type": "application/json"})
        resp = cls(status=err.code, headers=headers, body=err.body(pretty=pretty))
        for name, value in err.headers.items():
            resp.headers[name] = value
        return resp


Next = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Next], Awaitable[Response]]


def compose(middleware: Sequence[Middleware], endpoint: Next) -> Next:
    """One callable: the first middleware outermost, ``endpoint`` innermost. A StatusError
    raised anywhere becomes a Status response that the outer middleware still see."""

    async def guarded(request: Request, inner: Next = endpoint) -> Response:
        try:
            return await inner(request)
        except StatusError as err:
            return Response.from_status(err, request)

    chain: Next = guarded
    for mw in reversed(middleware):

        def bind(mw: Middleware = mw, nxt: Next = chain) -> Next:
            async def call(request: Request) -> Response:
                try:
                    return await mw(request, nxt)
                except StatusError as err:
                    return Response.from_status(err, request)

            return call

        chain = bind()
    return chain
