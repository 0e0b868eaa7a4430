"""Watchers that never read, and list queries padded with junk: memory stays bounded.

Stalled watchers are opened the way a hostile or broken client would: the request is sent,
the answer's head is read, and then nothing, through a tiny receive window. Each would pin
the initial events (several MB of large objects) if watchcache let it.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from support import population
from support.controlplane import ControlPlane
from support.sockets import open_unread_watch

from .conftest import assert_healthy, rss_of

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-hostile-watch"
BIG = 30  # objects of ~200 KB: 6 MB of initial events per watcher
PAD = 200_000
STALLED = 40


@pytest.fixture(scope="module")
def big_objects(controlplane: ControlPlane) -> Iterator[None]:
    population.ensure_namespaces(controlplane.request, (NS,))
    for i in range(BIG):
        obj = population.raycluster(f"big-{i}", NS, {}, controlplane.samples_dir)
        obj["metadata"]["annotations"] = {"watchcache.test/pad": "x" * PAD}
        population.create(controlplane.request, obj)
    yield
    population.delete_all(controlplane.request, (NS,))


def metric(proxy: Proxy, name: str) -> float:
    code, _, body = proxy.request("GET", "/metrics")
    assert code == 200
    values = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body.decode(), re.M)
    return sum(float(v) for v in values)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def test_forty_watchers_that_never_read_pin_no_copy_and_are_cut(
    proxy_factory: Callable[..., Proxy], big_objects: None
) -> None:
    proxy = proxy_factory("--watch-stall-timeout", "2")
    path = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
    wait_for(lambda: len(proxy.request("GET", path)[2]) > BIG * PAD, "the cache to hold them")
    baseline = rss_of(proxy)
    socks = [open_unread_watch(proxy.base, f"{path}?watch=true") for _ in range(STALLED)]
    try:
        # While they stall, each pins the shared entries, not a copy of its events.
        assert rss_of(proxy) - baseline < STALLED * BIG * PAD // 4
        # Each is ended for not reading, though no new event ever comes.
        wait_for(
            lambda: metric(proxy, "watchcache_watchers_ended_slow_total") >= STALLED,
            "every stalled watcher to be cut",
        )
        wait_for(lambda: metric(proxy, "watchcache_watchers") == 0, "no watcher left open")
        # What they held is released: well under one copy of the initial events each.
        assert rss_of(proxy) - baseline < STALLED * BIG * PAD // 4
        assert_healthy(proxy)
    finally:
        for sock in socks:
            sock.close()


def test_junk_query_parameters_do_not_fill_the_render_cache(
    proxy_factory: Callable[..., Proxy], big_objects: None
) -> None:
    proxy = proxy_factory()
    path = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
    for n in range(200):
        code, _, _ = proxy.request("GET", f"{path}?junk={n}")
        assert code == 200
    assert metric(proxy, "watchcache_render_cache_entries") == 1
    # Gzip forms count in the same budget.
    before = metric(proxy, "watchcache_render_cache_bytes")
    code, headers, _ = proxy.request("GET", path, headers={"Accept-Encoding": "gzip"})
    assert code == 200 and headers.get("Content-Encoding") == "gzip"
    assert metric(proxy, "watchcache_render_cache_bytes") > before
    assert_healthy(proxy)


def test_the_render_cache_holds_to_its_byte_budget(
    proxy_factory: Callable[..., Proxy], big_objects: None
) -> None:
    budget = 32 << 20
    proxy = proxy_factory("--render-cache-bytes", str(budget))
    path = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
    for n in range(BIG):  # distinct selectors: distinct bodies, each up to 6 MB
        code, _, _ = proxy.request("GET", f"{path}?labelSelector=n!={n}")
        assert code == 200
    assert 0 < metric(proxy, "watchcache_render_cache_bytes") <= budget
    assert_healthy(proxy)


def read_events(sock: socket.socket, count: int, deadline: float) -> list[bytes]:
    """The next ``count`` events of a chunked watch body (a chunk may hold several), read
    slowly in small pieces, as a reader that keeps the server's writes partial."""
    buf, body = b"", b""
    while (got := body.count(b"\n")) < count:
        assert time.monotonic() < deadline, f"{got} of {count} events"
        size_line, sep, rest = buf.partition(b"\r\n")
        if sep:
            size = int(size_line, 16)
            if len(rest) >= size + 2:
                assert rest[size : size + 2] == b"\r\n", rest[size : size + 10]
                body += rest[:size]
                buf = rest[size + 2 :]
                continue
        time.sleep(0.002)
        piece = sock.recv(8192)
        assert piece, "the watch ended"
        buf += piece
    return body.splitlines()


def test_events_larger_than_the_socket_takes_at_once_arrive_whole_and_in_order(
    controlplane: ControlPlane, cached: Proxy, big_objects: None
) -> None:
    """A slow reader of 200 KB events: each write reaches the socket in part, the rest
    follows from the stream's buffer; every frame arrives whole, once, in order."""
    proxy = cached
    path = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
    # From the API server's version, which every write of the fixture precedes (the cache
    # may not show the last of them yet: its watch then waits for that version).
    code, listed = controlplane.request("GET", path)
    assert code == 200
    rv = json.loads(listed)["metadata"]["resourceVersion"]
    sock = open_unread_watch(proxy.base, f"{path}?watch=true&resourceVersion={rv}")
    try:
        names = [f"big-{i}" for i in range(BIG)]  # 6 MB: more than a socket buffers
        versions = []
        for n, name in enumerate(names):
            patch = {"metadata": {"annotations": {"watchcache.test/round": str(n)}}}
            code, _, answer = proxy.request(
                "PATCH",
                f"{path}/{name}",
                json.dumps(patch).encode(),
                {"Content-Type": "application/merge-patch+json"},
            )
            assert code == 200, answer[:300]
            versions.append(json.loads(answer)["metadata"]["resourceVersion"])
        lines = read_events(sock, len(names), time.monotonic() + 120)
    finally:
        sock.close()
    events = [json.loads(line) for line in lines]
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen == [("MODIFIED", name) for name in names], seen
    assert [e["object"]["metadata"]["resourceVersion"] for e in events] == versions
    assert all(len(line) > PAD for line in lines)
    assert_healthy(proxy)


def test_a_list_body_up_to_half_the_budget_is_kept_for_reuse(
    proxy_factory: Callable[..., Proxy], big_objects: None
) -> None:
    budget = 16 << 20  # the namespace's list, 6 MB, is more than a quarter of it
    proxy = proxy_factory("--render-cache-bytes", str(budget))
    path = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
    code, _, body = proxy.request("GET", path)
    assert code == 200 and len(body) > budget // 4
    assert metric(proxy, "watchcache_render_cache_bytes") >= len(body)
    code, headers, _ = proxy.request("GET", path, headers={"Accept-Encoding": "gzip"})
    assert code == 200 and headers.get("Content-Encoding") == "gzip"
    assert len(body) < metric(proxy, "watchcache_render_cache_bytes") <= budget
    assert_healthy(proxy)
