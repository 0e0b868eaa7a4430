"""``/metrics`` in the Prometheus text format, read from the server's state when scraped.

Nothing on the request path updates a metric except one counter per answered request;
everything else (cache sizes, versions, watchers) is read from the objects that own it.

Every label value that comes from a request is taken from a closed set (a method watchcache
does not know is ``OTHER``, a code outside 100..599 is ``0``): a client choosing label values
could otherwise grow this page, and the memory behind it, without bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cachetools import LRUCache

    from watchcache.cache.reflector import Reflector
    from watchcache.cache.resource import CachedResource
    from watchcache.http.serving import ConnectionStats
    from watchcache.kube.resources import ResourceSpec
    from watchcache.upstream.client import LineSink, Upstream


class Observed(Protocol):
    """What /metrics reads of the server."""

    cached: dict[ResourceSpec, CachedResource]
    reflectors: list[Reflector[LineSink]]
    renders: LRUCache[Any, Any]
    connections: ConnectionStats
    upstream: Upstream  # forwarded requests' connections to the API server
    feeds: Upstream  # the reflectors' own
    reviews: Upstream  # TokenReviews' and SubjectAccessReviews'
    # With several workers: this worker's series in, every worker's out (watchcache.workers).
    whole_server: Callable[[bytes], bytes] | None

    def counters(self) -> list[tuple[str, str, float]]:
        """(name, help, value) of further counters (authentication, authorization)."""
        ...


METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
)


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def code_label(code: int) -> int:
    return code if 100 <= code <= 599 else 0


class RequestCounter:
    """Answered requests by method and status code, both from closed sets."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()

    def count(self, method: str, code: int) -> None:
        self.counts[(method_label(method), code_label(code))] += 1


def _escape(value: object) -> str:
    """A label value in the text format's escaping (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def render(runtime: Observed, requests: RequestCounter) -> bytes:
    """/metrics: this process's series or, with several workers, every worker's (the
    runtime's ``whole_server``, see watchcache.workers)."""
    own = render_own(runtime, requests)
    whole = runtime.whole_server
    return own if whole is None else bytes(whole(own))


def render_own(runtime: Observed, requests: RequestCounter) -> bytes:
    """This process's series."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    metric(
        "watchcache_http_requests_total",
        "counter",
        "Answered HTTP requests.",
        [(_labels(method=m, code=c), n) for (m, c), n in sorted(requests.counts.items())],
    )
    conns = runtime.connections
    metric("watchcache_http_connections", "gauge", "Open client connections.", [("", conns.open)])
    metric(
        "watchcache_http_connections_evicted_total",
        "counter",
        "Connections closed, while waiting for request headers, to make room (--max-connections).",
        [("", conns.evicted)],
    )
    metric(
        "watchcache_http_connections_refused_total",
        "counter",
        "Connections answered 429 because every connection was busy (--max-connections).",
        [("", conns.refused)],
    )
    metric(
        "watchcache_upstream_connections",
        "gauge",
        "Open connections to the API server, in use or idle: forwarded requests'"
        " (--max-upstream-connections), the reflectors' and the reviews' own.",
        [
            (_labels(pool="requests"), runtime.upstream.open_connections),
            (_labels(pool="reflectors"), runtime.feeds.open_connections),
            (_labels(pool="reviews"), runtime.reviews.open_connections),
        ],
    )
    metric(
        "watchcache_upstream_connections_refused_total",
        "counter",
        "Requests refused (forwarded ones answered 429): no connection to the API server free"
        " in time (--max-upstream-connections).",
        [("", runtime.upstream.refused)],
    )
    metric(
        "watchcache_http_accept_pauses_total",
        "counter",
        "Pauses of the accept loop for want of file descriptors.",
        [("", conns.accept_pauses)],
    )
    metric(
        "watchcache_http_headers_too_large_total",
        "counter",
        "Requests answered 431 (--max-header-bytes).",
        [("", conns.header_refusals)],
    )
    cached = runtime.cached.items()
    res = [
        (spec, r, _labels(resource=f"{spec.plural}.{spec.group or 'core'}")) for spec, r in cached
    ]
    metric(
        "watchcache_cache_objects",
        "gauge",
        "Objects in the cache.",
        [(lb, len(r.store)) for _, r, lb in res],
    )
    metric(
        "watchcache_cache_resource_version",
        "gauge",
        "The version the cache has reached.",
        [(lb, r.store.rv) for _, r, lb in res],
    )
    metric(
        "watchcache_cache_synced",
        "gauge",
        "1 once the cache has listed its resource.",
        [(lb, int(r.store.synced)) for _, r, lb in res],
    )
    metric(
        "watchcache_watchers",
        "gauge",
        "Open downstream watches.",
        [(lb, len(r.hub.watchers)) for _, r, lb in res],
    )
    metric(
        "watchcache_watchers_ended_slow_total",
        "counter",
        "Watches ended because the client fell too far behind.",
        [(lb, r.hub.ended_slow) for _, r, lb in res],
    )
    metric(
        "watchcache_watchers_ended_relist_total",
        "counter",
        "Watches ended with 410 because an upstream re-list broke the history they followed.",
        [(lb, r.hub.ended_relist) for _, r, lb in res],
    )
    metric(
        "watchcache_render_cache_bytes",
        "gauge",
        "Bytes of rendered list bodies kept for reuse (gzip forms included), all resources.",
        [("", runtime.renders.currsize)],
    )
    metric(
        "watchcache_render_cache_entries",
        "gauge",
        "Rendered list bodies kept for reuse, all resources.",
        [("", len(runtime.renders))],
    )
    metric(
        "watchcache_watch_history_events",
        "gauge",
        "Events kept for watch resumption.",
        [(lb, len(r.hub.history)) for _, r, lb in res],
    )
    metric(
        "watchcache_write_wait_timeouts_total",
        "counter",
        "Writes answered before the cache showed them (read-your-writes bound hit).",
        [(lb, r.write_wait_timeouts) for _, r, lb in res],
    )
    if any(r.written is not None for _, r, _ in res):
        metric(
            "watchcache_worker_write_waits_total",
            "counter",
            "Reads that waited for another worker's write to reach this worker's cache.",
            [(lb, r.written_waits) for _, r, lb in res],
        )
        metric(
            "watchcache_worker_write_delegated_total",
            "counter",
            "Reads sent upstream: another worker's write had not reached this cache in time.",
            [(lb, r.written_delegated) for _, r, lb in res],
        )
    by_resource: Counter[str] = Counter()
    watches: Counter[str] = Counter()
    for reflector in runtime.reflectors:
        key = _labels(resource=f"{reflector.resource.plural}.{reflector.resource.group or 'core'}")
        by_resource[key] += reflector.lists
        watches[key] += reflector.watches
    metric(
        "watchcache_upstream_lists_total",
        "counter",
        "LISTs sent upstream by reflectors.",
        sorted(by_resource.items()),
    )
    metric(
        "watchcache_upstream_watches_total",
        "counter",
        "WATCHes sent upstream by reflectors.",
        sorted(watches.items()),
    )
    feeds = [
        (
            r,
            _labels(
                resource=f"{r.resource.plural}.{r.resource.group or 'core'}",
                namespace=r.namespace or "",
            ),
        )
        for r in runtime.reflectors
    ]
    metric(
        "watchcache_upstream_silence_seconds",
        "gauge",
        "Seconds since upstream last sent a reflector anything (a watch event, a bookmark).",
        [(lb, round(r.silent_for(), 3)) for r, lb in feeds],
    )
    metric(
        "watchcache_upstream_behind",
        "gauge",
        "1 while a reflector's cache is known to be behind (listing, or its watch restarting).",
        [(lb, int(r.behind is not None)) for r, lb in feeds],
    )
    metric(
        "watchcache_upstream_silent_watches_total",
        "counter",
        "Upstream watches (or LIST pages) abandoned for silence past the bound.",
        [(lb, r.silent_watches) for r, lb in feeds],
    )
    for name, help_, value in runtime.counters():
        metric(name, "counter", help_, [("", value)])
    return ("\n".join(lines) + "\n").encode()
