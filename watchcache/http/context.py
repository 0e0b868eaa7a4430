"""What the HTTP layer may use of the server: a narrow view, so that no endpoint reaches
into the wiring (server.py) that builds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from watchcache.metrics import Observed, RequestCounter

if TYPE_CHECKING:
    from watchcache.config import Settings
    from watchcache.upstream.client import Upstream
    from watchcache.upstream.discovery import Discovery
    from watchcache.upstream.retry import RetryPolicy


class Context(Observed, Protocol):
    """The collaborators every endpoint shares, created once per server (and what /metrics
    reads of it)."""

    settings: Settings
    upstream: Upstream
    retry: RetryPolicy
    requests: RequestCounter
    discovery: Discovery
    # Set when a shutdown begins: /readyz fails from then on (the server still serves).
    shutting_down: bool

    def not_ready(self) -> list[str]:
        """Names of whatever is not ready yet; empty when the server may take traffic."""
        ...
