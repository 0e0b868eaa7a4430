"""The one place that decides how a read is answered: a page of the cache, a subscription to
its events, or ``Delegate`` — sent to the API server, which then answers exactly as it would.

As kube-apiserver's cacher decides (see ``kube.listoptions``): a list is served from the
live store, or a retained snapshot (``Exact``, our own ``continue`` token); it is delegated
for a version the cache has not reached, an ``Exact`` version it no longer holds, or the API
server's own continue token. A watch starts from the store's state or the Hub's history;
its snapshot and its subscription are taken in one step with no ``await`` between them, so
that no event falls between the two or is sent twice. Nothing here knows HTTP: the callers
render pages and write streams.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from watchcache.cache.hub import Filter, TooOld, Watcher
from watchcache.cache.resource import CachedResource
from watchcache.cache.store import Entry, Key, Snapshot, key_range, matches
from watchcache.kube.listoptions import (
    ListOptions,
    continue_expired,
    resource_version_int,
    watch_too_old,
)
from watchcache.kube.status import not_found, too_many_requests

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True, slots=True)
class Delegate:
    """Send this read to the API server: the cache cannot answer it to the letter."""

    why: str


@dataclass(slots=True)
class Page:
    """A list answer: its items (selected only when the body is rendered, so that a render
    cache hit costs no selection), version, continue token and remaining count. ``state``
    is set for a list of the live state: the body is the same while that state holds."""

    entries: Callable[[], list[Entry]]
    rv: int
    token: str | None = None
    remaining: int | None = None
    state: tuple[int, int] | None = None


@dataclass(slots=True)
class Subscription:
    """A watch, registered with the Hub (``watcher``), and what it sends first: the initial
    events (as pieces whose concatenation is the event lines), then (``initial_end``) the
    bookmark that ends them. A watch that ends before it starts has no watcher, only its
    final ``error`` event, if any."""

    watcher: Watcher | None
    initial: Iterator[bytes] = field(default_factory=lambda: iter(()))
    initial_end: int | None = None
    error: bytes | None = None


def bookmark_frame(resource: CachedResource, rv: int, *, initial_end: bool = False) -> bytes:
    meta: dict[str, object] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    obj = {"kind": resource.spec.kind, "apiVersion": resource.spec.api_version, "metadata": meta}
    return b'{"type":"BOOKMARK","object":' + orjson.dumps(obj) + b"}\n"


def error_frame(status: object) -> bytes:
    return b'{"type":"ERROR","object":' + orjson.dumps(status) + b"}\n"


async def synced(res: CachedResource) -> None:
    """Waits, bounded, for the first sync; a 429 that says so when it takes too long."""
    if not res.store.synced and not await res.store.wait_synced(res.sync_wait):
        raise too_many_requests(
            f"the cache of {res.spec.plural}.{res.spec.group} is initializing", 1
        )


def behind_writes(res: CachedResource, namespace: str | None) -> list[tuple[str | None, int]]:
    """The feeds (of ``namespace``, or all) whose version is below what another worker's
    write reached (cache.shared), with that version; empty with one worker."""
    table = res.written
    if table is None:
        return []
    store = res.store
    feeds = store.feeds()
    if namespace is not None:
        feeds = (None,) if None in feeds else ((namespace,) if namespace in feeds else ())
    out = []
    for feed in feeds:
        wanted = table.get(res.key, feed)
        if wanted and (store.feed_rv(feed or "") or 0) < wanted:
            out.append((feed, wanted))
    return out


async def caught_up(res: CachedResource, namespace: str | None) -> bool:
    """True once this worker's cache shows every write any worker answered (read-your-writes
    across workers), at most ``rv_wait`` seconds; at once with one worker."""
    if res.written is None or not (behind := behind_writes(res, namespace)):
        return True
    res.written_waits += 1
    store = res.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + res.rv_wait
    while behind:
        left = deadline - loop.time()
        if left <= 0:
            res.written_delegated += 1
            return False
        # Woken by any change; a feed's bookmark notifies nobody, so also look again soon.
        changed: asyncio.Future[None] = loop.create_future()

        def wake(_event: object, changed: asyncio.Future[None] = changed) -> None:
            if not changed.done():
                changed.set_result(None)

        unsubscribe = store.subscribe(wake)
        try:
            await asyncio.wait_for(changed, min(left, POLL))
        except TimeoutError:
            pass
        finally:
            unsubscribe()
        behind = [(f, rv) for f, rv in behind if (store.feed_rv(f or "") or 0) < rv]
    return True


POLL = 0.005  # seconds between two looks at a feed's version while waiting for it


async def get(
    res: CachedResource, namespace: str, name: str, rv_text: str | None
) -> Entry | Delegate:
    """One object, or Delegate for a resourceVersion the cache has not reached (or, with
    several workers, a write another worker answered that this cache does not show yet)."""
    store = res.store
    if res.written is not None and not await caught_up(res, namespace):
        return Delegate("another worker's write not reached")
    if rv_text not in (None, "", "0"):
        rv = resource_version_int(rv_text)
        if not await store.wait_for(rv, res.rv_wait):
            return Delegate("resourceVersion not reached")
    entry = store.get(namespace, name)
    if entry is None:
        raise not_found(res.spec.group, res.spec.plural, name)
    return entry


async def list_(res: CachedResource, namespace: str | None, opts: ListOptions) -> Page | Delegate:
    """A list: the live store, a retained snapshot, or Delegate."""
    store = res.store
    if res.written is not None and not await caught_up(res, namespace):
        return Delegate("another worker's write not reached")
    rv_text = opts.resource_version or ""
    limit = 0 if rv_text == "0" else opts.limit  # rv "0": the whole list, always
    start: Key | None = None
    snap: Snapshot | None = None
    if opts.continue_at is not None:
        return Delegate("the API server's own continue token")
    if opts.continue_token:
        decoded = res.codec.decode(opts.continue_token)
        snap = store.retained(decoded[0]) if decoded else None
        if snap is None:
            raise continue_expired()
        start = decoded[1]  # type: ignore[index]
    elif rv_text not in ("", "0"):
        wanted = resource_version_int(rv_text)
        exact = opts.resource_version_match == "Exact" or (
            opts.resource_version_match is None and limit > 0
        )
        if not await store.wait_for(wanted, res.rv_wait):
            return Delegate("resourceVersion not reached")  # upstream knows it, or the 504
        if exact:
            snap = state_at(res, wanted)
            if snap is None:
                return Delegate("Exact resourceVersion not retained")  # etcd has it, or 410
    if snap is None and not limit:
        # The live items, at the version of their scope's last change (or the one asked
        # for, at which they are the same). With a feed per namespace, an all-namespaces
        # list may be answered at the store's version while a feed lags: then the items are
        # not pinned by the version alone, and the render is also tied to the store's
        # generation.
        rv = store.list_rv(namespace)
        pinned = namespace is not None or store.changed_rv <= store.rv
        if rv_text not in ("", "0"):
            rv = max(rv, resource_version_int(rv_text))
        labels, fields = opts.label_selector, opts.field_selector
        return Page(
            lambda: store.select(namespace, labels, fields),
            rv,
            state=(rv, -1 if pinned else store.generation),
        )
    return page(res, namespace, opts, snap or live_snapshot(res), start, limit)


def live_snapshot(res: CachedResource) -> Snapshot:
    """The current items for a first page: retained at the version of the store's last
    change while nothing changed since, so that re-reading a quiet store's first page gives
    the same body (and token)."""
    store = res.store
    changed = store.changed_rv
    return store.snapshot(as_rv=changed if changed <= store.rv else None)


def state_at(res: CachedResource, rv: int) -> Snapshot | None:
    """The items exactly at ``rv``: a retained snapshot, or the current state when nothing
    in the store changed after ``rv`` (the caller has waited for the store to reach it)."""
    store = res.store
    snap = store.retained(rv)
    if snap is not None:
        return snap
    return store.snapshot(as_rv=rv) if store.changed_at(None) <= rv else None


def page(
    res: CachedResource,
    namespace: str | None,
    opts: ListOptions,
    snap: Snapshot,
    start: Key | None,
    limit: int,
) -> Page:
    """One page of a retained snapshot, from just after ``start``. Like the API server's
    cache, "more" means unfiltered items remain, so a selective list may end on an empty
    page; remainingItemCount is given only for unfiltered lists."""
    keys, entries = snap.keys, snap.entries
    lo, hi = key_range(keys, namespace)
    if start is not None:
        lo = max(lo, bisect.bisect_right(keys, start))
    labels, fields = opts.label_selector, opts.field_selector
    remaining = None
    if labels.empty and fields.empty:
        end = min(hi, lo + limit) if limit else hi
        picked = list(entries[lo:end])
        more = end < hi
        if more:
            remaining = hi - end
    else:
        picked = []
        more = False
        for i in range(lo, hi):
            if matches(entries[i], labels, fields):
                picked.append(entries[i])
                if limit and len(picked) == limit:
                    more = i + 1 < hi
                    break
    token = res.codec.encode(snap.rv, picked[-1].key) if more else None
    return Page(lambda: picked, snap.rv, token, remaining)


async def watch(
    res: CachedResource, namespace: str | None, opts: ListOptions
) -> Subscription | Delegate:
    """A watch's start: from the state (initial events), from now, or from the history
    after a version; Delegate when the initial state must be at least as new as a version
    the cache has not reached (the API server can tell; the cache cannot)."""
    store, _hub = res.store, res.hub
    if res.written is not None and not await caught_up(res, namespace):
        return Delegate("another worker's write not reached")
    if opts.timeout_seconds is not None and opts.timeout_seconds < 0:
        # Past its deadline before it starts: it ends at once with no event; but a
        # consistent start first waits for a fresh state, and that wait fails.
        if opts.resource_version is None and opts.send_initial_events:
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
            status |= {"message": "context deadline exceeded", "reason": "InternalError"}
            return Subscription(None, error=error_frame(status | {"code": 500}))
        return Subscription(None)
    filter_ = Filter(namespace, opts.label_selector, opts.field_selector)
    rv_text = opts.resource_version or ""
    from_state = opts.send_initial_events is True or (
        rv_text in ("", "0") and opts.send_initial_events is None
    )
    wanted = 0
    if rv_text not in ("", "0"):
        wanted = resource_version_int(rv_text)
        if from_state and not await store.wait_for(wanted, res.rv_wait):
            # N may come from a write to another resource: only the API server can tell
            # that nothing changed up to it (or send the 504 ERROR event itself).
            return Delegate("resourceVersion not reached")
        # A legacy watch from N starts at once, as the cacher starts it: events up to N are
        # skipped as they arrive (``subscribe``). Waiting for the cache to reach N would
        # change nothing the client sees but its start: N is often etcd's revision, raised
        # by writes to other resources, which this cache learns of at the next bookmark.
    return subscribe(res, filter_, opts, wanted, from_state)


ADDED_HEAD = b'{"type":"ADDED","object":'
EVENT_TAIL = b"}\n"


def added_pieces(entries: Iterable[Entry]) -> Iterator[bytes]:
    """The ADDED events of ``entries`` as pieces to send in a row: each entry's own bytes
    between two constants, so that a watcher's initial events copy nothing."""
    for e in entries:
        yield ADDED_HEAD
        yield e.raw
        yield EVENT_TAIL


def subscribe(
    res: CachedResource, filter_: Filter, opts: ListOptions, wanted: int, from_state: bool
) -> Subscription:
    """The snapshot-then-subscribe step. No ``await`` in here: the state copied and the
    events that follow it join without a gap or an overlap."""
    store, hub = res.store, res.hub
    watcher = hub.watcher(filter_)
    sub = Subscription(watcher)
    rv_text = opts.resource_version or ""
    if from_state:
        entries = store.select(filter_.namespace, opts.label_selector, opts.field_selector)
        sub.initial = added_pieces(entries)
        watcher.rv = store.rv
        if opts.is_list_watch:
            sub.initial_end = store.rv
    elif rv_text in ("", "0"):
        watcher.rv = store.rv
    else:
        try:
            history = hub.since(wanted, filter_.namespace)
        except TooOld as exc:
            status = watch_too_old(exc.requested, exc.oldest + 1)
            return Subscription(None, error=error_frame(status))
        sub.initial = iter([f for wev in history if (f := filter_.frame(wev))])
        # A version the cache has not reached is no error: events up to it are skipped.
        watcher.rv = max(store.rv, wanted)
        watcher.skip_until = wanted
    hub.add(watcher)
    return sub
