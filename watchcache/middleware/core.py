"""The request path's public types: Headers, Request, Response, Stream, and the middleware chain.

An endpoint and a middleware are plain async functions:

    async def endpoint(request: Request) -> Response: ...

    async def my_middleware(request: Request, call_next: Next) -> Response:
        ...                      # look at or change the request
        response = await call_next(request)
        ...                      # look at or change the response
        return response

A middleware may also answer on its own: ``raise StatusError(...)`` (or return a
``Response``) without calling ``call_next``. The chain is composed once, when the server
starts, and every request goes through it, errors found before an endpoint runs (a bad
method, a body over the limit) included; only a path that cannot be decoded is answered
before it.

A response body is bytes, or a ``Stream`` (a watch, a relayed upstream answer) that writes
itself once the chain has returned: its status and headers can still be changed by any
middleware (CORS on a watch), its bytes cannot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from watchcache.kube import bodies
from watchcache.kube.negotiation import wants_pretty
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError

if TYPE_CHECKING:
    from tornado.iostream import IOStream

    from watchcache.auth.user import UserInfo


class Headers:
    """HTTP headers: names compared without case, each name possibly sent several times,
    in the order they were added (watchcache's own type, so that the public API does not
    depend on the HTTP library underneath)."""

    __slots__ = ("items_",)

    def __init__(
        self, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None
    ) -> None:
        items: dict[str, list[tuple[str, str]]] = {}
        self.items_ = items
        if headers is None:
            return
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            key = name.lower()
            found = items.get(key)
            if found is None:
                items[key] = [(name, value)]
            else:
                found.append((name, value))

    def add(self, name: str, value: str) -> None:
        """One more value for ``name`` (a second Vary, Warning, Impersonate-Group)."""
        self.items_.setdefault(name.lower(), []).append((name, value))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        found = self.items_.get(name.lower())
        return found[0][1] if found else default

    def get_list(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        return [v for _, v in self.items_.get(name.lower(), ())]

    def get_all(self) -> Iterator[tuple[str, str]]:
        """Every (name, value) pair, names as they were given."""
        for pairs in self.items_.values():
            yield from pairs

    def __getitem__(self, name: str) -> str:
        found = self.items_.get(name.lower())
        if not found:
            raise KeyError(name)
        return ",".join(v for _, v in found)

    def __setitem__(self, name: str, value: str) -> None:
        self.items_[name.lower()] = [(name, value)]

    def __delitem__(self, name: str) -> None:
        del self.items_[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.items_

    def __iter__(self) -> Iterator[str]:
        return (pairs[0][0] for pairs in self.items_.values())

    def __len__(self) -> int:
        return len(self.items_)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and sorted(
            (n.lower(), v) for n, v in self.get_all()
        ) == sorted((n.lower(), v) for n, v in other.get_all())

    def __repr__(self) -> str:
        return f"Headers({list(self.get_all())!r})"

    def pop(self, name: str, default: str | None = None) -> str | None:
        found = self.items_.pop(name.lower(), None)
        return ",".join(v for _, v in found) if found else default

    def items(self) -> Iterator[tuple[str, str]]:
        """(name, value) of each name, several values joined with commas."""
        for pairs in self.items_.values():
            yield pairs[0][0], ",".join(v for _, v in pairs)

    def copy(self) -> Headers:
        out = Headers()
        out.items_ = {k: list(v) for k, v in self.items_.items()}
        return out


class Writer(Protocol):
    """What a ``Stream`` writes with, given by the server once the chain has returned."""

    @property
    def closed(self) -> bool:
        """The client is gone (or the connection was closed)."""
        ...

    def start(self) -> Awaitable[None]:
        """Sends the status line and headers now (a watch client waits for them)."""
        ...

    def write(self, data: bytes) -> Awaitable[None]:
        """Sends ``data`` (framed as the connection needs); done once the socket took it."""
        ...

    def write_now(self, pieces: Sequence[bytes]) -> Awaitable[None] | None:
        """``write`` of ``b"".join(pieces)`` for the watch path, without the join: None when
        the socket took it all at once; otherwise what finishes once it has taken the rest."""
        ...

    def idle(self) -> bool:
        """Nothing written is still waiting for the socket."""
        ...

    def upgrade(self) -> IOStream:
        """Sends the head (a 101) and hands the connection over: HTTP is done with it."""
        ...

    def abort(self) -> None:
        """Drops the connection: an answer broken off must not look whole."""
        ...


@runtime_checkable
class Stream(Protocol):
    """A body that writes itself: ``run`` is called once, after the chain, with the writer."""

    async def run(self, out: Writer) -> None: ...


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
    headers: Headers
    body: bytes = b""
    path_params: dict[str, str] = field(default_factory=dict)
    resource: ResourceSpec | None = None
    user: UserInfo | None = None
    remote_ip: str | None = None
    # The client certificate, as verified by TLS (``getpeercert()`` and its DER form), or
    # why the one the client sent did not verify.
    peer_cert: Mapping[str, object] | None = field(default=None, repr=False)
    peer_cert_der: bytes | None = field(default=None, repr=False)
    peer_cert_error: str | None = None
    # The request target as the client sent it (what goes upstream unless changed).
    target: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    # host:port of the server's end of the connection, asked only when needed.
    local: Callable[[], str | None] | None = field(default=None, repr=False)
    # The endpoint the route chose (the chain's innermost step calls it).
    endpoint: Endpoint | None = field(default=None, repr=False)
    # Called when the client goes away before its answer is complete; and when the
    # exchange ends whatever way (see on_disconnect, on_end).
    gone: list[Callable[[], None]] | None = field(default=None, repr=False)
    ended: list[Callable[[], None]] | None = field(default=None, repr=False)
    # The last decoded body shares the nodes its YAML aliases repeat (see bodies.Decoded).
    shared: bool = field(default=False, init=False, repr=False)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def json(self) -> object:
        """The body decoded as JSON, or as YAML when the client sent YAML (as the API server
        accepts either), with the API server's bounds (watchcache.kube.bodies)."""
        decoded = bodies.decode(self.body, self.content_type)
        self.shared = decoded.shared
        return decoded.value

    def set_json(self, obj: object) -> None:
        """Replaces the body with ``obj`` as JSON (a YAML body becomes JSON), held to the
        body limit: a YAML body whose aliases expand past it is refused here (413), as the
        API server would refuse the expanded body."""
        if self.shared:
            raise bodies.request_too_large()
        self.body = bodies.encode(obj)
        self.headers["Content-Type"] = "application/json"
        self.headers.pop("Content-Length", None)

    @property
    def pretty(self) -> bool:
        """Whether the answer is indented (``?pretty``, or a human's user agent)."""
        return wants_pretty(self.query, self.headers.get("User-Agent"), self.headers.get("Accept"))

    @property
    def local_address(self) -> str | None:
        """host:port where this client reached the server (None when unknown)."""
        return self.local() if self.local is not None else None

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """``callback`` runs if the client goes away before its answer is complete."""
        if self.gone is None:
            self.gone = []
        self.gone.append(callback)

    def on_end(self, callback: Callable[[], None]) -> None:
        """``callback`` runs once the exchange is over, answered or not (a resource the
        endpoint holds for its stream is released even if a middleware drops the stream)."""
        if self.ended is None:
            self.ended = []
        self.ended.append(callback)


class Compressed(Protocol):
    """A body kept by its maker (a rendered list, a discovery document): its gzip form,
    once made, is kept with it."""

    gzipped: bytes | None

    def keep_gzip(self, zipped: bytes) -> None: ...


@dataclass(kw_only=True)
class Response:
    """An answer. ``compress``: gzip a large body for a client that accepts it (as the API
    server does past 128 KiB); a ``Compressed`` holder keeps the gzip form for next time."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes | Stream = b""
    compress: bool | Compressed = False

    @property
    def streamed(self) -> bool:
        """True when the body is a stream (written after the chain, not changeable)."""
        return not isinstance(self.body, bytes)

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Response:
        headers = Headers({"Content-Type": "application/json"})
        return cls(status=status, headers=headers, body=bodies.dumps(obj))

    @classmethod
    def from_status(cls, err: StatusError, request: Request | None = None) -> Response:
        """The Status as the API server writes it, indented when ``request`` asks."""
        pretty = request is not None and request.pretty
        headers = Headers({"Content-Type": "application/json"})
        for name, value in err.headers.items():
            headers[name] = value
        return cls(status=err.code, headers=headers, body=err.body(pretty=pretty))


Endpoint = Callable[[Request], Awaitable[Response]]
Next = Endpoint
Middleware = Callable[[Request, Next], Awaitable[Response]]


async def dispatch(request: Request) -> Response:
    """The chain's innermost step: the endpoint the route chose; a StatusError it raises is
    its answer."""
    assert request.endpoint is not None
    try:
        return await request.endpoint(request)
    except StatusError as err:
        return Response.from_status(err, request)


def guarded(endpoint: Next) -> Next:
    async def call(request: Request) -> Response:
        try:
            return await endpoint(request)
        except StatusError as err:
            return Response.from_status(err, request)

    return call


def compose(middleware: Sequence[Middleware], endpoint: Next = dispatch) -> Next:
    """One callable: the first middleware outermost, ``endpoint`` innermost. A StatusError
    raised anywhere becomes a Status response that the outer middleware still see."""
    chain: Next = endpoint if endpoint is dispatch else guarded(endpoint)
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
