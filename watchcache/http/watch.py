"""``?watch=true`` on a cached resource: a newline-delimited JSON event stream from the Hub.

``cache.reads.watch`` registers the watcher (its snapshot and subscription in one step);
``WatchStream`` writes what follows once the middleware chain has returned, through the
adapter's ``Writer`` (chunk-framed by tornado). An event reaches an idle watcher's socket
buffer at the end of the loop step it arrived in, with every other event of that step, in
one write and with no coroutine wake-up. A watcher whose stream is still busy gets its
frames queued instead, and its coroutine writes them with ``await``: that wait is the
backpressure. When the bounded queue fills, the Hub ends the watch.

A client that stops reading is cut off whether or not more events come: every write it has
not taken within ``stall_timeout`` seconds (the initial events, a bookmark, a queued batch,
or a fast-path frame left in the socket's buffer) ends its connection. So what a stalled
watcher pins is bounded by time as well as by its queue: its initial events are built from
the shared entries one write budget at a time, never copied whole per watcher.

On shutdown (``Hub.close_all``) a watch sends what it was handed, then, if it asked for
bookmarks, a last BOOKMARK at the store's version of that moment, and ends cleanly: its
client resumes elsewhere from that version and misses nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Iterator, Sequence
from typing import TYPE_CHECKING

from tornado import iostream

from watchcache.cache.reads import Subscription, bookmark_frame
from watchcache.http.websocket import Handshake, WebSocketWriter
from watchcache.middleware.core import Headers, Request, Response, Writer

if TYPE_CHECKING:
    from watchcache.cache.hub import Watcher
    from watchcache.cache.resource import CachedResource
    from watchcache.kube.listoptions import ListOptions

WRITE_BUDGET = 1 << 20  # bytes written per flush: what a stalled stream holds in flight
MAX_FRAMES = 900  # pieces per flush, under what one sendmsg takes (see Out.write_now)


def watch_response(
    request: Request,
    resource: CachedResource,
    sub: Subscription,
    opts: ListOptions,
    ws: Handshake | None,
) -> Response:
    """The watch's answer: its head now, its events once the chain has returned. Even when
    asked for ``application/json;stream=watch``, kube-apiserver answers a JSON watch as plain
    ``application/json`` (it adds ``;stream=watch`` only to protobuf)."""
    watcher = sub.watcher
    if watcher is not None:
        request.on_disconnect(watcher.end)
        request.on_end(lambda: resource.hub.remove(watcher))
    stream = WatchStream(resource, sub, opts, ws)
    if ws is not None:
        return Response(status=101, headers=ws.headers(), body=stream)
    return Response(status=200, headers=Headers({"Content-Type": "application/json"}), body=stream)


class WatchStream:
    """The body of one watch: the initial events, then the Hub's, bookmarks, the end."""

    def __init__(
        self,
        resource: CachedResource,
        sub: Subscription,
        opts: ListOptions,
        ws: Handshake | None,
    ) -> None:
        self.resource = resource
        self.sub = sub
        self.opts = opts
        self.ws = ws

    async def run(self, out: Writer) -> None:
        resource, sub, watcher = self.resource, self.sub, self.sub.watcher
        stall = resource.stall_timeout
        writer: BodyWriter | WebSocketWriter
        writer = self.ws.accept(out, watcher) if self.ws is not None else BodyWriter(out, watcher)
        try:
            if self.ws is None:
                await out.start()  # a client counts the watch as open once it has the head
            if watcher is None:  # ended before it started: its last event, if any
                if sub.error is not None:
                    await writer.write((sub.error,), stall)
                return
            watcher.on_overflow = writer.abort
            await write_initial(writer, sub.initial, watcher, stall)
            if watcher.ended and watcher.closing_rv is None:
                # Gone, or expired (a re-list) before the initial events were all sent: what
                # was queued (the 410 ERROR, if any) is the last thing written. A shutdown
                # goes on below: the rest, then the last bookmark.
                if watcher.frames:
                    await writer.write(watcher.drain(WRITE_BUDGET, MAX_FRAMES), stall)
                return
            if sub.initial_end is not None:
                await writer.write(
                    (bookmark_frame(resource, sub.initial_end, initial_end=True),), stall
                )
            watcher.direct = writer.try_write
            await stream(writer, resource, watcher, self.opts)
        except iostream.StreamClosedError:
            pass  # the client went away: a normal end
        except TimeoutError:
            # It stopped reading: close the connection, since a write it never takes would
            # never finish, and what it pins is freed only then.
            resource.hub.ended_slow += 1
            writer.abort()
        finally:
            if watcher is not None:
                resource.hub.remove(watcher)
            await writer.end()  # the terminating chunk (or close frame): a clean end


async def within(write: Awaitable[None], stall: float) -> None:
    """A write the client must take within ``stall`` seconds (TimeoutError otherwise).

    Shielded: tornado's own write future must not be cancelled (it would log the
    cancellation); it ends when the connection is closed after the time-out."""
    await asyncio.wait_for(asyncio.shield(write), stall)


async def write_initial(
    writer: BodyWriter | WebSocketWriter, pieces: Iterator[bytes], watcher: Watcher, stall: float
) -> None:
    """Writes about WRITE_BUDGET bytes per flush, taking each batch only when the last one
    is out, so that a stalled or ended stream holds little, and stops as soon as the watch
    is ended. The pieces are the shared entries' bytes: a batch is references, not a copy."""
    batch: list[bytes] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= WRITE_BUDGET or len(batch) >= MAX_FRAMES:
            await writer.write(batch, stall)
            if watcher.ended and watcher.closing_rv is None:  # a shutdown sends them all
                return
            batch, size = [], 0
    if batch:
        await writer.write(batch, stall)


class BodyWriter:
    """Writes a watch's frames as the HTTP body, with the fast path the Hub calls."""

    def __init__(self, out: Writer, watcher: Watcher | None) -> None:
        self.out = out
        self.busy = False
        self.watcher = watcher  # None: a watch that ends at once (no fast path)
        # A fast-path write the socket did not take at once: the coroutine must see it
        # finish within the stall bound, even if no other event ever comes.
        self.pending: Awaitable[None] | None = None

    def try_write(self, frames: Sequence[bytes]) -> bool:
        """The fast path: only onto an idle stream, so nothing can overtake a queued frame."""
        out = self.out
        if self.busy or out.closed or not out.idle():
            return False
        done = out.write_now(frames)
        if isinstance(done, asyncio.Future):
            done.add_done_callback(ignore_closed)
            if not done.done():
                self.pending = done
                self.watcher.poke()  # type: ignore[union-attr]
        return True

    async def settle(self, stall: float) -> None:
        """Waits, bounded, for a fast-path write still in the socket's buffer."""
        pending, self.pending = self.pending, None
        if pending is not None and not (isinstance(pending, asyncio.Future) and pending.done()):
            await within(pending, stall)

    async def write(self, pieces: Sequence[bytes], stall: float) -> None:
        """The pieces as one chunk, within ``stall`` seconds (the stream is idle here: the
        coroutine awaits each of its writes, and ``settle`` the fast path's)."""
        self.busy = True
        try:
            done = self.out.write_now(pieces)
            if done is not None:
                await within(done, stall)
        finally:
            self.busy = False

    def abort(self) -> None:
        self.out.abort()

    async def end(self) -> None:
        """The adapter ends the body (the terminating chunk) once the stream returns."""


def ignore_closed(future: asyncio.Future[None]) -> None:
    """A fast-path write to a stream that closes later: the loop notices, nothing to report."""
    if not future.cancelled():
        future.exception()


async def stream(
    writer: BodyWriter | WebSocketWriter,
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
        frames = watcher.drain(WRITE_BUDGET, MAX_FRAMES)
        if frames:
            await writer.write(frames, stall)
        if watcher.ended and not watcher.frames:  # ended: what was queued is sent
            if watcher.closing_rv is not None and opts.allow_watch_bookmarks:
                # The shutdown's bookmark: every event up to closing_rv is written (above),
                # so the client may resume from it on another server and miss nothing.
                watcher.rv = max(watcher.rv, watcher.closing_rv)
                await writer.write((bookmark_frame(resource, watcher.rv),), stall)
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
                await writer.write((bookmark_frame(resource, watcher.rv),), stall)
            next_bookmark = t + interval
        if t >= deadline:
            return
