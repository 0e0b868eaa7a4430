"""A server whose credentials reach only some of what it caches: what is synced is served,
what is not answers 429 with Retry-After (as the API server does while its cache starts), and
/readyz says which cache is waiting. Then ``--namespace`` makes it work with a namespaced role."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LIMITED, Proxy
from differential import wait_until
from support.controlplane import ControlPlane

NS = "wc-rbac"


def _apply(cp: ControlPlane, path: str, obj: dict) -> None:
    code, body = cp.request("POST", path, obj)
    assert code in (201, 409), body


@pytest.fixture(scope="module")
def limited_kubeconfig(
    controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The limited user may read and watch RayClusters, and only in one namespace."""
    _apply(controlplane, "/api/v1/namespaces", {"metadata": {"name": NS}})
    rules = [
        {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "list", "watch"]}
    ]
    _apply(
        controlplane,
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles",
        {"metadata": {"name": "ray-reader"}, "rules": rules},
    )
    _apply(
        controlplane,
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings",
        {
            "metadata": {"name": "ray-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "ray-reader",
            },
            "subjects": [{"kind": "User", "name": LIMITED.name}],
        },
    )
    path = tmp_path_factory.mktemp("rbac") / "limited.kubeconfig"
    yield controlplane.write_kubeconfig(path, LIMITED)


@pytest.fixture(scope="module")
def limited_proxy(proxy_factory: Callable[..., Proxy], limited_kubeconfig: Path) -> Proxy:
    """Caches everything, with credentials that can list none of it cluster-wide."""
    return proxy_factory(
        "--kubeconfig", str(limited_kubeconfig), "--retries", "0", ready="/healthz"
    )


def test_readyz_names_the_caches_that_cannot_sync(limited_proxy: Proxy) -> None:
    code, _, body = limited_proxy.request("GET", "/readyz")
    assert code == 503
    assert b"rayclusters.ray.io not synced" in body


def test_a_read_before_the_cache_synced_is_429_with_retry_after(limited_proxy: Proxy) -> None:
    code, headers, body = limited_proxy.request(
        "GET", f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
    )
    assert code == 429
    assert headers["Retry-After"] == "1"
    status = json.loads(body)
    assert status["kind"] == "Status" and status["reason"] == "TooManyRequests"
    assert status["details"]["retryAfterSeconds"] == 1


def test_namespace_flag_makes_a_namespaced_role_enough(
    proxy_factory: Callable[..., Proxy], limited_kubeconfig: Path, controlplane: ControlPlane
) -> None:
    proxy = proxy_factory(
        "--kubeconfig",
        str(limited_kubeconfig),
        "--namespace",
        NS,
        "--no-kuberay-features",
        "--retries",
        "0",
        ready="/healthz",
    )
    # rayjobs and rayservices are still out of reach: only rayclusters can sync.
    obj = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "rbac-probe"},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.46.0"}]}
                },
            }
        },
    }
    _apply(controlplane, f"/apis/ray.io/v1/namespaces/{NS}/rayclusters", obj)

    def listed() -> list[str]:
        code, body = proxy.json("GET", f"/apis/ray.io/v1/namespaces/{NS}/rayclusters")
        assert code == 200, body
        return [item["metadata"]["name"] for item in body["items"]]

    wait_until(lambda: listed() == ["rbac-probe"], timeout=30, what="the probe in the cache")
    code, _ = proxy.json("GET", f"/apis/ray.io/v1/namespaces/{NS}/rayjobs")
    assert code == 429
