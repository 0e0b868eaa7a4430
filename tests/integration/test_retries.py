"""Retries and streaming with faults injected between watchcache and kube-apiserver (issue 5).

watchcache reaches kube-apiserver through a loopback fault proxy (faultproxy.py), which fails
chosen requests, counts how many times each arrived, and can make the cache's watch lag.
Transient failures (408, 429, 5xx, a dropped connection) are retried and the client sees only
the success; other errors come back at once, unchanged; a create that could make a duplicate
is sent once; a watch streams through unbuffered; and a write is read back at once even when
the cache's watch lags behind.
"""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from differential import wait_until
from faultproxy import FaultProxy, behind
from support import population
from support.controlplane import ControlPlane
from watchclient import WatchStream

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-retries"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
WATCHED = "/apis/ray.io/v1/rayclusters"  # what the cache's reflector lists and watches
JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture(scope="module")
def faults(controlplane: ControlPlane) -> Iterator[FaultProxy]:
    proxy = FaultProxy(controlplane.server, controlplane.ssl_context()).start()
    population.ensure_namespaces(controlplane.request, [NS])
    yield proxy
    proxy.stop()
    population.delete_all(controlplane.request, [NS])


@pytest.fixture(autouse=True)
def _clean_faults(faults: FaultProxy) -> Iterator[None]:
    faults.reset()
    yield
    faults.reset()


@pytest.fixture(scope="module")
def cached_behind(
    faults: FaultProxy,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    yield from behind(faults, controlplane, proxy_factory, tmp_path_factory.mktemp("cached"))


@pytest.fixture(scope="module")
def passthrough_behind(
    faults: FaultProxy,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("passthrough")
    yield from behind(faults, controlplane, proxy_factory, tmp, "--no-cache")


def cluster(cp: ControlPlane, name: str, **labels: str) -> dict[str, Any]:
    return population.raycluster(name, NS, labels, cp.samples_dir, variant=1, state=None)


def seed(cp: ControlPlane, name: str, **labels: str) -> dict[str, Any]:
    code, raw = cp.request("POST", RAYCLUSTERS, cluster(cp, name, **labels))
    assert code == 201, raw[:300]
    return json.loads(raw)


def label(value: str) -> bytes:
    return json.dumps({"metadata": {"labels": {"step": value}}}).encode()


# ---- transient failures are retried -------------------------------------------------------------


@pytest.mark.parametrize("code", [503, 500, 429, 504, 502, 408])
def test_transient_failures_of_a_patch_are_retried_until_it_succeeds(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane, code: int
) -> None:
    name = f"retry-patch-{code}"
    seed(controlplane, name)
    path = f"{RAYCLUSTERS}/{name}"
    faults.fail("PATCH", path, code, times=2, retry_after="0")
    status, _, raw = cached_behind.request("PATCH", path, label("patched"), MERGE)
    assert status == 200, raw[:300]
    assert faults.attempts("PATCH", path) == 3
    patched = json.loads(raw)
    assert patched["metadata"]["labels"]["step"] == "patched"
    # Read-your-writes holds for a retried write too.
    assert json.loads(cached_behind.request("GET", path)[2]) == patched


def test_transient_failures_of_a_put_are_retried_with_backoff(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    """No Retry-After: the policy's own 0.5 s and 1 s waits."""
    stored = seed(controlplane, "retry-put")
    path = f"{RAYCLUSTERS}/retry-put"
    faults.fail("PUT", path, 503, times=2)
    stored["metadata"]["labels"] = {"step": "put"}
    status, _, raw = cached_behind.request("PUT", path, json.dumps(stored).encode(), JSON)
    assert status == 200, raw[:300]
    assert faults.attempts("PUT", path) == 3
    assert json.loads(cached_behind.request("GET", path)[2])["metadata"]["labels"] == {
        "step": "put"
    }


def test_a_dropped_connection_is_retried(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    seed(controlplane, "retry-drop")
    path = f"{RAYCLUSTERS}/retry-drop"
    faults.drop("PATCH", path)
    status, _, raw = cached_behind.request("PATCH", path, label("after-drop"), MERGE)
    assert status == 200, raw[:300]
    assert faults.attempts("PATCH", path) == 2


def test_transient_failures_of_a_get_are_retried(
    faults: FaultProxy, passthrough_behind: Proxy, controlplane: ControlPlane
) -> None:
    created = seed(controlplane, "retry-get")
    path = f"{RAYCLUSTERS}/retry-get"
    faults.fail("GET", path, 503, times=2, retry_after="0")
    status, _, raw = passthrough_behind.request("GET", path)
    assert status == 200, raw[:300]
    assert json.loads(raw) == created
    assert faults.attempts("GET", path) == 3


def test_retries_stop_after_three_and_the_last_failure_is_passed_on(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    seed(controlplane, "retry-exhausted")
    path = f"{RAYCLUSTERS}/retry-exhausted"
    faults.fail("PATCH", path, 503, times=10, retry_after="0")
    status, headers, raw = cached_behind.request("PATCH", path, label("never"), MERGE)
    assert status == 503
    assert headers.get("Retry-After") == "0"
    assert json.loads(raw)["message"] == "injected by the fault proxy: 503"
    assert faults.attempts("PATCH", path) == 4
    _, stored = controlplane.request("GET", path)
    assert "step" not in json.loads(stored)["metadata"].get("labels", {})


@pytest.mark.parametrize("code", [400, 403, 409, 422])
def test_a_non_retryable_failure_is_passed_on_at_once(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane, code: int
) -> None:
    seed(controlplane, f"no-retry-{code}")
    path = f"{RAYCLUSTERS}/no-retry-{code}"
    faults.fail("PATCH", path, code, times=5)
    status, _, raw = cached_behind.request("PATCH", path, label("refused"), MERGE)
    assert status == code
    assert json.loads(raw) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"injected by the fault proxy: {code}",
        "reason": "InjectedFault",
        "code": code,
    }
    assert faults.attempts("PATCH", path) == 1


# ---- creates that could duplicate --------------------------------------------------------------


def _generated(cp: ControlPlane, prefix: str) -> list[str]:
    code, raw = cp.request("GET", f"{RAYCLUSTERS}?labelSelector=made%3D{prefix}")
    assert code == 200
    return [i["metadata"]["name"] for i in json.loads(raw)["items"]]


def test_a_create_with_only_generate_name_is_sent_once_despite_a_transient_failure(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    obj = cluster(controlplane, "unused", made="gen-503")
    obj["metadata"] = {"generateName": "gen-503-", "labels": {"made": "gen-503"}}
    faults.fail("POST", RAYCLUSTERS, 503, times=1, retry_after="0")
    status, _, raw = cached_behind.request("POST", RAYCLUSTERS, json.dumps(obj).encode(), JSON)
    assert status == 503
    assert json.loads(raw)["message"] == "injected by the fault proxy: 503"
    assert faults.attempts("POST", RAYCLUSTERS) == 1
    assert _generated(controlplane, "gen-503") == []


def test_a_create_with_only_generate_name_is_not_resent_after_a_dropped_connection(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    """The connection dropped is one watchcache kept alive and reused: the request reached
    the server, so sending it again on a fresh connection could create a second object."""
    seed(controlplane, "before-drop")
    code, _, _ = cached_behind.request("PATCH", f"{RAYCLUSTERS}/before-drop", label("warm"), MERGE)
    assert code == 200  # watchcache now holds an idle connection to the fault proxy
    obj = cluster(controlplane, "unused")
    obj["metadata"] = {"generateName": "gen-drop-", "labels": {"made": "gen-drop"}}
    faults.drop("POST", RAYCLUSTERS)
    status, _, raw = cached_behind.request("POST", RAYCLUSTERS, json.dumps(obj).encode(), JSON)
    assert status == 503
    assert json.loads(raw)["kind"] == "Status"
    assert faults.attempts("POST", RAYCLUSTERS) == 1


def test_a_create_with_a_name_is_retried(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    obj = cluster(controlplane, "named-create")
    obj["metadata"]["generateName"] = "ignored-"
    faults.fail("POST", RAYCLUSTERS, 503, times=1, retry_after="0")
    status, _, raw = cached_behind.request("POST", RAYCLUSTERS, json.dumps(obj).encode(), JSON)
    assert status == 201, raw[:300]
    assert json.loads(raw)["metadata"]["name"] == "named-create"
    assert faults.attempts("POST", RAYCLUSTERS) == 2


# ---- streams -----------------------------------------------------------------------------------


def test_a_watch_through_the_fault_proxy_streams_each_event_while_open(
    faults: FaultProxy, passthrough_behind: Proxy, controlplane: ControlPlane
) -> None:
    with WatchStream(passthrough_behind.base, f"{RAYCLUSTERS}?watch=true") as stream:
        assert stream.status == 200
        for name in ("streamed-1", "streamed-2"):
            seed(controlplane, name)
            event = stream.read_until(lambda e, n=name: e["object"]["metadata"]["name"] == n)[-1]
            assert event["type"] == "ADDED"
            assert stream.clean_end is None  # the stream is still open


def test_a_watch_refused_with_a_transient_failure_is_retried_then_streams(
    faults: FaultProxy, passthrough_behind: Proxy, controlplane: ControlPlane
) -> None:
    faults.fail("GET", RAYCLUSTERS, 503, times=1, retry_after="0")
    with WatchStream(passthrough_behind.base, f"{RAYCLUSTERS}?watch=true") as stream:
        assert stream.status == 200
        assert faults.attempts("GET", RAYCLUSTERS) == 2
        seed(controlplane, "streamed-after-retry")
        stream.read_until(lambda e: e["object"]["metadata"]["name"] == "streamed-after-retry")


# ---- read-your-writes while the cache lags -----------------------------------------------------


def test_writes_are_read_back_at_once_while_the_caches_watch_lags(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    """Every event reaches the cache a second late; each answer waits for it instead."""
    faults.lag(WATCHED, 1.0)
    proxy = cached_behind
    obj = cluster(controlplane, "lagged", sweep="lag")
    code, _, raw = proxy.request("POST", RAYCLUSTERS, json.dumps(obj).encode(), JSON)
    assert code == 201, raw[:300]
    path = f"{RAYCLUSTERS}/lagged"
    assert json.loads(proxy.request("GET", path)[2]) == json.loads(raw)

    code, _, raw = proxy.request("PATCH", path, label("lagged"), MERGE)
    assert code == 200, raw[:300]
    assert json.loads(proxy.request("GET", path)[2]) == json.loads(raw)
    listed = json.loads(proxy.request("GET", f"{RAYCLUSTERS}?labelSelector=step%3Dlagged")[2])
    assert [i["metadata"]["name"] for i in listed["items"]] == ["lagged"]

    code, _, raw = proxy.request("DELETE", path)
    assert code == 200, raw[:300]
    assert proxy.request("GET", path)[0] == 404

    for i in range(3):
        obj = cluster(controlplane, f"lagged-{i}", sweep="lag")
        code, _, raw = proxy.request("POST", RAYCLUSTERS, json.dumps(obj).encode(), JSON)
        assert code == 201, raw[:300]
    code, _, raw = proxy.request("DELETE", f"{RAYCLUSTERS}?labelSelector=sweep%3Dlag")
    assert code == 200, raw[:300]
    listed = json.loads(proxy.request("GET", f"{RAYCLUSTERS}?labelSelector=sweep%3Dlag")[2])
    assert listed["items"] == [], "a delete-collection's objects are still listed after it"


def test_a_read_without_resource_version_is_the_caches_state_and_never_asks_upstream(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    """The README's contract for an unset resourceVersion: the cache as it is (no consistent
    read upstream), so a write made elsewhere shows once the watch delivers it."""
    seed(controlplane, "unset-rv-before", sweep="unset-rv")
    selected = f"{RAYCLUSTERS}?labelSelector=sweep%3Dunset-rv"

    def names() -> list[str]:
        code, _, raw = cached_behind.request("GET", selected)
        assert code == 200, raw[:300]
        return [i["metadata"]["name"] for i in json.loads(raw)["items"]]

    wait_until(lambda: names() == ["unset-rv-before"])
    faults.reset()
    seed(controlplane, "unset-rv-after", sweep="unset-rv")  # straight to kube-apiserver
    wait_until(lambda: names() == ["unset-rv-after", "unset-rv-before"])
    assert cached_behind.request("GET", f"{RAYCLUSTERS}/unset-rv-after")[0] == 200
    assert faults.attempts("GET", RAYCLUSTERS) == 0
    assert faults.attempts("GET", f"{RAYCLUSTERS}/unset-rv-after") == 0
    controlplane.request("DELETE", selected)


# ---- answers that break off --------------------------------------------------------------------


def test_a_write_whose_answer_breaks_off_is_not_sent_again(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    """kube-apiserver applied the patch before its answer broke off: a second send would
    append a second worker group."""
    created = seed(controlplane, "cut-write")
    groups = len(created["spec"]["workerGroupSpecs"])
    path = f"{RAYCLUSTERS}/cut-write"
    group = {**created["spec"]["workerGroupSpecs"][0], "groupName": "appended"}
    patch = json.dumps([{"op": "add", "path": "/spec/workerGroupSpecs/-", "value": group}])
    faults.cut("PATCH", path)
    status, _, raw = cached_behind.request(
        "PATCH", path, patch.encode(), {"Content-Type": "application/json-patch+json"}
    )
    assert status == 502
    assert json.loads(raw)["kind"] == "Status"
    assert faults.attempts("PATCH", path) == 1
    _, stored = controlplane.request("GET", path)
    assert len(json.loads(stored)["spec"]["workerGroupSpecs"]) == groups + 1


def test_a_stream_broken_off_upstream_is_broken_off_for_the_client_not_ended(
    faults: FaultProxy, passthrough_behind: Proxy, controlplane: ControlPlane
) -> None:
    """A cleanly ended stream would tell the client it had everything."""
    seed(controlplane, "cut-stream")
    faults.cut("GET", RAYCLUSTERS)
    url = urlsplit(passthrough_behind.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", f"{RAYCLUSTERS}?watch=true&fieldSelector=metadata.name%3Dcut-stream")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    finally:
        conn.close()
    assert passthrough_behind.request("GET", "/healthz")[0] == 200


def test_a_large_write_answered_gzipped_is_read_back_at_once_while_the_caches_watch_lags(
    faults: FaultProxy, cached_behind: Proxy, controlplane: ControlPlane
) -> None:
    """kube-apiserver gzips an answer over 128 KiB for a client that accepts it, as
    client-go's do: the hold must still find the object's version in it."""
    faults.lag(WATCHED, 1.0)
    obj = cluster(controlplane, "lagged-large")
    obj["metadata"]["annotations"] = {"padding": "x" * 200_000}
    headers = {**JSON, "Accept-Encoding": "gzip"}
    code, got, raw = cached_behind.request("POST", RAYCLUSTERS, json.dumps(obj).encode(), headers)
    assert code == 201, raw[:300]
    assert got.get("Content-Encoding") == "gzip"
    created = json.loads(gzip.decompress(raw))
    stored = cached_behind.request("GET", f"{RAYCLUSTERS}/lagged-large")
    assert stored[0] == 200, "the large create is not readable right after it"
    assert json.loads(stored[2]) == created
