"""``?watch=true`` on a cached resource: a newline-delimited JSON event stream from the Hub.

Written with ``write`` + ``await flush()``: the flush is the backpressure. While a client
reads slowly its frames wait in its bounded queue; when that fills, the Hub ends the watch.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import orjson
from tornado import iostream

from watchcache.listoptions import ListOptions, resource_version_int, watch_too_old
from watchcache.watch import Filter, TooOld, Watcher

if TYPE_CHECKING:
    from watchcache.handlers.read import CachedResource, ResourceHandler

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
BATCH = 256  # initial frames written per flush


def bookmark_frame(resource: CachedResource, rv: int, *, initial_end: bool = False) -> bytes:
    meta: dict[str, object] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    obj = {"kind": resource.spec.kind, "apiVersion": resource.spec.api_version, "metadata": meta}
    return b'{"type":"BOOKMARK","object":' + orjson.dumps(obj) + b"}\n"


async def serve_watch(
    handler: ResourceHandler, resource: CachedResource, namespace: str | None, opts: ListOptions
) -> None:
    store, hub = resource.store, resource.hub
    filter_ = Filter(namespace, opts.label_selector, opts.field_selector)
    watcher = Watcher(filter_, hub.queue_capacity)
    watcher.on_overflow = handler.request.connection.close  # type: ignore[union-attr]
    handler.watcher = watcher
    rv_text = opts.resource_version or ""
    initial: list[bytes] = []
    initial_end: int | None = None

    if rv_text not in ("", "0"):
        wanted = resource_version_int(rv_text)
        await store.wait_for(wanted, resource.rv_wait)
    else:
        wanted = 0

    # From here to hub.add there is no await: the state copied and the events that follow
    # it join without a gap or an overlap.
    start_from_state = opts.send_initial_events is True or (
        rv_text in ("", "0") and opts.send_initial_events is None
    )
    if start_from_state:
        for entry in store.select(namespace, opts.label_selector, opts.field_selector):
            initial.append(b'{"type":"ADDED","object":' + entry.raw + b"}\n")
        watcher.rv = store.rv
        if opts.is_list_watch:
            initial_end = store.rv
    elif rv_text in ("", "0"):
        watcher.rv = store.rv
    else:
        try:
            for wev in hub.since(wanted):
                frame = filter_.frame(wev)
                if frame is not None:
                    initial.append(frame)
            # A version the cache has not reached is no error: events up to it are skipped.
            watcher.rv = max(store.rv, wanted)
            watcher.skip_until = wanted
        except TooOld as exc:
            await _start_stream(handler)
            status = watch_too_old(exc.requested, exc.oldest + 1)
            handler.write(b'{"type":"ERROR","object":' + orjson.dumps(status) + b"}\n")
            handler.finish()
            return
    hub.add(watcher)

    try:
        await _start_stream(handler)
        for i in range(0, len(initial), BATCH):
            handler.write(b"".join(initial[i : i + BATCH]))
            await handler.flush()
        if initial_end is not None:
            handler.write(bookmark_frame(resource, initial_end, initial_end=True))
            await handler.flush()
        await _stream(handler, resource, watcher, opts)
    except iostream.StreamClosedError:
        pass  # the client went away: a normal end
    finally:
        hub.remove(watcher)
        if not handler._finished:
            handler.finish()


async def _start_stream(handler: ResourceHandler) -> None:
    accept = handler.request.headers.get("Accept", "")
    stream_type = "application/json;stream=watch" if "stream=watch" in accept else None
    handler.set_header("Content-Type", stream_type or "application/json")
    handler.set_header("Cache-Control", "no-cache, private")
    await handler.flush()


async def _stream(
    handler: ResourceHandler, resource: CachedResource, watcher: Watcher, opts: ListOptions
) -> None:
    store = resource.store
    now = time.monotonic
    # Without timeoutSeconds the API server picks one in [min-request-timeout, 2x] (30-60 min).
    timeout = opts.timeout_seconds or resource.watch_timeout * (1 + random.random())
    deadline = now() + timeout
    interval = resource.bookmark_interval
    next_bookmark = now() + interval * (0.75 + random.random() / 2)
    last_rv = watcher.rv
    while True:
        wait_until = min(deadline, next_bookmark) if opts.allow_watch_bookmarks else deadline
        await watcher.wait(max(0.0, wait_until - now()))
        frames = watcher.drain()
        if frames:
            handler.write(b"".join(frames))
            last_rv = watcher.rv
            await handler.flush()
        if watcher.ended:
            return
        t = now()
        if (
            opts.allow_watch_bookmarks
            and not watcher.frames
            and (t >= next_bookmark or t >= deadline)
        ):
            # Every event up to store.rv has been queued (the store notifies before it
            # advances), and the queue is empty: this bookmark cannot overtake an event.
            if store.rv > last_rv or t >= deadline:
                last_rv = max(last_rv, store.rv)
                handler.write(bookmark_frame(resource, last_rv))
                await handler.flush()
            next_bookmark = t + interval
        if t >= deadline:
            return
