"""The built-in features are written on the public feature API: a server runs with none of
them, or with any one alone, and then has exactly that feature's routes and caches."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Proxy

EVENTS = "/apis/events.k8s.io/v1/namespaces/default/events"
TEMPLATES = "/apis/v1/namespaces/default/compute_templates"
SERVICE = "/api/v1/namespaces/default/services/not-kuberay:8265/proxy/"
RAY = "/apis/ray.io/v1/namespaces/default/rayclusters"
CACHES = {
    "ray-events": "events.events.k8s.io",
    "service-proxy": "services.core",
    "compute-templates": "configmaps.core",
}


def cached_resources(proxy: Proxy) -> set[str]:
    code, _, body = proxy.request("GET", "/metrics")
    assert code == 200
    return set(re.findall(r'^watchcache_cache_objects\{resource="([^"]+)"\}', body.decode(), re.M))


def served(proxy: Proxy) -> dict[str, bool]:
    """Which feature answers on this server (a 404 from the catch-all: none)."""
    events = proxy.request("GET", EVENTS)[0] == 200
    templates = proxy.request("GET", TEMPLATES)[0] == 200
    # The gate answers a Service without KuberRay's label itself: "kuberay service not found".
    code, _, body = proxy.request("GET", SERVICE)
    gated = code == 404 and b"kuberay service not found" in body
    return {"ray-events": events, "compute-templates": templates, "service-proxy": gated}


def test_a_server_with_no_feature_serves_the_ray_resources_alone(
    proxy_factory: Callable[..., Proxy],
) -> None:
    proxy = proxy_factory("--features", "")
    assert proxy.request("GET", RAY)[0] == 200
    assert served(proxy) == dict.fromkeys(CACHES, False)
    assert not cached_resources(proxy) & set(CACHES.values())


@pytest.mark.parametrize("feature", sorted(CACHES))
def test_each_feature_alone_brings_its_own_routes_and_caches(
    proxy_factory: Callable[..., Proxy], feature: str
) -> None:
    proxy = proxy_factory("--features", feature)
    assert proxy.request("GET", RAY)[0] == 200
    assert served(proxy) == {name: name == feature for name in CACHES}
    assert cached_resources(proxy) & set(CACHES.values()) == {CACHES[feature]}


def test_cors_alone_answers_a_preflight(proxy_factory: Callable[..., Proxy]) -> None:
    origin = "http://dashboard.example"
    proxy = proxy_factory("--features", "cors", "--cors-allow-origin", origin)
    code, headers, _ = proxy.request(
        "OPTIONS", RAY, headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert code in (200, 204) and headers.get("Access-Control-Allow-Origin") == origin
    assert served(proxy) == dict.fromkeys(CACHES, False)


def test_an_unknown_feature_is_refused_at_start(proxy_factory: Callable[..., Proxy]) -> None:
    with pytest.raises(RuntimeError, match="unknown features: nope"):
        proxy_factory("--features", "nope")
