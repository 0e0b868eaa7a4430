"""What the HTTP layer may use of the server: a narrow view, so that no endpoint reaches
into the wiring (server.py) that builds it."""

from __future__ import annotations

from asyncio import Future
from typing import TYPE_CHECKING, Any, Protocol

from watchcache.metrics import Observed, RequestCounter

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest
    from tornado.iostream import IOStream

    from watchcache.cache.hub import Watcher
    from watchcache.cache.resource import CachedResource
    from watchcache.config import Settings
    from watchcache.middleware.core import Next
    from watchcache.upstream.client import Upstream
    from watchcache.upstream.discovery import Discovery
    from watchcache.upstream.retry import RetryPolicy


class Context(Observed, Protocol):
    """The collaborators every handler shares, created once per server (and what /metrics
    reads of it)."""

    settings: Settings
    upstream: Upstream
    retry: RetryPolicy
    requests: RequestCounter
    discovery: Discovery
    chain: Next

    def not_ready(self) -> list[str]:
        """Names of whatever is not ready yet; empty when the server may take traffic."""
        ...


class ReadHandler(Protocol):
    """What the watch, WebSocket and Table endpoints use of the read handler that calls
    them (a protocol, so that they need not import the handler, which imports them)."""

    request: HTTPServerRequest
    resource: CachedResource
    runtime: Context
    watcher: Watcher | None
    _finished: bool

    def clear(self) -> None: ...

    def set_status(self, status_code: int, reason: str | None = None) -> None: ...

    def set_header(self, name: str, value: Any) -> None: ...

    def write(self, chunk: Any) -> None: ...

    def flush(self, include_footers: bool = False) -> Future[None]: ...

    def finish(self, chunk: Any = None) -> Future[None]: ...

    def detach(self) -> IOStream: ...

    async def _forward(self) -> None: ...

    def _send_json(self, body: bytes, *args: Any, **kwargs: Any) -> None: ...
