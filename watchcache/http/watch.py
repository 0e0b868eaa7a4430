"""``?watch=true`` on a cached resource: a newline-delimited JSON event stream from the Hub.

Once the initial events are out, the body is written to the connection's stream directly
(chunk-framed here; tornado writes the head and the terminating chunk). An event reaches an
idle watcher's socket buffer inside the Hub's fan-out step, with no coroutine wake-up. A
watcher whose stream is still busy gets its frames queued instead, and its coroutine writes
them with ``await``: that wait is the backpressure. When the bounded queue fills, the Hub
ends the watch.

A client that stops reading is cut off whether or not more events come: every write it has
not taken within ``stall_timeout`` seconds (the initial events, a bookmark, a queued batch,
or a fast-path frame left in the socket's buffer) ends its connection. So what a stalled
watcher pins is bounded by time as well as by its queue: its initial events are built from
the shared entries one write budget at a time, never copied whole per watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING

import orjson
from tornado import iostream

from watchcache.cache.hub import Filter, TooOld, Watcher
from watchcache.http.websocket import WebSocketWatch, websocket_watch
from watchcache.kube.listoptions import ListOptions, resource_version_int, watch_too_old

if TYPE_CHECKING:
    from watchcache.cache.resource import CachedResource
    from watchcache.http.context import ReadHandler

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
WRITE_BUDGET = 1 << 20  # bytes written per flush: what a stalled stream holds in flight


def bookmark_frame(resource: CachedResource, rv: int, *, initial_end: bool = False) -> bytes:
    meta: dict[str, object] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    obj = {"kind": resource.spec.kind, "apiVersion": resource.spec.api_version, "metadata": meta}
    return b'{"type":"BOOKMARK","object":' + orjson.dumps(obj) + b"}\n"


async def serve_watch(
    handler: ReadHandler, resource: CachedResource, namespace: str | None, opts: ListOptions
) -> None:
    store, hub = resource.store, resource.hub
    ws = websocket_watch(handler)  # None: plain HTTP; raises a refused handshake
    if opts.timeout_seconds is not None and opts.timeout_seconds < 0:
        await _expired(handler, opts, ws)
        return
    filter_ = Filter(namespace, opts.label_selector, opts.field_selector)
    watcher = hub.watcher(filter_)
    watcher.on_overflow = handler.request.connection.close  # type: ignore[union-attr]
    handler.watcher = watcher
    rv_text = opts.resource_version or ""
    initial: Iterator[bytes] = iter(())
    initial_end: int | None = None

    start_from_state = opts.send_initial_events is True or (
        rv_text in ("", "0") and opts.send_initial_events is None
    )
    wanted = 0
    if rv_text not in ("", "0"):
        wanted = resource_version_int(rv_text)
        reached = await store.wait_for(wanted, resource.rv_wait)
        if start_from_state and not reached:
            # The initial state must be at least as new as N, and the cache cannot tell that
            # nothing changed up to N (N may come from a write to another resource). The API
            # server can: it answers this watch (or sends the 504 ERROR event itself).
            await handler._forward()
            return
        # A legacy watch from N needs no such state: events up to N are skipped below.

    # From here to hub.add there is no await: the state copied and the events that follow
    # it join without a gap or an overlap.
    if start_from_state:
        entries = store.select(namespace, opts.label_selector, opts.field_selector)
        initial = (b'{"type":"ADDED","object":' + e.raw + b"}\n" for e in entries)
        watcher.rv = store.rv
        if opts.is_list_watch:
            initial_end = store.rv
    elif rv_text in ("", "0"):
        watcher.rv = store.rv
    else:
        try:
            frames = [f for wev in hub.since(wanted, namespace) if (f := filter_.frame(wev))]
            initial = iter(frames)
            # A version the cache has not reached is no error: events up to it are skipped.
            watcher.rv = max(store.rv, wanted)
            watcher.skip_until = wanted
        except TooOld as exc:
            status = watch_too_old(exc.requested, exc.oldest + 1)
            with contextlib.suppress(iostream.StreamClosedError, TimeoutError):
                writer = await _start_stream(handler, ws, watcher)
                event = b'{"type":"ERROR","object":' + orjson.dumps(status) + b"}\n"
                await writer.write(event, resource.stall_timeout)
            await _end(handler, ws)
            return
    hub.add(watcher)

    stall = resource.stall_timeout
    try:
        writer = await _start_stream(handler, ws, watcher)
        await _write_initial(writer, initial, watcher, stall)
        if watcher.ended:
            # Shut down, gone, or expired (a re-list) before the initial events were all
            # sent: what was queued (the 410 ERROR, if any) is the last thing written.
            if watcher.frames:
                handler.write(b"".join(watcher.drain(WRITE_BUDGET)))
            return
        if initial_end is not None:
            await writer.write(bookmark_frame(resource, initial_end, initial_end=True), stall)
        watcher.direct = writer.try_write
        await _stream(writer, resource, watcher, opts)
    except iostream.StreamClosedError:
        pass  # the client went away: a normal end
    except TimeoutError:
        # It stopped reading: close the connection, since a write it never takes would
        # never finish, and what it pins is freed only then.
        hub.ended_slow += 1
        if ws is not None:
            ws.abort()
        else:
            handler.request.connection.close()  # type: ignore[union-attr]
    finally:
        try:
            await _end(handler, ws)  # the terminating chunk: a clean end the client can tell
        finally:
            hub.remove(watcher)


async def _expired(handler: ReadHandler, opts: ListOptions, ws: WebSocketWatch | None) -> None:
    """A negative timeoutSeconds: the API server's watch is past its deadline before it
    starts, so it ends at once with no event; but a consistent start (no resourceVersion)
    first waits for a fresh state, and that wait fails with an ERROR event."""
    with contextlib.suppress(iostream.StreamClosedError, TimeoutError):
        writer = await _start_stream(handler, ws, None)
        if opts.resource_version is None and opts.send_initial_events:
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
            status |= {"message": "context deadline exceeded", "reason": "InternalError"}
            event = {"type": "ERROR", "object": status | {"code": 500}}
            await writer.write(orjson.dumps(event) + b"\n", handler.resource.stall_timeout)
    await _end(handler, ws)


async def _start_stream(
    handler: ReadHandler, ws: WebSocketWatch | None, watcher: Watcher | None
) -> _BodyWriter | WebSocketWatch:
    """Sends the head at once: a client waits for it before it counts the watch as open
    (over WebSocket, the 101). Even when asked for ``application/json;stream=watch``,
    kube-apiserver answers a JSON watch as plain ``application/json`` (it adds
    ``;stream=watch`` only to protobuf)."""
    if ws is not None:
        return ws.accept(watcher)
    handler.set_header("Content-Type", "application/json")
    handler.set_header("Cache-Control", "no-cache, private")
    await handler.flush()
    return _BodyWriter(handler, watcher)


async def _end(handler: ReadHandler, ws: WebSocketWatch | None) -> None:
    if ws is not None:
        await ws.end()
    elif not handler._finished:
        handler.finish()


async def _within(write: Awaitable[None], stall: float) -> None:
    """A write the client must take within ``stall`` seconds (TimeoutError otherwise).

    Shielded: tornado's own write future must not be cancelled (it would log the
    cancellation); it ends when the connection is closed after the time-out."""
    await asyncio.wait_for(asyncio.shield(write), stall)


async def _write_initial(
    writer: _BodyWriter | WebSocketWatch, frames: Iterator[bytes], watcher: Watcher, stall: float
) -> None:
    """Writes about WRITE_BUDGET bytes per flush, building each batch only when the last one
    is out, so that a stalled or ended stream holds little, and stops as soon as the watch
    is ended."""
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        batch.append(frame)
        size += len(frame)
        if size >= WRITE_BUDGET:
            await writer.write(b"".join(batch), stall)
            if watcher.ended:
                return
            batch, size = [], 0
    if batch:
        await writer.write(b"".join(batch), stall)


class _BodyWriter:
    """Writes body bytes to the connection's stream, chunk-framed as tornado would."""

    def __init__(self, handler: ReadHandler, watcher: Watcher | None) -> None:
        conn = handler.request.connection
        self.stream: iostream.IOStream = conn.stream  # type: ignore[union-attr]
        # HTTP/1.0 clients get the raw body, ended by closing the connection.
        self.chunked: bool = getattr(conn, "_chunking_output", True)
        self.busy = False
        self.watcher = watcher  # None: a watch that ends at once (no fast path)
        # A fast-path write the socket did not take at once: the coroutine must see it
        # finish within the stall bound, even if no other event ever comes.
        self.pending: asyncio.Future[None] | None = None

    def _framed(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data

    def try_write(self, frame: bytes) -> bool:
        """The fast path: only onto an idle stream, so nothing can overtake a queued frame."""
        if self.busy or self.stream.closed() or self.stream.writing():
            return False
        done = self.stream.write(self._framed(frame))
        done.add_done_callback(_ignore_closed)
        if not done.done():
            self.pending = done
            self.watcher.poke()  # type: ignore[union-attr]
        return True

    async def settle(self, stall: float) -> None:
        """Waits, bounded, for a fast-path write still in the socket's buffer."""
        pending, self.pending = self.pending, None
        if pending is not None and not pending.done():
            await _within(pending, stall)

    async def write(self, data: bytes, stall: float) -> None:
        self.busy = True
        try:
            await _within(self.stream.write(self._framed(data)), stall)
        finally:
            self.busy = False


def _ignore_closed(future: object) -> None:
    """A fast-path write to a stream that closes later: the loop notices, nothing to report."""
    future.exception()  # type: ignore[attr-defined]


async def _stream(
    writer: _BodyWriter | WebSocketWatch,
    resource: CachedResource,
    watcher: Watcher,
    opts: ListOptions,
) -> None:
    store = resource.store
    now = time.monotonic
    # Without timeoutSeconds the API server picks one in [min-request-timeout, 2x] (30-60 min).
    timeout = opts.timeout_seconds or resource.watch_timeout * (1 + random.random())
    deadline = now() + timeout
    interval = resource.bookmark_interval
    stall = resource.stall_timeout
    next_bookmark = now() + interval * (0.75 + random.random() / 2)
    while True:
        wait_until = min(deadline, next_bookmark) if opts.allow_watch_bookmarks else deadline
        await watcher.wait(max(0.0, wait_until - now()))
        await writer.settle(stall)
        frames = watcher.drain(WRITE_BUDGET)
        if frames:
            await writer.write(b"".join(frames), stall)
        if watcher.ended and not watcher.frames:  # ended on shutdown: what was queued is sent
            return
        t = now()
        if (
            opts.allow_watch_bookmarks
            and not watcher.frames
            and (t >= next_bookmark or t >= deadline)
        ):
            # Every event up to store.rv has been written or queued (the store notifies
            # before it advances), and the queue is empty: this bookmark cannot overtake one.
            if store.rv > watcher.rv or t >= deadline:
                watcher.rv = max(watcher.rv, store.rv)
                await writer.write(bookmark_frame(resource, watcher.rv), stall)
            next_bookmark = t + interval
        if t >= deadline:
            return
