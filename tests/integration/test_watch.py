"""Watches served from the cache (issue 4), judged against kube-apiserver itself.

Every change is made directly on kube-apiserver, so only the proxy's upstream watch can bring
it to the cache. The differential tests open the same watch on both servers before the
changes and compare the (type, name, resourceVersion) sequences; bookmarks are timed
differently by each server, so they are compared apart (type, monotonic versions). Streams
are read with bounded waits, never with sleeps; the test that restarts the shared
kube-apiserver comes last.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import differential
import pytest
from kubeio import (
    Follower,
    KubeWriter,
    collection,
    kube_watch,
    listed,
    proxy_watch,
    rv_of,
    wait_cached,
    watch_path,
)
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from support import population
from support.controlplane import ControlPlane
from support.sockets import open_unread_watch
from watchclient import (
    WatchStream,
    assert_bookmarks_monotonic,
    bookmarks,
    changes,
    is_initial_events_end,
    reached,
    summary,
)

if TYPE_CHECKING:
    from conftest import Proxy

DIFF_NS, CLIENT_NS, FAN_NS, BURST_NS, SHUTDOWN_NS, RESTART_NS = (
    "wc-watch-diff",
    "wc-watch-client",
    "wc-watch-fanout",
    "wc-watch-burst",
    "wc-watch-shutdown",
    "wc-watch-restart",
)
NAMESPACES = (DIFF_NS, CLIENT_NS, FAN_NS, BURST_NS, SHUTDOWN_NS, RESTART_NS)


@pytest.fixture(scope="module", autouse=True)
def namespaces(controlplane: ControlPlane) -> Iterator[None]:
    population.ensure_namespaces(controlplane.request, NAMESPACES)
    yield
    population.delete_all(controlplane.request, NAMESPACES)


@pytest.fixture(scope="module")
def apiserver(controlplane: ControlPlane) -> KubeWriter:
    return KubeWriter(controlplane)


# ---- helpers ---------------------------------------------------------------------------------


# ---- 1. differential: the same watch on both servers ----------------------------------------

INITIAL = "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
ML = "labelSelector=" + urllib.parse.quote("team=ml")
IN_ML = "labelSelector=" + urllib.parse.quote("team in (ml,gpu)")
# Each form of watch, by name; {n} is a resourceVersion from a list made before the watch.
FORMS: dict[str, str] = {
    "rv unset": "",
    "rv 0": "resourceVersion=0",
    "rv N": "resourceVersion={n}",
    "labels": ML,
    "labels, rv N": ML + "&resourceVersion={n}",
    "labels !=": "labelSelector=" + urllib.parse.quote("team!=data"),
    "labels in, rv 0": IN_ML + "&resourceVersion=0",
    "field name": "fieldSelector=metadata.name%3Dalpha",
    "field name, rv N": "fieldSelector=metadata.name%3Dalpha&resourceVersion={n}",
    "bookmarks": "allowWatchBookmarks=true",
    "bookmarks, rv N": "allowWatchBookmarks=true&resourceVersion={n}",
    "initial events": INITIAL,
    "initial events, labels": INITIAL + "&" + ML,
    "initial events, rv N": INITIAL + "&resourceVersion={n}",
    "no initial events": "sendInitialEvents=false&resourceVersionMatch=NotOlderThan",
}  # fmt: skip


def change_sequence(apiserver: KubeWriter) -> int:
    """Creates, updates (moving objects into and out of the selectors) and deletes; the last
    change, re-creating alpha with team=ml, passes every selector above: the sentinel."""
    ns = DIFF_NS
    apiserver.create("delta", ns, {"team": "ml"})
    apiserver.patch(ns, "alpha", {"metadata": {"labels": {"team": "data"}}})  # leaves team=ml
    apiserver.patch(ns, "beta", {"metadata": {"labels": {"team": "ml"}}})  # enters team=ml
    apiserver.patch(ns, "gamma", {"metadata": {"annotations": {"note": "within the selector"}}})
    apiserver.patch(ns, "delta", {"status": {"state": "ready"}}, "/status")
    apiserver.delete(ns, "gamma")  # deleted while matching
    apiserver.patch(ns, "beta", {"metadata": {"labels": {"team": None}}})  # leaves, matches !=
    apiserver.delete(ns, "alpha")  # deleted while not matching team=ml
    apiserver.delete(ns, "beta")
    return apiserver.create("alpha", ns, {"team": "ml"})


def test_watch_gives_kubes_events_for_every_resourceversion_selector_and_initial_events_form(
    cached: Proxy, controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    cp = controlplane
    apiserver.create("alpha", DIFF_NS, {"team": "ml"})
    apiserver.create("beta", DIFF_NS, {"team": "data"})
    n, _ = listed(differential.kube(cp), collection(DIFF_NS))
    apiserver.create("gamma", DIFF_NS, {"team": "ml"})  # after N: replayed from the history
    wait_cached(cached, cp, collection(DIFF_NS))

    streams: dict[str, tuple[WatchStream, WatchStream]] = {}
    try:
        for form, query in FORMS.items():
            path = watch_path(DIFF_NS, query.format(n=n) + "&timeoutSeconds=120")
            streams[form] = (kube_watch(cp, path), proxy_watch(cached, path))
            assert [s.status for s in streams[form]] == [200, 200], form
            assert streams[form][1].headers["Content-Type"] == "application/json"
            assert streams[form][1].headers["Transfer-Encoding"] == "chunked"
        sentinel = change_sequence(apiserver)
        for form, (kube, proxy) in streams.items():
            want = kube.read_until(reached(sentinel))
            got = proxy.read_until(reached(sentinel))
            assert changes(got) == changes(want), form
            assert_bookmarks_monotonic(want, f"kube, {form}")
            assert_bookmarks_monotonic(got, f"proxy, {form}")
            if "allowWatchBookmarks" not in FORMS[form]:
                assert bookmarks(want) == bookmarks(got) == [], form
            if "initial events" in form and "no initial" not in form:
                for events in (want, got):
                    end = next(i for i, e in enumerate(events) if is_initial_events_end(e))
                    assert {e["type"] for e in events[:end]} == {"ADDED"}, form
                    assert summary(events[end])[2] >= max(summary(e)[2] for e in events[:end])
    finally:
        for pair in streams.values():
            for stream in pair:
                stream.close()
    # The differential is only as good as the sequence: make sure it exercised transitions.
    transitions = [(kind, name) for kind, name, _ in changes(streams["labels"][0].events)]
    assert ("DELETED", "alpha") in transitions and ("ADDED", "beta") in transitions


def test_watch_from_a_version_older_than_the_window_gets_410_expired_as_from_kube(
    cached: Proxy, controlplane: ControlPlane
) -> None:
    path = watch_path(DIFF_NS, "resourceVersion=1&timeoutSeconds=30")
    for stream in (kube_watch(controlplane, path), proxy_watch(cached, path)):
        with stream:
            assert stream.status == 200
            events = stream.read_to_end()
            assert [e["type"] for e in events] == ["ERROR"], events
            status = events[0]["object"]
            assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
            assert status["message"].startswith("too old resource version: 1 (")
            assert stream.clean_end


def test_watch_ends_at_timeout_seconds_with_monotonic_bookmarks_as_kubes_does(
    cached: Proxy, controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    cp = controlplane
    apiserver.create("timed", DIFF_NS, {"team": "ml"})
    n, _ = listed(differential.kube(cp), collection(DIFF_NS))
    path = watch_path(DIFF_NS, f"allowWatchBookmarks=true&resourceVersion={n}&timeoutSeconds=3")
    stream_accept = {"Accept": "application/json;stream=watch"}
    with (
        kube_watch(cp, path, stream_accept) as kube,
        proxy_watch(cached, path, stream_accept) as proxy,
    ):
        assert proxy.headers["Content-Type"] == kube.headers["Content-Type"]
        changed = apiserver.patch(DIFF_NS, "timed", {"metadata": {"annotations": {"t": "1"}}})
        want, got = kube.read_to_end(), proxy.read_to_end()
    assert kube.clean_end and proxy.clean_end, (kube.error, proxy.error)
    assert changes(got) == changes(want) == [("MODIFIED", "timed", changed)]
    assert_bookmarks_monotonic(want, "kube")
    assert_bookmarks_monotonic(got, "proxy")
    assert bookmarks(got) and bookmarks(got)[-1] >= changed, got  # one before the time-out


def test_initial_events_from_a_version_the_cache_has_not_reached_answer_as_kube(
    cached: Proxy, controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    """A version from a write to another resource: the cache cannot know the state at it
    is complete, so the watch must still end its initial events no older than that version."""
    cp = controlplane
    apiserver.create("ahead", DIFF_NS, {"team": "ml"})
    wait_cached(cached, cp, collection(DIFF_NS))
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "bump-"}}
    n = rv_of(apiserver.call("POST", f"/api/v1/namespaces/{DIFF_NS}/configmaps", configmap))
    path = watch_path(DIFF_NS, INITIAL + f"&resourceVersion={n}&timeoutSeconds=30")
    with kube_watch(cp, path) as kube, proxy_watch(cached, path) as proxy:
        want = kube.read_until(is_initial_events_end)
        got = proxy.read_until(is_initial_events_end)
    assert changes(got) == changes(want)
    assert bookmarks(got)[-1] >= n and bookmarks(want)[-1] >= n


# ---- 2. the Python kubernetes client ---------------------------------------------------------


def test_python_kubernetes_client_watch_streams_and_resumes_through_the_proxy(
    cached: Proxy, controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    cp, ns = controlplane, CLIENT_NS
    apiserver.create("first", ns)
    wait_cached(cached, cp, collection(ns))
    config = k8s.Configuration()
    config.host = cached.base
    api = k8s.CustomObjectsApi(k8s.ApiClient(config))
    w = k8s_watch.Watch()
    args = (api.list_namespaced_custom_object, "ray.io", "v1", ns, "rayclusters")

    seen: list[tuple[str, str, int]] = []
    created = 0
    for event in w.stream(*args, timeout_seconds=2, allow_watch_bookmarks=True):
        if event["type"] == "BOOKMARK":
            continue
        seen.append((event["type"], event["object"]["metadata"]["name"], rv_of(event["object"])))
        if len(seen) == 1:
            created = apiserver.create("second", ns)
    # The stream ended at its timeout; the client holds the last version it saw.
    assert seen == [("ADDED", "first", seen[0][2]), ("ADDED", "second", created)]
    resume_from = w.resource_version
    assert int(resume_from) >= created

    # Changes while no watch is open arrive on resumption from the client's version.
    modified = apiserver.patch(ns, "first", {"metadata": {"labels": {"x": "1"}}})
    apiserver.delete(ns, "second")
    added = apiserver.create("third", ns)
    resumed: list[tuple[str, str, int]] = []
    for event in w.stream(*args, resource_version=resume_from, timeout_seconds=30):
        obj = event["object"]
        resumed.append((event["type"], obj["metadata"]["name"], rv_of(obj)))
        if len(resumed) == 3:
            w.stop()
    deleted = resumed[1][2]
    assert resumed == [
        ("MODIFIED", "first", modified),
        ("DELETED", "second", deleted),
        ("ADDED", "third", added),
    ]
    assert modified < deleted < added


# ---- 3. fan-out: 1,000 watchers, one stalled -------------------------------------------------

WATCHERS, UPDATES = 1000, 200
# The stalled watcher must overflow: its socket buffers (up to 4 MB on loopback), one write
# budget (1 MiB) and its queue (8 MiB) hold about 13 MB; 120 objects of 200 KB exceed that.
BURST, BURST_PAD = 120, 200_000


def read_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"fan-out client silent for {timeout}s"
    line = proc.stdout.readline()
    assert line, f"fan-out client exited: {proc.poll()}"
    return json.loads(line)


def drain_to_eof(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the stalled watch is still open after {timeout}s ({len(data)} bytes)")


def test_thousand_watchers_get_every_event_in_order_and_a_stalled_one_is_ended(
    proxy_factory: Callable[..., Proxy], controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    cp, proxy = controlplane, proxy_factory()
    names = [f"fan-{i:02d}" for i in range(10)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: apiserver.create(name, FAN_NS), names))
    wait_cached(proxy, cp, collection(FAN_NS))
    n, _ = listed(differential.proxy(proxy), collection(FAN_NS))

    query = f"resourceVersion={n}&allowWatchBookmarks=true&timeoutSeconds=600"
    url = urllib.parse.urlsplit(proxy.base)
    client = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fanout.py")), url.hostname or "",
         str(url.port), watch_path(FAN_NS, query), str(WATCHERS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    # The stalled watcher sees every namespace: the fan-out's events and a burst of its own.
    stalled = open_unread_watch(proxy.base, watch_path(None, query))
    try:
        connected = read_json_line(client, 120)
        assert connected["connected"] == WATCHERS, connected

        def burst() -> None:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(
                    lambda i: apiserver.create(f"burst-{i:03d}", BURST_NS, pad=BURST_PAD),
                    range(BURST),
                ))  # fmt: skip

        with ThreadPoolExecutor(1) as background:
            bursting = background.submit(burst)
            expected = []
            for i in range(UPDATES):
                name = names[i % len(names)]
                rv = apiserver.patch(FAN_NS, name, {"metadata": {"labels": {"i": str(i)}}})
                expected.append(("MODIFIED", name, rv))
            bursting.result()
        assert client.stdin is not None
        client.stdin.write(json.dumps({"expected": expected, "timeout": 120}) + "\n")
        client.stdin.flush()
        result = read_json_line(client, 150)
        assert result["complete"] == WATCHERS, result

        # The stalled watcher was cut off: its connection closed mid-stream, with fewer
        # events than were sent, and no terminating chunk of a cleanly ended response.
        data = drain_to_eof(stalled, 60)
        assert not data.endswith(b"\r\n0\r\n\r\n")
        assert data.count(b'{"type":"') < UPDATES + BURST
    finally:
        stalled.close()
        client.kill()
        client.wait()


# ---- 5. shutdown -----------------------------------------------------------------------------


def test_watches_end_cleanly_when_the_proxy_shuts_down(
    proxy_factory: Callable[..., Proxy], controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    cp, proxy = controlplane, proxy_factory()
    apiserver.create("before", SHUTDOWN_NS)
    wait_cached(proxy, cp, collection(SHUTDOWN_NS))
    streams = [
        proxy_watch(proxy, watch_path(SHUTDOWN_NS, "")),
        proxy_watch(proxy, watch_path(None, "allowWatchBookmarks=true&resourceVersion=0")),
    ]
    try:
        streams[0].read_until(lambda e: summary(e)[1] == "before")
        streams[1].read_until(is_initial_events_end)
        changed = apiserver.patch(SHUTDOWN_NS, "before", {"metadata": {"labels": {"x": "1"}}})
        streams[0].read_until(reached(changed))
        proxy.proc.send_signal(signal.SIGTERM)
        for stream in streams:
            stream.read_to_end(timeout=30)
            assert stream.clean_end, stream.error  # the chunked body's terminating chunk came
        assert proxy.proc.wait(30) == 0
    finally:
        for stream in streams:
            stream.close()


# ---- 4. kube-apiserver restarted mid-stream (restarts the shared control plane: last) -------


def test_watchers_lose_no_event_across_a_kube_apiserver_restart(
    proxy_factory: Callable[..., Proxy], controlplane: ControlPlane, apiserver: KubeWriter
) -> None:
    cp, ns, proxy = controlplane, RESTART_NS, proxy_factory()
    for i, team in enumerate(("ml", "ml", "data", "ml", "data")):
        apiserver.create(f"r-{i}", ns, {"team": team})
    wait_cached(proxy, cp, collection(ns))
    n, start = listed(differential.proxy(proxy), collection(ns))
    # Each watcher with the state it starts from: initial events, or the list at N.
    watchers: list[tuple[WatchStream, dict[str, int], str]] = [
        (proxy_watch(proxy, watch_path(ns, "")), {}, ""),
        (proxy_watch(proxy, watch_path(ns, f"resourceVersion={n}")), dict(start), ""),
        (proxy_watch(proxy, watch_path(ns, ML)), {}, "?" + ML),
        (proxy_watch(proxy, watch_path(ns, "allowWatchBookmarks=true&" + ML)), {}, "?" + ML),
    ]
    followers = [Follower(proxy, collection(ns), s, st, sel[1:]) for s, st, sel in watchers]
    try:
        apiserver.patch(ns, "r-0", {"metadata": {"annotations": {"phase": "before"}}})
        apiserver.create("r-5", ns, {"team": "ml"})
        cp.restart_apiserver()
        apiserver.patch(ns, "r-1", {"metadata": {"labels": {"team": "data"}}})  # leaves team=ml
        apiserver.patch(ns, "r-2", {"metadata": {"labels": {"team": "ml"}}})  # enters team=ml
        apiserver.delete(ns, "r-3")
        apiserver.create("r-6", ns, {"team": "ml"})
        apiserver.patch(ns, "r-5", {"status": {"state": "ready"}}, "/status")  # seen by all
        for follower, (_, _, selector) in zip(followers, watchers, strict=True):
            _, want = listed(differential.kube(cp), collection(ns) + selector)
            # If the restart made the cache list again, its watchers got 410 and listed
            # again too, as any Kubernetes client does: either way the state ends exact.
            follower.until(lambda state, want=want: state == want, timeout=120)
    finally:
        for follower in followers:
            follower.close()
