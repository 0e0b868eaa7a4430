"""A watch stream read line by line on a thread, with bounded waits, for the watch tests.

The same reader opens a watch on kube-apiserver (HTTPS, bearer token) and on watchcache
(plain HTTP), so that both sides of a differential comparison are read the same way. It
records how the stream ended: with the chunked encoding's terminating chunk (a clean end) or
cut off (the server closed the connection mid-stream), which is what a client can tell apart.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

Event = dict[str, Any]
Summary = tuple[str, str | None, int]  # (type, name, resourceVersion); name None for BOOKMARK
_END = object()


def summary(event: Event) -> Summary:
    meta = (event.get("object") or {}).get("metadata") or {}
    name = None if event["type"] in ("BOOKMARK", "ERROR") else meta.get("name")
    return event["type"], name, int(meta.get("resourceVersion") or 0)


def changes(events: Iterable[Event]) -> list[Summary]:
    """The events other than bookmarks, whose timing differs between servers."""
    return [summary(e) for e in events if e["type"] != "BOOKMARK"]


def bookmarks(events: Iterable[Event]) -> list[int]:
    return [summary(e)[2] for e in events if e["type"] == "BOOKMARK"]


def is_initial_events_end(event: Event) -> bool:
    annotations = (event["object"].get("metadata") or {}).get("annotations") or {}
    return event["type"] == "BOOKMARK" and annotations.get("k8s.io/initial-events-end") == "true"


def assert_bookmarks_monotonic(events: list[Event], where: str) -> None:
    """Each bookmark's version is no older than anything sent before it."""
    high = 0
    for event in events:
        rv = summary(event)[2]
        if event["type"] == "BOOKMARK":
            assert rv >= high, f"{where}: bookmark {rv} after version {high}: {changes(events)}"
        high = max(high, rv)


class WatchStream:
    """One open watch. Events arrive on a reader thread; ``read_*`` wait for them, bounded."""

    def __init__(
        self,
        base: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base)
        host, port = url.hostname or "127.0.0.1", url.port
        if url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, context=ssl_context, timeout=30
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.connect()
        assert conn.sock is not None
        self._sock: socket.socket = conn.sock
        self._conn = conn
        conn.request("GET", path, headers={"Accept": "application/json", **(headers or {})})
        self.response = conn.getresponse()
        self._sock.settimeout(None)  # a watch may be quiet for long; close() unblocks the reader
        self.status = self.response.status
        self.headers = self.response.headers
        self.events: list[Event] = []  # every event taken by read_*, in order
        self.clean_end: bool | None = None  # None while open; False when cut off mid-stream
        self.error: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                line = self.response.readline()
                if not line:
                    self.clean_end = True
                    break
                if line.strip():
                    self._queue.put(json.loads(line))
        except (http.client.HTTPException, OSError, ValueError) as exc:
            self.clean_end, self.error = False, exc
        finally:
            self._queue.put(_END)

    def next(self, timeout: float) -> Event | None:
        """The next event, or None once the stream has ended; AssertionError after timeout."""
        if self._ended:
            return None
        try:
            item = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise AssertionError(f"no event within {timeout:.0f}s; so far {self.events}") from None
        if item is _END:
            self._ended = True
            return None
        assert isinstance(item, dict)
        self.events.append(item)
        return item

    def read_until(self, done: Callable[[Event], bool], *, timeout: float = 30.0) -> list[Event]:
        """Events up to and including the first for which ``done`` is true."""
        deadline = time.monotonic() + timeout
        start = len(self.events)
        while True:
            event = self.next(deadline - time.monotonic())
            if event is None:
                raise AssertionError(f"the stream ended early ({self.error}): {self.events}")
            if done(event):
                return self.events[start:]

    def read_to_end(self, *, timeout: float = 30.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        start = len(self.events)
        while self.next(deadline - time.monotonic()) is not None:
            pass
        return self.events[start:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # unblocks the reader, which then ends
        self._thread.join(10)
        self._conn.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reached(rv: int) -> Callable[[Event], bool]:
    """A ``read_until`` condition: a change (not a bookmark) at ``rv`` or later."""
    return lambda event: event["type"] != "BOOKMARK" and summary(event)[2] >= rv


def replay(events: Iterable[Event], state: dict[str, int] | None = None) -> dict[str, int]:
    """The state a client rebuilds from events: name -> resourceVersion."""
    state = {} if state is None else state
    for event in events:
        kind, name, rv = summary(event)
        if kind in ("ADDED", "MODIFIED"):
            state[name] = rv  # type: ignore[index]
        elif kind == "DELETED":
            state.pop(name, None)  # type: ignore[arg-type]
        elif kind == "ERROR":
            raise AssertionError(f"ERROR event: {event['object']}")
    return state
