"""Read-your-writes: a write's answer is held until the cache shows the write.

Judged per written object against the feed of its namespace, never against the store's
version: with a feed per namespace that is the slowest feed's, which a quiet namespace holds
back until its next bookmark. Bounded by ``write_wait``: past it the answer goes anyway (and
is counted), since the write itself succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from watchcache.cache.resource import CachedResource

log = logging.getLogger(__name__)

Target = tuple[str, str, int | None]  # namespace, name, version to reach (None: gone)


def targets(
    res: CachedResource, deleting: bool, namespace: str, name: str, answer: bytes
) -> list[Target]:
    """What a successful write's answer says the cache must show: each written object's
    version, or its absence when it was deleted outright."""
    try:
        obj = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(obj, dict):
        return []
    if obj.get("kind") == res.spec.list_kind:  # a delete-collection's deleted objects
        found = [_target(item, deleting) for item in obj.get("items") or []]
    elif obj.get("kind") == res.spec.kind:
        found = [_target(obj, deleting)]
    elif deleting and name:  # a Status: deleted outright
        found = [(namespace, name, None)]
    else:
        return []
    # Writes to namespaces no feed holds have nothing to wait for.
    return [t for t in found if res.store.feed_rv(t[0]) is not None]


def _target(obj: dict[str, Any], deleting: bool) -> Target:
    meta = obj.get("metadata") or {}
    rv: int | None = int(meta.get("resourceVersion") or 0)
    if deleting and not meta.get("deletionTimestamp"):
        rv = None  # deleted outright: the answer carries its last state
    return meta.get("namespace") or "", meta.get("name") or "", rv


async def shown(res: CachedResource, wanted: list[Target], what: str) -> bool:
    """Waits until the cache shows every target, at most ``write_wait`` seconds; False
    (logged, counted) when it did not."""
    store = res.store

    def seen(target: Target) -> bool:
        ns, name, rv = target
        if rv is None:
            return store.get(ns, name) is None
        return (store.feed_rv(ns) or 0) >= rv

    deadline = time.monotonic() + res.write_wait
    try:
        return await _wait(res, wanted, what, seen, deadline)
    finally:
        if res.written is not None:
            _share(res, wanted)


def _share(res: CachedResource, wanted: list[Target]) -> None:
    """Tells the other workers what this write reached (cache.shared): the written version,
    or for an object deleted outright (whose deletion's version the answer does not carry)
    the version this cache has reached by now."""
    assert res.written is not None
    store = res.store
    feeds = store.feeds()
    for ns, _name, rv in wanted:
        feed = None if None in feeds else ns
        reached = rv if rv is not None else store.feed_rv(ns) or 0
        res.written.record(res.key, feed, reached)


async def _wait(
    res: CachedResource,
    wanted: list[Target],
    what: str,
    seen: Callable[[Target], bool],
    deadline: float,
) -> bool:
    store = res.store
    while not all(seen(t) for t in wanted):
        left = deadline - time.monotonic()
        if left <= 0:
            res.write_wait_timeouts += 1
            log.warning(
                "%s: the cache did not show the write within %.1fs; answering anyway",
                what,
                res.write_wait,
            )
            return False
        # Any change may be the one awaited; a waiter re-checks on each (a few at most).
        changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_event: object, changed: asyncio.Future[None] = changed) -> None:
            if not changed.done():
                changed.set_result(None)

        unsubscribe = store.subscribe(wake)
        try:
            await asyncio.wait_for(changed, left)
        except TimeoutError:
            pass
        finally:
            unsubscribe()
    return True
