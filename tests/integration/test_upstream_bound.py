"""The bound on upstream connections (--max-upstream-connections), on the real control plane.

With a bound of 2, two delegated watches (a Table watch is not rendered by the cache, so it
goes to kube-apiserver and holds its connection for as long as it runs) take every
connection. A third forwarded request then waits its bounded time and is answered as
kube-apiserver's max-in-flight filter answers: 429, a TooManyRequests Status and
Retry-After: 1. Meanwhile the cache still answers its gets and watches, and its reflector,
on a pool of its own, still follows writes made directly on kube-apiserver. Once the two
watches end, a forwarded write goes through again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from differential import wait_until
from support import population
from support.controlplane import ControlPlane
from support.fixtures import module_namespace
from support.metrics import metric
from support.statuses import UPSTREAM_BUSY
from watchclient import WatchStream

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-upstream-bound"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
JSON = {"Content-Type": "application/json"}


namespace = module_namespace(NS)


@pytest.fixture(scope="module")
def bounded(namespace: str, proxy_factory: Callable[..., Proxy]) -> Proxy:
    return proxy_factory("--max-upstream-connections", "2")


def cluster(samples: Path, name: str) -> dict[str, Any]:
    obj = population.raycluster(name, NS, {"test": "upstream-bound"}, samples, state=None)
    return {k: v for k, v in obj.items() if k != "status"}


def cached_get(proxy: Proxy, name: str) -> dict[str, Any] | None:
    code, _, body = proxy.request("GET", f"{RAYCLUSTERS}/{name}")
    return json.loads(body) if code == 200 else None


def test_a_full_upstream_pool_answers_429_and_the_cache_keeps_serving(
    bounded: Proxy, controlplane: ControlPlane, samples: Path
) -> None:
    code, seed = controlplane.request("POST", RAYCLUSTERS, cluster(samples, "seed"))
    assert code == 201, seed
    wait_until(lambda: cached_get(bounded, "seed"), what="the seed in the cache")
    code, _, listed = bounded.request("GET", RAYCLUSTERS)
    assert code == 200
    rv = json.loads(listed)["metadata"]["resourceVersion"]

    held = [
        WatchStream(bounded.base, f"{RAYCLUSTERS}?watch=true", headers={"Accept": TABLE})
        for _ in range(2)
    ]
    try:
        assert [w.status for w in held] == [200, 200]
        # Both delegated: kube-apiserver's Table rows, not the cache's events.
        for w in held:
            first = w.next(30)
            assert first is not None and first["object"]["kind"] == "Table"
        assert metric(bounded, "watchcache_upstream_connections", pool="requests") == 2

        body = json.dumps(cluster(samples, "refused")).encode()
        code, headers, answer = bounded.request("POST", RAYCLUSTERS, body, JSON)
        assert code == 429, answer
        assert headers.get("Retry-After") == "1"
        assert headers.get("Content-Type") == "application/json"
        assert json.loads(answer) == UPSTREAM_BUSY
        assert controlplane.request("GET", f"{RAYCLUSTERS}/refused")[0] == 404  # never sent
        assert metric(bounded, "watchcache_upstream_connections_refused_total") >= 1

        # The cache still answers, and its reflector still follows kube-apiserver.
        assert cached_get(bounded, "seed") is not None
        with WatchStream(bounded.base, f"{RAYCLUSTERS}?watch=true&resourceVersion={rv}") as w:
            assert w.status == 200
            code, made = controlplane.request("POST", RAYCLUSTERS, cluster(samples, "direct"))
            assert code == 201, made
            events = w.read_until(
                lambda e: e["type"] == "ADDED" and e["object"]["metadata"]["name"] == "direct"
            )
            assert events[-1]["object"]["kind"] == "RayCluster"
    finally:
        for w in held:
            w.close()

    # With the delegated watches gone, their connections are free for a forwarded write.
    def create() -> bool:
        code, _, answer = bounded.request("POST", RAYCLUSTERS, body, JSON)
        assert code in (201, 429), answer
        return code == 201

    wait_until(create, timeout=60, interval=0.5, what="a forwarded create after the watches")
    assert cached_get(bounded, "refused") is not None  # read-your-writes, through the cache

    code, patched = controlplane.request(
        "PATCH",
        f"{RAYCLUSTERS}/direct",
        {"metadata": {"labels": {"after": "bound"}}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, patched
    wait_until(
        lambda: (
            ((cached_get(bounded, "direct") or {}).get("metadata", {}).get("labels") or {}).get(
                "after"
            )
            == "bound"
        ),
        what="a direct patch in the cache",
    )
    assert "Traceback" not in bounded.log()
