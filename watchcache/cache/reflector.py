"""List, then watch: keeps one Store current for one resource in one scope.

The loop, as client-go's reflector runs it: a paged LIST gives the state and a
resourceVersion; a WATCH from that version (with bookmarks) gives every later change. A
watch that ends or breaks is resumed from the last version seen, so nothing is missed and
nothing is listed again; only a 410 (the version fell out of etcd's window) forces a new
LIST, whose difference the Store turns into ordinary events.

A watch can also stall: the connection stays up and nothing arrives, not even the bookmark
kube-apiserver sends about every minute. Such a watch is ended once it has been silent
longer than ``silence`` seconds, and resumed like any broken one. While a reflector lists, or
resumes a watch that failed or went silent, its cache is known to be behind: ``behind``
says why (``/readyz`` and ``/metrics`` show it) until a new watch is established.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol
from urllib.parse import quote

import orjson

from watchcache.cache.listwatch import SinkT, Source, SourceError, StreamSink
from watchcache.cache.store import Entry
from watchcache.kube.resources import ResourceSpec

log = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Hands memory freed after a big LIST back to the system (glibc keeps it otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Sink(Protocol):
    """The narrow part of a Store that a Reflector writes to."""

    def apply(self, type_: str, obj: Any, *, feed: str | None = None) -> None: ...

    def bookmark(self, rv: int, *, feed: str | None = None) -> None: ...

    def replace(self, objects: Any, rv: int, *, feed: str | None = None) -> int: ...


class Gone(Exception):
    """The watch's resourceVersion is too old: only a new LIST can continue."""


class Silent(SourceError):
    """The watch delivered nothing for longer than the silence bound."""

    def __init__(self, message: str, *, established: bool) -> None:
        super().__init__(message)
        self.established = established  # it had been answered 200, then went quiet


# kube-apiserver sends a watch a bookmark about every minute: two periods and some slack.
DEFAULT_SILENCE = 130.0


@dataclass(kw_only=True)
class Backoff:
    """Jittered exponential backoff, reset after a success."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    rand: Callable[[], float] = random.random
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def delay(self) -> float:
        self._next = (
            self.initial if self._next == 0 else min(self._next * self.factor, self.maximum)
        )
        return self._next * (1 + self.jitter * (self.rand() - 0.5) * 2)


class Reflector(Generic[SinkT]):
    """Feeds ``sink`` from ``resource`` in ``namespace`` (None: all namespaces)."""

    def __init__(
        self,
        resource: ResourceSpec,
        upstream: Source[SinkT],
        sink: Sink,
        *,
        namespace: str | None = None,
        page_size: int = 500,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        silence: float = DEFAULT_SILENCE,
    ) -> None:
        self.resource = resource
        self.upstream = upstream
        self.sink = sink
        self.namespace = namespace
        self.page_size = page_size
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.path = resource.collection_path(namespace)
        selectors = ""
        if resource.label_selector:
            selectors += f"&labelSelector={quote(resource.label_selector)}"
        if resource.field_selector:
            selectors += f"&fieldSelector={quote(resource.field_selector)}"
        self.selectors = selectors
        self.silence = silence
        self.rv = 0
        self.lists = 0  # how many LISTs: one, unless 410s forced more
        self.watches = 0
        self.silent_watches = 0  # watches (or LIST pages) abandoned for silence
        # Why the cache is known to be behind upstream (None: it is not, as far as known).
        self.behind: str | None = "listing"
        self._last_byte = time.monotonic()
        self._sink: SinkT | None = None

    @property
    def name(self) -> str:
        scope = self.namespace or "all namespaces"
        return f"{self.resource.plural}.{self.resource.group} ({scope})"

    @property
    def last_byte(self) -> float:
        """When (time.monotonic) upstream last sent this reflector anything."""
        sink = self._sink
        if sink is not None and sink.any_data:
            return max(self._last_byte, sink.last_data)
        return self._last_byte

    def silent_for(self) -> float:
        """Seconds since upstream last sent anything (the metric of a stalled watch)."""
        return max(0.0, time.monotonic() - self.last_byte)

    async def run(self) -> None:
        """Runs until cancelled."""
        need_list = True
        while True:
            try:
                if need_list:
                    self.behind = "listing"
                    await self._list()
                    need_list = False
                await self._watch()
                self.backoff.reset()
            except Gone:
                log.info("%s: resourceVersion %d expired; listing again", self.name, self.rv)
                need_list = True
            except Silent as exc:
                self.behind = f"restarted after silence: {exc}"
                self.silent_watches += 1
                # An answered watch gone quiet is resumed at once; one never answered backs
                # off like any failure.
                delay = 0.0 if exc.established else self.backoff.delay()
                log.warning("%s: %s; watching again in %.1fs", self.name, exc, delay)
                if delay:
                    await self.sleep(delay)
            except (SourceError, OSError, ValueError) as exc:
                self.behind = f"upstream failed: {exc}"
                delay = self.backoff.delay()
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, delay)
                await self.sleep(delay)
            except Exception:
                # A bug must not silently stop the cache: say so loudly, and go on.
                self.behind = "unexpected error"
                delay = self.backoff.delay()
                log.exception("%s: unexpected error; listing again in %.1fs", self.name, delay)
                need_list = True
                await self.sleep(delay)

    async def _list(self) -> None:
        items: list[Any] = []
        token = ""
        while True:
            target = f"{self.path}?limit={self.page_size}{self.selectors}"
            if token:
                target += f"&continue={quote(token)}"
            page_request = self.upstream.fetch(
                "GET", target, headers={"Accept": "application/json"}
            )
            try:
                # A page is a few hundred objects: one that takes the whole silence bound
                # is as stalled as a silent watch.
                resp = await asyncio.wait_for(page_request, self.silence)
            except TimeoutError:
                raise Silent(
                    f"no LIST page from upstream in {self.silence:g}s", established=False
                ) from None
            self._last_byte = time.monotonic()
            if resp.code == 410 and token:
                # The list outlived etcd's compaction window mid-way: start again.
                items, token = [], ""
                continue
            if resp.code != 200:
                raise SourceError(f"LIST {target}: HTTP {resp.code}: {resp.body[:300]!r}")
            page = orjson.loads(resp.body)
            # Each page becomes entries at once: holding every page's decoded dicts until
            # the end would make the first list's peak (and so the RSS) many times the cache.
            items.extend(Entry.from_object(obj) for obj in page.get("items") or [])
            meta = page.get("metadata") or {}
            del page
            token = meta.get("continue") or ""
            if not token:
                rv = int(meta["resourceVersion"])
                break
        listed = len(items)
        count = self.sink.replace(items, rv, feed=self.namespace)
        del items
        release_free_memory()
        self.lists += 1
        self.rv = rv
        log.info("%s: listed %d objects at %d (%d changes)", self.name, listed, rv, count)

    async def _watch(self) -> None:
        # A server-side timeout spreads reconnections out, as client-go does (5-10 minutes).
        timeout = int(300 * (1 + random.random()))
        target = (
            f"{self.path}?watch=true&allowWatchBookmarks=true"
            f"&resourceVersion={self.rv}&timeoutSeconds={timeout}{self.selectors}"
        )
        sink = self.upstream.line_sink(self._on_line, self._on_head)
        self.watches += 1
        self._error: dict[str, Any] | None = None
        self._sink = sink
        try:
            await self._until_silent(
                self.upstream.send("GET", target, sink, headers={"Accept": "application/json"}),
                sink,
            )
        finally:
            self._last_byte, self._sink = self.last_byte, None
        # An ERROR event is recorded, not raised: raised inside the sink it would surface
        # as a broken connection, and the 410 that calls for a new LIST would be lost.
        if sink.code == 410 or (self._error is not None and self._error.get("code") == 410):
            raise Gone()
        if self._error is not None:
            raise SourceError(f"watch error: {self._error.get('message')}")
        if sink.code != 200:
            raise SourceError(f"WATCH {self.path}: HTTP {sink.code}: {sink.error_body[:300]!r}")

    async def _until_silent(self, request: Awaitable[None], sink: StreamSink) -> None:
        """Awaits ``request`` (the watch), ending it once ``sink`` has heard nothing for
        ``silence`` seconds: a stalled connection never ends by itself."""
        task = asyncio.ensure_future(request)
        try:
            while True:
                quiet = time.monotonic() - sink.last_data
                if quiet >= self.silence:
                    message = f"no byte from upstream for {quiet:.1f}s"
                    raise Silent(message, established=sink.code == 200)
                done, _ = await asyncio.wait({task}, timeout=self.silence - quiet)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()  # the client then closes the connection
                with contextlib.suppress(asyncio.CancelledError, SourceError, OSError):
                    await task

    def _on_head(self, code: int) -> None:
        if code == 200:
            # A watch from the last version seen is established: what was missed arrives
            # first on it, so the cache is no longer known to be behind.
            self.behind = None
            self.backoff.reset()

    def _on_line(self, line: bytes) -> None:
        if self._error is not None:
            return  # the server ends the stream after an error; nothing after it counts
        event = orjson.loads(line)
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.sink.apply(kind, obj, feed=self.namespace)
            self.rv = int(obj["metadata"]["resourceVersion"])
        elif kind == "BOOKMARK":
            self.rv = int(obj["metadata"]["resourceVersion"])
            self.sink.bookmark(self.rv, feed=self.namespace)
        elif kind == "ERROR":
            self._error = obj
