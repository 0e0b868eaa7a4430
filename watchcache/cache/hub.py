"""The watch hub: one upstream watch (the Reflector's) fanned out to every downstream watcher.

Each store change becomes one ``WatchEvent`` whose wire bytes are built once, lazily, per
event type, and shared by every watcher that receives it. Watchers filter by namespace and
selectors and see selector transitions as Kubernetes shows them: an object that stops
matching arrives as DELETED (its previous state at the new version), one that starts
matching as ADDED.

Slow consumers: every watcher has a bounded queue. Delivery never waits for a watcher; one
whose queue is full is ended (it may resume from the last version it received), as the
Kubernetes API server's cacher ends watchers it cannot feed. Nothing here grows without
bound: the history is a ring limited in count and age, the queues in frames and in bytes
(frames are shared, but a lagging watcher pins the ones it has not sent, and one frame may
be a 1.5 MB object), and a stream takes at most ``drain``'s budget out of its queue at once,
so what waits in a stalled connection's write buffer is bounded too.

Re-lists: when the Reflector had to list again (its watch got 410), the Store replaces its
state and reports one ``Relisted`` instead of events. The difference of two lists is not
history: updates in between are gone, and a deletion's version is unknown (any version up
to the list's would be a guess, and several deletions would share it, so a client resuming
from one would skip the others). So the Hub does what kube-apiserver's watch cache does: the
history restarts at the list's version (a watch from an older one gets 410 Expired, "too old
resource version"), and every live watcher that could have seen one of those changes (all
namespaces, or a namespace the re-list changed) gets a 410 ERROR event and ends; its client
lists again, from this cache, and watches from that list. Keeping such a watcher on would
need a sequence with a distinct, true version per change, which the re-list cannot give.
Watchers of namespaces the re-list did not change keep their streams: they missed nothing.

Quiet scopes: a watch from a version older than the window is still served exactly when
nothing in its namespace (or, for all namespaces, in the store) changed after that version:
there is nothing to send. That is what lets a list of a quiet namespace carry the version of
its last change (see Store.list_rv) without sending its client into a 410 loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from watchcache.cache.store import Entry, Event, Relisted, Store, matches
from watchcache.kube.listoptions import watch_too_old
from watchcache.kube.selectors import FieldSelector, LabelSelector


class WatchEvent:
    """A store event with its wire forms built on first use and then shared."""

    __slots__ = ("_added", "_deleted", "_modified", "event")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._added: bytes | None = None
        self._modified: bytes | None = None
        self._deleted: bytes | None = None

    @property
    def rv(self) -> int:
        return self.event.rv

    def added(self) -> bytes:
        if self._added is None:
            self._added = b'{"type":"ADDED","object":' + self.event.entry.raw + b"}\n"
        return self._added

    def modified(self) -> bytes:
        if self._modified is None:
            self._modified = b'{"type":"MODIFIED","object":' + self.event.entry.raw + b"}\n"
        return self._modified

    def deleted(self) -> bytes:
        """A real deletion carries the final object; leaving a selector carries the previous
        state stamped with this event's version, as the cacher sends it. So does a deletion
        found by a re-list, whose entry is the last state seen (its bytes are the previous
        entry's): the client must see the deletion's version, not an older one."""
        if self._deleted is None:
            ev = self.event
            raw = ev.entry.raw
            if ev.prev is not None and (ev.type != "DELETED" or raw is ev.prev.raw):
                obj = orjson.loads(ev.prev.raw)
                obj.setdefault("metadata", {})["resourceVersion"] = str(ev.rv)
                raw = orjson.dumps(obj)
            self._deleted = b'{"type":"DELETED","object":' + raw + b"}\n"
        return self._deleted


@dataclass(frozen=True, slots=True)
class Filter:
    """What one watcher wants to see."""

    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector

    def __call__(self, entry: Entry | None) -> bool:
        if entry is None:
            return False
        if self.namespace is not None and entry.namespace != self.namespace:
            return False
        return matches(entry, self.labels, self.fields)

    def frame(self, wev: WatchEvent) -> bytes | None:
        """The bytes this watcher gets for ``wev``, or None when it gets nothing."""
        ev = wev.event
        now = self(ev.entry) if ev.type != "DELETED" else False
        before = self(ev.prev)
        if ev.type == "DELETED":
            return wev.deleted() if before or self(ev.entry) else None
        if now and before:
            return wev.modified()
        if now:
            return wev.added()
        if before:
            return wev.deleted()
        return None


class Watcher:
    """One downstream watch: a bounded queue of frames and the state of its stream."""

    def __init__(
        self,
        filter_: Filter,
        capacity: int,
        max_bytes: int,
        batch: Callable[[Watcher], None],
    ) -> None:
        self.filter = filter_
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.frames: deque[bytes] = deque()
        self.queued_bytes = 0  # the size of ``frames``
        self.rv = 0  # the version of the last frame queued
        self.skip_until = 0  # events at or below this version are not for this watcher
        self.ended = False
        self.overflowed = False
        # Set when the server shuts down: the store's version then. Every event up to it was
        # queued or written before the watcher stopped taking events, so once the queue is
        # out a bookmark at this version cannot overtake one (see ``close``).
        self.closing_rv: int | None = None
        # Called when the watcher is ended for falling behind: a stalled client may never
        # complete the write it is blocked in, so its connection must be closed, not waited on.
        self.on_overflow: Callable[[], None] | None = None
        # The fast path, set once the initial events are out: writes frames straight to the
        # client's socket buffer when nothing is in flight, and says whether it did. Fan-out
        # then costs one buffer write per watcher, not a coroutine wake-up each.
        self.direct: Callable[[Sequence[bytes]], bool] | None = None
        # The Hub's batch: a frame pushed onto an empty queue waits there for the end of the
        # loop's step (``flush``), so that every event of one upstream read reaches the
        # socket in one write. A server behind its events writes fewer, larger batches.
        self._batch = batch
        self.batched = False
        self._wake = asyncio.Event()

    def push(self, frame: bytes, rv: int) -> bool:
        if self.ended:
            return False
        if rv <= self.skip_until:
            return True
        if self.frames and (
            len(self.frames) >= self.capacity or self.queued_bytes + len(frame) > self.max_bytes
        ):  # an empty queue takes any one frame: no object is too big to watch
            self.overflowed = True
            self.end()
            if self.on_overflow is not None:
                self.on_overflow()
            return False
        self.frames.append(frame)
        self.queued_bytes += len(frame)
        self.rv = rv
        if self.batched:
            return True
        if len(self.frames) == 1 and self.direct is not None:
            self.batched = True
            self._batch(self)
        else:
            self._wake.set()
        return True

    def flush(self) -> None:
        """The batch's end: what was queued goes to the socket in one write when the stream
        is idle; otherwise the stream's coroutine is woken to write it."""
        self.batched = False
        if self.ended or not self.frames:
            return  # ended: the coroutine (already woken) writes what it must
        if self.direct is not None and self.direct(self.frames):
            self.frames.clear()
            self.queued_bytes = 0
        else:
            self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    def close(self, rv: int) -> None:
        """Ends the watch for a shutdown at store version ``rv``: the stream sends what is
        queued, then (if asked for bookmarks) a last bookmark at ``rv``, then its clean end."""
        if self.ended:
            return
        self.closing_rv = rv
        self.end()

    def poke(self) -> None:
        """Wakes the stream's coroutine with nothing queued (to watch a write in flight)."""
        self._wake.set()

    def expire(self, frame: bytes) -> None:
        """Ends the watch after ``frame`` (an ERROR event), queued past every bound: it is
        the last thing the client must read."""
        if self.ended:
            return
        self.frames.append(frame)
        self.queued_bytes += len(frame)
        self.end()

    def drain(self, budget: int, count: int = 1 << 30) -> list[bytes]:
        """Frames from the head of the queue: about ``budget`` bytes of them, at most
        ``count``, at least one."""
        out: list[bytes] = []
        taken = 0
        frames = self.frames
        while frames and (not out or (taken + len(frames[0]) <= budget and len(out) < count)):
            frame = frames.popleft()
            out.append(frame)
            taken += len(frame)
        self.queued_bytes -= taken
        if not frames:
            self._wake.clear()
        return out

    async def wait(self, timeout: float | None) -> None:
        if self.frames or self.ended or self._wake.is_set():
            self._wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)


@dataclass(kw_only=True)
class HistoryLimits:
    count: int = 10_000
    age: float = 300.0


class TooOld(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(requested, oldest)
        self.requested = requested
        self.oldest = oldest


@dataclass
class Hub:
    """Fans one Store's changes out to its watchers and remembers recent ones for resumption."""

    store: Store
    limits: HistoryLimits = field(default_factory=HistoryLimits)
    queue_capacity: int = 1024  # frames per watcher
    queue_bytes: int = 8 << 20  # bytes per watcher
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.history: deque[tuple[float, WatchEvent]] = deque()
        # Versions above this one are all in the history (or the store is not yet synced).
        self.window_start = 0
        self.watchers: set[Watcher] = set()  # those events are delivered to
        # The same, by filter: watchers that want the same things share one frame decision
        # per event (a dashboard's thousand watchers of one namespace filter it once).
        self._groups: dict[Filter, set[Watcher]] = {}
        # Those whose streams have not finished yet: close_all ends them, wait_closed waits.
        self._open: set[Watcher] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._batched: list[Watcher] = []  # frames queued in this step, written at its end
        self.ended_slow = 0  # watchers ended because they fell behind
        self.ended_relist = 0  # watchers ended with 410 because an upstream re-list broke history
        self.relists = 0
        self.events = 0
        self.store.subscribe(self._on_event)

    def _on_event(self, event: Event | Relisted) -> None:
        """Called by the Store inside its change step: no await, nothing here may block."""
        if isinstance(event, Relisted):
            self._on_relist(event)
            return
        wev = WatchEvent(event)
        now = self.clock()
        if not self.store.initial_list:  # a first list is the window's start, not history
            self.history.append((now, wev))
            self.events += 1
        self._trim(now)
        rv = wev.rv
        for filter_, group in list(self._groups.items()):
            frame = filter_.frame(wev)
            if frame is None:
                continue
            for watcher in tuple(group):  # a push may end a watcher, and a callback remove it
                if not watcher.push(frame, rv):
                    self._stop_delivering(watcher)
                    if watcher.overflowed:
                        self.ended_slow += 1

    def _stop_delivering(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        group = self._groups.get(watcher.filter)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._groups[watcher.filter]

    def _on_relist(self, relist: Relisted) -> None:
        """History breaks at ``relist.rv`` (see the module docstring)."""
        self.relists += 1
        self.history.clear()
        self.window_start = max(self.window_start, relist.rv)
        for watcher in list(self.watchers):
            ns = watcher.filter.namespace
            if ns is not None and ns not in relist.namespaces:
                continue  # nothing it may see changed: its sequence is still exact
            status = watch_too_old(watcher.rv, relist.rv + 1)
            watcher.expire(b'{"type":"ERROR","object":' + orjson.dumps(status) + b"}\n")
            self._stop_delivering(watcher)
            self.ended_relist += 1

    def _trim(self, now: float) -> None:
        limits = self.limits
        while self.history and (
            len(self.history) > limits.count or now - self.history[0][0] > limits.age
        ):
            _, dropped = self.history.popleft()
            self.window_start = max(self.window_start, dropped.rv)

    def oldest(self) -> int:
        """The lowest version a watch can resume from."""
        return max(self.window_start, self.store.sync_rv)

    def since(self, rv: int, namespace: str | None = None) -> list[WatchEvent]:
        """Every event after ``rv`` (of ``namespace``, or all); TooOld when the window no
        longer reaches back to ``rv`` and something in that scope changed after it."""
        oldest = self.oldest()
        if rv < oldest:
            if self.store.changed_at(namespace) <= rv:
                return []  # a quiet scope: nothing changed after rv, nothing to send
            raise TooOld(rv, oldest)
        return [
            wev
            for _, wev in self.history
            if wev.rv > rv and (namespace is None or wev.event.entry.namespace == namespace)
        ]

    def watcher(self, filter_: Filter) -> Watcher:
        """A new watcher with this hub's queue bounds; ``add`` starts its delivery."""
        return Watcher(filter_, self.queue_capacity, self.queue_bytes, self._batch)

    def _batch(self, watcher: Watcher) -> None:
        """Takes ``watcher`` into the step's batch; the first one schedules its flush."""
        if not self._batched:
            asyncio.get_running_loop().call_soon(self._flush)
        self._batched.append(watcher)

    def _flush(self) -> None:
        batched, self._batched = self._batched, []
        for watcher in batched:
            watcher.flush()

    def add(self, watcher: Watcher) -> None:
        self.watchers.add(watcher)
        self._groups.setdefault(watcher.filter, set()).add(watcher)
        self._open.add(watcher)
        self._all_closed.clear()

    def remove(self, watcher: Watcher) -> None:
        """Called once the watcher's stream has finished (its end is written)."""
        self._stop_delivering(watcher)
        self._open.discard(watcher)
        if not self._open:
            self._all_closed.set()

    def close_all(self) -> None:
        """Ends every watch (on shutdown); each stream then writes what it was sent, its last
        bookmark and its clean end. Called outside the store's change step, so every event up
        to ``store.rv`` has been handed to the watchers already."""
        rv = self.store.rv
        for watcher in list(self._open):
            watcher.close(rv)
        self.watchers.clear()
        self._groups.clear()

    async def wait_closed(self, timeout: float) -> bool:
        """After close_all: True once every stream has finished, False after ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        return self._all_closed.is_set()
