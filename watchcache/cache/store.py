"""The in-memory state of one cached resource, fed only by its Reflector.

Each entry keeps the object's JSON bytes (serialized once, when its event arrives), its
labels and its resourceVersion; nothing else of the object is kept as Python objects. Keys
are kept sorted in Kubernetes list order (namespace, then name), and a label index turns a
selective list into O(matches).

Concurrency: everything runs on one event loop. ``apply``/``replace`` change the state and
notify listeners in one synchronous step with no ``await`` inside, so a reader or watcher
never sees half an event. Entries are immutable and replaced whole, so a snapshot is just a
tuple of references.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from sys import intern
from typing import Any, Literal

import orjson
from cachetools import TTLCache

from watchcache.kube.selectors import FieldSelector, LabelSelector, lookup_path
from watchcache.kube.wire import go_escape

# "namespace/name", the API server's storage key: lists are in its byte order, which is not
# (namespace, name) order ("a-1/x" sorts before "a/x"). Cluster-scoped objects: "name".
Key = str


def key_of(namespace: str, name: str) -> Key:
    return f"{namespace}/{name}" if namespace else name


EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One object as stored. Do not modify; a change replaces the whole entry."""

    namespace: str
    name: str
    rv: int
    raw: bytes
    labels: Mapping[str, str]

    @property
    def key(self) -> Key:
        return key_of(self.namespace, self.name)

    def field(self, path: str) -> str | None:
        """A field's value for field selectors; only uncommon paths decode the object."""
        if path == "metadata.name":
            return self.name
        if path == "metadata.namespace":
            return self.namespace
        return lookup_path(orjson.loads(self.raw), path)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Entry:
        meta = obj.get("metadata") or {}
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta["name"],
            rv=int(meta["resourceVersion"]),
            # orjson leaves its output buffer over-allocated (often 2x): keep an exact copy,
            # with the characters Go's encoder escapes escaped once here, so that a get, a
            # list and a watch event send these bytes as they are.
            raw=go_escape(memoryview(orjson.dumps(obj)).tobytes()),
            # Label keys and values repeat across objects: one copy of each string.
            labels={intern(k): intern(v) for k, v in (meta.get("labels") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Event:
    """A change, as watchers see it. ``entry`` is the new state (the last one, for DELETED)."""

    type: EventType
    entry: Entry
    prev: Entry | None
    rv: int


@dataclass(frozen=True, slots=True)
class Relisted:
    """A re-list replaced the state of ``namespaces`` at version ``rv``.

    What changed between the last event and the list is known only as a difference: which
    updates happened in between, and when each deletion happened, is lost. So it is not
    history, and listeners are told that history broke here instead of being handed made-up
    events (see the Hub for what watchers then see).
    """

    rv: int
    namespaces: frozenset[str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The store's items at one resourceVersion, in list order; kept for pagination and Exact."""

    rv: int
    generation: int
    entries: tuple[Entry, ...]
    keys: tuple[Key, ...]


def key_range(keys: list[Key] | tuple[Key, ...], namespace: str | None) -> tuple[int, int]:
    """The slice of sorted ``keys`` that holds one namespace ('/' + 1 is '0')."""
    if namespace is None:
        return 0, len(keys)
    return bisect.bisect_left(keys, namespace + "/"), bisect.bisect_left(keys, namespace + "0")


def matches(entry: Entry, labels: LabelSelector, fields: FieldSelector) -> bool:
    return (labels.empty or labels.matches(entry.labels)) and (
        fields.empty or fields.matches(entry.field)
    )


Listener = Callable[[Event | Relisted], None]

# Namespaces remembered with the version of their last change before empty ones are swept.
NAMESPACE_VERSIONS = 4096


class Store:
    """Objects of one resource by namespace/name, their label index and the store's version.

    ``rv`` is the resourceVersion up to which every change is known: the last event's or
    bookmark's. When several feeds (one per namespace) fill one store, it is the lowest of
    theirs, since a feed that lags may still deliver changes below the others' versions.
    """

    def __init__(
        self,
        *,
        feeds: Iterable[str | None] = (None,),
        snapshot_ttl: float = 300.0,
        snapshots: int = 32,
    ) -> None:
        self._items: dict[Key, Entry] = {}
        self._keys: list[Key] = []  # sorted; Kubernetes list order
        self._index: dict[str, dict[str, set[Key]]] = {}
        self._by_name: dict[str, set[Key]] = {}  # metadata.name across namespaces
        self._feed_rv: dict[str | None, int] = dict.fromkeys(feeds, 0)
        self._unsynced: set[str | None] = set(self._feed_rv)
        # True while a feed's first list is applied: its events are initial state, not history.
        self.initial_list = False
        # The highest first-list version of any feed: every change above it is an event.
        self.sync_rv = 0
        self.rv = 0
        # Bumped on every change of the items (not on bookmarks).
        self.generation = 0
        # The version of the last change, store-wide and per namespace (an apply's version,
        # or a re-list's for the namespaces it changed). A scope's items are the same at
        # every version from its last change up to ``rv``: its lists carry that version, so
        # that a quiet namespace's answer (and its ETag) stays the same while others change.
        self.changed_rv = 0
        self._ns_changed: dict[str, int] = {}
        # Namespaces not in ``_ns_changed`` last changed at or before this version: the
        # first list's, or the newest version of an empty namespace swept out of the dict.
        self._ns_floor: dict[str | None, int] = dict.fromkeys(self._feed_rv, 0)
        self._ns_limit = NAMESPACE_VERSIONS
        self._listeners: list[Listener] = []
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._synced_event = asyncio.Event()
        self._snapshots: TTLCache[int, Snapshot] = TTLCache(maxsize=snapshots, ttl=snapshot_ttl)

    # ---- reading -------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return not self._unsynced

    async def wait_synced(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._synced_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._items)

    def get(self, namespace: str, name: str) -> Entry | None:
        return self._items.get(key_of(namespace, name))

    def keys_in(self, namespace: str | None) -> list[Key]:
        """Sorted keys of one namespace (bisected out of the sorted key list), or all of them."""
        if namespace is None:
            return self._keys
        lo, hi = key_range(self._keys, namespace)
        return self._keys[lo:hi]

    def entries_in(self, namespace: str | None) -> list[Entry]:
        items = self._items
        return [items[k] for k in self.keys_in(namespace)]

    def select(
        self, namespace: str | None, labels: LabelSelector, fields: FieldSelector
    ) -> list[Entry]:
        """Matching entries in list order, using the cheapest way in: a name, the label index,
        or the namespace's key range."""
        items = self._items
        name = fields.value_for("metadata.name")
        ns = fields.value_for("metadata.namespace")
        if ns is not None:
            if namespace is not None and ns != namespace:
                return []
            namespace = ns
        if name is not None and namespace is not None:
            entry = items.get(key_of(namespace, name))
            return [entry] if entry is not None and matches(entry, labels, fields) else []
        candidates = self._index_candidates(labels)
        if name is not None:
            named = self._by_name.get(name, set())
            candidates = named if candidates is None else candidates & named
        if candidates is not None:
            prefix = f"{namespace}/" if namespace is not None else ""
            keys: Iterable[Key] = sorted(k for k in candidates if k.startswith(prefix))
        else:
            keys = self.keys_in(namespace)
        if labels.empty and fields.empty:
            return [items[k] for k in keys]
        return [e for k in keys if matches(e := items[k], labels, fields)]

    def _index_candidates(self, labels: LabelSelector) -> set[Key] | None:
        pick = labels.index_candidates()
        if pick is None:
            return None
        key, values = pick
        by_value = self._index.get(key, {})
        out: set[Key] = set()
        for value in values:
            out |= by_value.get(value, set())
        return out

    def snapshot(self, *, as_rv: int | None = None) -> Snapshot:
        """The current items, retained (TTL, LRU) so later pages and Exact reads can use them.

        ``as_rv``: an older version at which the caller knows the items were the same."""
        rv = self.rv if as_rv is None else as_rv
        snap = self._snapshots.get(rv)
        if snap is None or snap.generation != self.generation:
            current = self._snapshots.get(self.rv)
            if current is not None and current.generation == self.generation:
                snap = Snapshot(rv, self.generation, current.entries, current.keys)
            else:
                keys = tuple(self._keys)
                snap = Snapshot(rv, self.generation, tuple(self._items[k] for k in keys), keys)
            self._snapshots[rv] = snap
        return snap

    def retained(self, rv: int) -> Snapshot | None:
        return self._snapshots.get(rv)

    def entries(self) -> Iterator[Entry]:
        return (self._items[k] for k in self._keys)

    def changed_at(self, namespace: str | None) -> int:
        """The version of the last change in ``namespace`` (None: anywhere in the store).

        Nothing in that scope changed after it: its items now are its items at every version
        from this one up to the version its feed has reached."""
        if namespace is None:
            return self.changed_rv
        rv = self._ns_changed.get(namespace)
        if rv is not None:
            return rv
        feed = None if None in self._ns_floor else namespace
        return self._ns_floor.get(feed, self.sync_rv)

    def list_rv(self, namespace: str | None) -> int:
        """The resourceVersion a list of the current items of ``namespace`` carries: its last
        change, at which those items are exact. (With a feed per namespace, a store-wide
        change may be ahead of a lagging feed; the store's own version is then the answer.)"""
        if namespace is None:
            return min(self.changed_rv, self.rv)
        return self.changed_at(namespace)

    def feeds(self) -> tuple[str | None, ...]:
        """The feeds filling this store: one namespace each, or None for all of them."""
        return tuple(self._feed_rv)

    def feed_rv(self, namespace: str) -> int | None:
        """The version up to which the feed holding ``namespace`` has delivered its changes;
        None when no feed holds it (the namespace is not cached)."""
        if None in self._feed_rv:
            return self._feed_rv[None]
        return self._feed_rv.get(namespace)

    # ---- waiting for a version -------------------------------------------------------------
    async def wait_for(self, rv: int, timeout: float) -> bool:
        """True once the store has reached ``rv``; False after ``timeout`` seconds."""
        if self.rv >= rv:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (rv, next(self._seq), fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return self.rv >= rv
        finally:
            if not fut.done():
                fut.cancel()
        return True

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.rv:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
        # Drop waiters that gave up, so the heap does not grow with abandoned requests.
        if len(self._waiters) > 1024:
            self._waiters = [w for w in self._waiters if not w[2].done()]
            heapq.heapify(self._waiters)

    # ---- listening -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Calls ``listener`` synchronously for every change; returns the unsubscribe call."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ---- writing (the Reflector only) ------------------------------------------------------
    def apply(self, type_: str, obj: Mapping[str, Any], *, feed: str | None = None) -> None:
        """One watch event. Synchronous: the change and its notification are one step."""
        entry = Entry.from_object(obj)
        prev = self._items.get(entry.key)
        if type_ == "DELETED":
            if prev is not None:
                self._remove(prev)
            event = Event("DELETED", entry, prev, entry.rv)
        else:
            self._put(entry, prev)
            event = Event("ADDED" if prev is None else "MODIFIED", entry, prev, entry.rv)
        self.generation += 1
        self._changed((entry.namespace,), entry.rv)
        self._notify(event)
        self._advance(feed, entry.rv)

    def bookmark(self, rv: int, *, feed: str | None = None) -> None:
        self._advance(feed, rv)

    def replace(
        self, objects: Iterable[Entry | Mapping[str, Any]], rv: int, *, feed: str | None = None
    ) -> int:
        """A (re-)list's result at version ``rv``; returns the number of objects it changed.

        A feed's first list is the initial state: its objects are notified as ADDED, with
        ``initial_list`` set, so that listeners can tell them from history. A later list
        (after a 410) replaces the state at once and notifies one ``Relisted`` when anything
        differs; a list that finds nothing changed is only a newer version, like a bookmark.
        """
        initial = feed in self._unsynced
        fresh = {
            e.key: e for e in (o if isinstance(o, Entry) else Entry.from_object(o) for o in objects)
        }
        in_scope = [k for k in self._items if feed is None or k.startswith(feed + "/")]
        changes: list[tuple[Entry, Entry | None]] = []  # (new, prev)
        for key, entry in fresh.items():
            prev = self._items.get(key)
            if prev is None or prev.rv != entry.rv:
                changes.append((entry, prev))
        changes.sort(key=lambda c: c[0].rv)
        # Gone (none in an initial list: nothing of a feed is stored before its first list).
        gone = [self._items[k] for k in in_scope if k not in fresh]
        self.initial_list = initial
        touched: set[str] = set()
        for entry, prev in changes:
            self._put(entry, prev)
            touched.add(entry.namespace)
            if initial:  # the initial state, notified object by object
                self.generation += 1
                self._notify(Event("ADDED", entry, None, entry.rv))
        for prev in gone:
            self._remove(prev)
            touched.add(prev.namespace)
        self.initial_list = False
        if initial:
            self._ns_floor[feed] = rv
            self.changed_rv = max(self.changed_rv, rv)
            self.sync_rv = max(self.sync_rv, rv)
        elif changes or gone:
            self.generation += 1
            self._changed(touched, rv)
            self._notify(Relisted(rv, frozenset(touched)))
        self._advance(feed, rv)
        if initial:
            self._unsynced.discard(feed)
            if not self._unsynced:
                self._synced_event.set()
        return len(changes) + len(gone)

    def _changed(self, namespaces: Iterable[str], rv: int) -> None:
        self.changed_rv = max(self.changed_rv, rv)
        for ns in namespaces:
            self._ns_changed[ns] = rv
        if len(self._ns_changed) > self._ns_limit:
            self._sweep_namespaces()

    def _sweep_namespaces(self) -> None:
        """Forgets the versions of namespaces that hold no object, keeping their newest as
        their feeds' floor: the dict stays bounded however many namespaces come and go."""
        for ns, rv in list(self._ns_changed.items()):
            lo, hi = key_range(self._keys, ns)
            if lo == hi:
                del self._ns_changed[ns]
                feed = None if None in self._ns_floor else ns
                if feed in self._ns_floor:
                    self._ns_floor[feed] = max(self._ns_floor[feed], rv)
        self._ns_limit = max(NAMESPACE_VERSIONS, 2 * len(self._ns_changed))

    def _put(self, entry: Entry, prev: Entry | None) -> None:
        key = entry.key
        if prev is None:
            bisect.insort(self._keys, key)
            self._by_name.setdefault(entry.name, set()).add(key)
        else:
            self._unindex(prev)
        self._items[key] = entry
        for k, v in entry.labels.items():
            self._index.setdefault(k, {}).setdefault(v, set()).add(key)

    def _remove(self, prev: Entry) -> None:
        key = prev.key
        del self._items[key]
        i = bisect.bisect_left(self._keys, key)
        del self._keys[i]
        named = self._by_name[prev.name]
        named.discard(key)
        if not named:
            del self._by_name[prev.name]
        self._unindex(prev)

    def _unindex(self, entry: Entry) -> None:
        for k, v in entry.labels.items():
            by_value = self._index.get(k)
            if by_value is None:
                continue
            keys = by_value.get(v)
            if keys is not None:
                keys.discard(entry.key)
                if not keys:
                    del by_value[v]
                    if not by_value:
                        del self._index[k]

    def _notify(self, event: Event | Relisted) -> None:
        for listener in self._listeners:
            listener(event)

    def _advance(self, feed: str | None, rv: int) -> None:
        if rv > self._feed_rv.get(feed, 0):
            self._feed_rv[feed] = rv
        lowest = min(self._feed_rv.values())
        if lowest > self.rv:
            self.rv = lowest
            self._wake()
