"""Upstream faults below HTTP, and answers a retry cannot change (issue 11).

watchcache reaches kube-apiserver over HTTPS through the loopback fault proxy
(faultproxy.py), which here stalls the cache's watch (the connection stays open, nothing
arrives: no event, no bookmark) and resets connections as soon as they are accepted, before
their TLS handshake. A stalled watch is ended within the silence bound and resumed, /readyz
fails while the cache is behind, and the cache ends exact. A 504 "Too large resource version"
and a request past its own deadline are answered at once, not retried; a write whose
connections are cut is retried or answered 503, never 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from differential import kube, proxy, wait_for_same_state, wait_until
from faultproxy import FaultProxy, behind, serving_context
from support import population
from support.controlplane import ControlPlane
from support.fixtures import module_namespace
from support.metrics import sample

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-upstream-faults"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
WATCHED = "/apis/ray.io/v1/rayclusters"  # what the cache's reflector lists and watches
SILENCE = 3.0  # the test's silence bound (--upstream-watch-silence)
MERGE = {"Content-Type": "application/merge-patch+json"}


def _fault_proxy(cp: ControlPlane) -> Iterator[FaultProxy]:
    tls = serving_context(str(cp.workdir / "serving.crt"), str(cp.workdir / "serving.key"))
    fp = FaultProxy(cp.server, cp.ssl_context(), tls=tls).start()
    yield fp
    fp.stop()


namespace = module_namespace(NS)


@pytest.fixture(scope="module")
def faults(controlplane: ControlPlane, namespace: str) -> Iterator[FaultProxy]:
    """The fault proxy of the tests' writes and reads."""
    yield from _fault_proxy(controlplane)


@pytest.fixture(scope="module")
def stalling(controlplane: ControlPlane, namespace: str) -> Iterator[FaultProxy]:
    """A fault proxy of its own for the stalled watch: a watchcache restarting quiet watches
    every few seconds must not take the other tests' faults."""
    yield from _fault_proxy(controlplane)


@pytest.fixture(scope="module")
def watching(
    stalling: FaultProxy,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """watchcache with a short silence bound."""
    tmp = tmp_path_factory.mktemp("silence")
    yield from behind(
        stalling, controlplane, proxy_factory, tmp, "--upstream-watch-silence", str(SILENCE)
    )


@pytest.fixture(scope="module")
def cached_behind(
    faults: FaultProxy,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """watchcache with the default silence bound."""
    yield from behind(faults, controlplane, proxy_factory, tmp_path_factory.mktemp("default"))


def seed(cp: ControlPlane, name: str, **labels: str) -> dict[str, Any]:
    obj = population.raycluster(name, NS, labels, cp.samples_dir, variant=1, state=None)
    code, raw = cp.request("POST", RAYCLUSTERS, obj)
    assert code == 201, raw[:300]
    return json.loads(raw)


def label(value: str) -> bytes:
    return json.dumps({"metadata": {"labels": {"step": value}}}).encode()


def metric(p: Proxy, name: str, **labels: str) -> float:
    """One sample of /metrics, by name and labels (0 when absent: a feed not yet counted)."""
    return sample(p, name, **labels) or 0.0


def ready(p: Proxy) -> tuple[int, bytes]:
    code, _, body = p.request("GET", "/readyz")
    return code, body


def names(p: Proxy) -> list[str]:
    code, _, raw = p.request("GET", RAYCLUSTERS)
    assert code == 200, raw[:300]
    return sorted(i["metadata"]["name"] for i in json.loads(raw)["items"])


# ---- a stalled watch ---------------------------------------------------------------------------


def test_a_stalled_watch_is_restarted_readyz_fails_while_behind_and_the_cache_ends_exact(
    stalling: FaultProxy, watching: Proxy, controlplane: ControlPlane
) -> None:
    for i in range(3):
        seed(controlplane, f"before-{i}")
    wait_for_same_state(proxy(watching), kube(controlplane))
    labels = {"resource": "rayclusters.ray.io", "namespace": ""}
    silent_before = metric(watching, "watchcache_upstream_silent_watches_total", **labels)
    watches_before = stalling.attempts("GET", WATCHED)

    stalling.stall(WATCHED)
    # Written straight to kube-apiserver while the cache's watch hears nothing.
    for i in range(5):
        seed(controlplane, f"stalled-{i}")
    code, raw = controlplane.request(
        "PATCH", f"{RAYCLUSTERS}/before-0", label("stalled"), content_type=MERGE["Content-Type"]
    )
    assert code == 200, raw[:300]
    code, raw = controlplane.request("DELETE", f"{RAYCLUSTERS}/before-1")
    assert code == 200, raw[:300]

    # Within the bound the silent watch is ended and another one asked for.
    wait_until(
        lambda: (
            metric(watching, "watchcache_upstream_silent_watches_total", **labels) > silent_before
        ),
        timeout=SILENCE * 5,
        what="the stalled watch to be ended for its silence",
    )
    # The new watch follows the end at once, but asynchronously: wait for it, bounded.
    wait_until(
        lambda: stalling.attempts("GET", WATCHED) > watches_before,
        timeout=SILENCE * 5,
        what="another watch to be asked for",
    )
    # The cache is behind, and says so: /readyz fails, the metrics show it.
    behind = b"rayclusters.ray.io (all namespaces) behind: restarted after silence"
    wait_until(
        lambda: (got := ready(watching))[0] == 503 and behind in got[1],
        timeout=SILENCE * 5,
        what="/readyz to fail, naming the cache that is behind",
    )
    assert metric(watching, "watchcache_upstream_behind", **labels) == 1
    assert metric(watching, "watchcache_upstream_silence_seconds", **labels) >= SILENCE
    assert not any(n.startswith("stalled-") for n in names(watching))

    stalling.stall(WATCHED, False)
    wait_until(lambda: ready(watching)[0] == 200, timeout=60, what="/readyz to pass again")
    wait_for_same_state(proxy(watching), kube(controlplane))
    # Exact: the same objects, whole, as kube-apiserver lists them.
    code, _, raw = watching.request("GET", RAYCLUSTERS)
    assert code == 200
    direct = controlplane.request("GET", RAYCLUSTERS)[1]
    assert json.loads(raw)["items"] == json.loads(direct)["items"]
    assert "before-1" not in names(watching)


# ---- answers a retry cannot change -------------------------------------------------------------


def test_a_list_at_a_resource_version_ahead_is_answered_kube_apiservers_504_without_retries(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    faults.reset()
    created = seed(controlplane, "rv-ahead")
    ahead = int(created["metadata"]["resourceVersion"]) + 100_000
    path = f"{RAYCLUSTERS}?resourceVersion={ahead}&resourceVersionMatch=NotOlderThan"
    code, headers, raw = cached_behind.request("GET", path)
    kube_code, kube_raw = controlplane.request("GET", path)
    assert (code, kube_code) == (504, 504)
    got, want = json.loads(raw), json.loads(kube_raw)
    assert got["reason"] == want["reason"] == "Timeout"
    assert got["details"]["causes"] == want["details"]["causes"]
    assert headers.get("Retry-After") == "1"
    assert faults.attempts("GET", RAYCLUSTERS) == 1  # kube-apiserver waited once, not four times


def test_a_transient_failure_past_the_requests_deadline_is_not_retried(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    faults.reset()
    seed(controlplane, "deadline")
    path = f"{RAYCLUSTERS}/deadline"
    faults.fail("PATCH", path, 503, times=5, retry_after="2")
    code, _, raw = cached_behind.request("PATCH", f"{path}?timeout=1s", label("late"), MERGE)
    assert code == 503
    assert json.loads(raw)["kind"] == "Status"
    assert faults.attempts("PATCH", path) == 1
    # Within a deadline that leaves room for the wait, the same failure is retried.
    faults.reset()
    faults.fail("PATCH", path, 503, times=1, retry_after="0")
    code, _, raw = cached_behind.request("PATCH", f"{path}?timeout=20s", label("in-time"), MERGE)
    assert code == 200, raw[:300]
    assert faults.attempts("PATCH", path) == 2


# ---- connections cut -------------------------------------------------------------------------


@pytest.mark.parametrize("resets", [1, 2, 3, 6])
def test_a_delete_while_connections_are_cut_is_retried_or_answered_503_never_500(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane, resets: int
) -> None:
    """The kept-alive connection the DELETE goes out on is dropped, and the next fresh ones
    are reset before their TLS handshake. Up to three retries absorb the cuts; more, and the
    client gets a 503 Status."""
    for attempt in range(5):  # the cut lands at a slightly different moment each time
        name = f"cut-{resets}-{attempt}"
        seed(controlplane, name)
        path = f"{RAYCLUSTERS}/{name}"
        faults.reset()  # resets the last DELETE left unused
        # Warm: watchcache now holds an idle connection to the fault proxy. (A handshake cut
        # by an earlier reset may still be pending: each is bounded, 10 s.)
        warm = cached_behind.request("PATCH", path, label("warm"), MERGE, timeout=60)[0]
        assert warm in (200, 503)
        faults.drop("DELETE", path)
        faults.reset_connections(resets)
        # Bounded in time by the client's own timeout: the policy gives up within 30 s.
        code, _, raw = cached_behind.request("DELETE", path, timeout=60)
        assert code in (200, 503), raw[:300]
        if code == 503:
            assert json.loads(raw)["kind"] == "Status"
            controlplane.request("DELETE", path)
        else:
            assert controlplane.request("GET", path)[0] == 404
        assert faults.attempts("DELETE", path) <= 4  # the first and at most three retries
    log = cached_behind.log()
    assert "Traceback" not in log
    assert not re.search(r"^.* (PATCH|DELETE) \S+ 500 ", log, re.MULTILINE)
