"""A watch asked over WebSocket is served as kube-apiserver serves it: the same handshake
(subprotocol echoed), one text message per event, the same events, a close frame (1000)
at the end; and a change made meanwhile arrives as a message. The refused handshakes are
in the differential corpus (test_differential_corpus.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
import differential  # the shared helpers of tests/integration
from support import population
from support.controlplane import ControlPlane

from .conftest import assert_healthy

if TYPE_CHECKING:
    from conftest import Proxy

NAMESPACE = "wc-websocket"
PLAN = population.plan(4, (NAMESPACE,), seed=4242)
API = "/apis/ray.io/v1"


@dataclass
class Session:
    head: list[str]
    sock: socket.socket
    buffer: bytes = b""
    messages: list[tuple[int, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for line in self.head[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def next_message(self) -> tuple[int, bytes]:
        head = self._read(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(self._read(2), "big")
        elif size == 127:
            size = int.from_bytes(self._read(8), "big")
        assert not head[1] & 0x80, "a server frame must not be masked"
        message = (head[0], self._read(size))
        self.messages.append(message)
        return message

    def until_close(self) -> list[tuple[int, bytes]]:
        while self.next_message()[0] != 0x88:
            pass
        return self.messages

    def send_close(self) -> None:
        mask = os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate((1000).to_bytes(2, "big")))
        self.sock.sendall(bytes((0x88, 0x80 | 2)) + mask + payload)


def open_watch(sock: socket.socket, host: str, target: str, extra: dict[str, str]) -> Session:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
        "Origin": "http://dashboard.example",
        "Sec-WebSocket-Protocol": "base64.binary.k8s.io",
        **extra,
    }
    request = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((request + "\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed during the handshake: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return Session(head.decode().split("\r\n"), sock, rest)


def kube_session(cp: ControlPlane, target: str) -> Session:
    raw = socket.create_connection(("127.0.0.1", cp.port), timeout=30)
    sock = cp.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    return open_watch(
        sock, f"127.0.0.1:{cp.port}", target, {"Authorization": f"Bearer {cp.admin.token}"}
    )


def proxy_session(proxy: Proxy, target: str) -> Session:
    host = proxy.base.removeprefix("http://")
    addr, port = host.split(":")
    return open_watch(socket.create_connection((addr, int(port)), timeout=30), host, target, {})


def events(messages: list[tuple[int, bytes]]) -> list[tuple[str, str]]:
    out = []
    for opcode, payload in messages:
        if opcode == 0x81:
            assert payload.endswith(b"\n"), payload[-20:]
            event = json.loads(payload)
            out.append((event["type"], event["object"]["metadata"].get("name", "")))
    return out


@pytest.fixture(scope="module")
def ws_population(controlplane: ControlPlane, cached: Proxy) -> Iterator[None]:
    population.populate(
        controlplane.request, [population.build(p, controlplane.samples_dir) for p in PLAN]
    )
    target = f"{API}/namespaces/{NAMESPACE}/rayclusters"
    differential.wait_until(
        lambda: (
            json.loads(cached.request("GET", target)[2])["items"]
            == json.loads(controlplane.request("GET", target)[1])["items"]
        ),
        what="the cache to hold the objects",
    )
    yield
    population.delete_all(controlplane.request, (NAMESPACE,))


def test_a_websocket_watch_gets_kubes_handshake_events_and_close(
    controlplane: ControlPlane, cached: Proxy, ws_population: None
) -> None:
    target = (
        f"{API}/namespaces/{NAMESPACE}/rayclusters?watch=1&timeoutSeconds=2"
        "&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    )
    sessions = {"kube": kube_session(controlplane, target), "proxy": proxy_session(cached, target)}
    for name, session in sessions.items():
        assert session.head[0].startswith("HTTP/1.1 101"), (name, session.head)
        assert session.header("Sec-WebSocket-Protocol") == "base64.binary.k8s.io", name
    got = {name: s.until_close() for name, s in sessions.items()}
    for name, messages in got.items():
        assert messages[-1] == (0x88, (1000).to_bytes(2, "big")), (name, messages[-1])
    kube_events, proxy_events = events(got["kube"]), events(got["proxy"])
    added = [e for e in kube_events if e[0] == "ADDED"]
    assert added and [e for e in proxy_events if e[0] == "ADDED"] == added
    # The initial events end with the initial-events-end bookmark on both sides.
    assert proxy_events[len(added)][0] == kube_events[len(added)][0] == "BOOKMARK"


def test_a_change_reaches_a_websocket_watcher_and_a_close_ends_it(
    controlplane: ControlPlane, cached: Proxy, ws_population: None
) -> None:
    target = (
        f"{API}/namespaces/{NAMESPACE}/rayclusters?watch=1&timeoutSeconds=30"
        "&sendInitialEvents=false&resourceVersionMatch=NotOlderThan"
    )
    session = proxy_session(cached, target)
    assert session.head[0].startswith("HTTP/1.1 101"), session.head
    obj = population.raycluster("ws-late", NAMESPACE, {}, controlplane.samples_dir, 0)
    population.create(controlplane.request, obj)
    opcode, payload = session.next_message()
    assert opcode == 0x81 and json.loads(payload)["type"] == "ADDED", payload[:200]
    assert json.loads(payload)["object"]["metadata"]["name"] == "ws-late"
    session.send_close()
    assert session.until_close()[-1][0] == 0x88
    session.sock.close()
    code, _, _ = cached.request("GET", f"{API}/namespaces/{NAMESPACE}/rayclusters")
    assert code == 200
    assert_healthy(cached)
