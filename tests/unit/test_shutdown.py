"""The order of a shutdown, in-process over a recorded upstream: /readyz fails at once (as
kube-apiserver's does) while everything is still served for the shutdown delay, /livez does
not; then each watch ends cleanly, with a last bookmark when it asked for bookmarks, over
chunked HTTP and over WebSocket. (The rolling restart against the real API server is
tests/integration/test_rolling_restart.py.)"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from urllib.parse import urlsplit

from support.inprocess import Client, in_process

from watchcache.config import ServerLimits

WATCH = "/apis/ray.io/v1/namespaces/a/rayclusters?watch=true&resourceVersion=1"  # from now


def chunked_watch(client: Client, query: str) -> http.client.HTTPResponse:
    url = urlsplit(client.base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    conn.request("GET", WATCH + query)
    resp = conn.getresponse()
    assert resp.status == 200
    return resp


def lines_to_end(resp: http.client.HTTPResponse) -> list[dict[str, object]]:
    """Every event until the body's terminating chunk (IncompleteRead if it is cut off)."""
    events = []
    while line := resp.readline():
        events.append(json.loads(line))
    return events


def websocket_watch(client: Client, query: str) -> socket.socket:
    url = urlsplit(client.base)
    sock = socket.create_connection((url.hostname or "", url.port or 0), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {WATCH}{query} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Origin: http://test.example\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frames_to_close(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every frame up to and including the close frame."""
    reader = sock.makefile("rb")
    out: list[tuple[int, bytes]] = []
    while not out or out[-1][0] != 0x8:
        first, size = reader.read(2)
        if size == 126:
            size = int.from_bytes(reader.read(2), "big")
        elif size == 127:
            size = int.from_bytes(reader.read(8), "big")
        out.append((first & 0x0F, reader.read(size)))
    return out


def test_readyz_fails_first_then_each_watch_ends_with_its_last_bookmark() -> None:
    limits = ServerLimits(shutdown_delay=1.0, shutdown_grace=5.0)
    with in_process(features=[], limits=limits) as client:
        client.wait_ready()
        bookmarked = chunked_watch(client, "&allowWatchBookmarks=true")
        plain = chunked_watch(client, "")
        ws = websocket_watch(client, "&allowWatchBookmarks=true")
        assert client.begin_shutdown is not None
        stopping = client.begin_shutdown()
        deadline = time.monotonic() + 10
        while (answer := client.request("GET", "/readyz"))[0] == 200:
            assert time.monotonic() < deadline, "readyz never failed"
        code, headers, body = answer
        assert code == 500, body
        checks = b"[+]ping ok\n[+]informer-sync ok\n[-]shutdown failed: reason withheld\n"
        assert body == checks + b"readyz check failed\n"
        assert headers["X-Content-Type-Options"] == "nosniff"
        # Within the delay everything else is still served.
        assert client.request("GET", "/livez")[0] == 200
        assert client.request("GET", "/apis/ray.io/v1/namespaces/a/rayclusters")[0] == 200
        assert not stopping.done()

        (last,) = lines_to_end(bookmarked)  # the body ended with its terminating chunk
        assert last["type"] == "BOOKMARK"
        assert last["object"]["metadata"]["resourceVersion"] == "1"  # type: ignore[index]
        assert lines_to_end(plain) == []  # no bookmarks asked: a clean end alone
        (text, close) = frames_to_close(ws)
        assert text[0] == 0x1 and json.loads(text[1])["type"] == "BOOKMARK"
        assert close == (0x8, (1000).to_bytes(2, "big"))
        ws.close()
        stopping.result(10)
