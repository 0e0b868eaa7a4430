"""One cached resource as the read path uses it: spec, store, hub, tokens, render cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from watchcache.cache.hub import Hub
from watchcache.cache.shared import WrittenVersions
from watchcache.cache.store import Store
from watchcache.cache.tokens import ContinueCodec
from watchcache.kube.resources import ResourceSpec

RenderKey = tuple[object, ...]


def render_cache(max_bytes: int) -> LRUCache[RenderKey, Rendered]:
    """The server's one cache of rendered list bodies, bounded by their bytes, gzip included."""
    return LRUCache(maxsize=max_bytes, getsizeof=lambda r: r.size)


@dataclass(slots=True)
class CachedResource:
    """What the read path needs for one resource: its spec, store, hub and render cache."""

    spec: ResourceSpec
    store: Store
    hub: Hub
    codec: ContinueCodec
    renders: LRUCache[RenderKey, Rendered]
    # How long a read waits for the first sync, and for a requested resourceVersion.
    sync_wait: float = 3.0
    rv_wait: float = 0.5
    extended_fields: bool = True
    # A watch without timeoutSeconds ends after 1-2x this many seconds, as the API server's do.
    watch_timeout: float = 1800.0
    bookmark_interval: float = 60.0
    # A watch client that has not taken a write for this long is cut off.
    stall_timeout: float = 30.0
    # How long a write's answer may wait for the cache to show it (read-your-writes).
    write_wait: float = 5.0
    write_wait_timeouts: int = 0
    # With several workers: the versions every worker's writes reached (cache.shared).
    written: WrittenVersions | None = None
    written_waits: int = 0  # reads that waited for another worker's write, and delegations
    written_delegated: int = 0

    @property
    def key(self) -> str:
        return f"{self.spec.group}/{self.spec.plural}"


@dataclass(slots=True)
class Rendered:
    """A list body as rendered, kept while the state it was rendered from holds."""

    state: tuple[int, int]  # what the body was rendered from: see cache.reads.Page
    etag: str
    body: bytes
    gzipped: bytes | None = None
    # Told when the gzip form is added, so that the render cache counts its bytes too.
    kept: Callable[[Rendered], None] | None = None

    def keep_gzip(self, zipped: bytes) -> None:
        self.gzipped = zipped
        if self.kept is not None:
            self.kept(self)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")
