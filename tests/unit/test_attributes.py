"""RequestInfoFactory's attributes and kube-apiserver's 403 wording, case by case (the
differential check against the real API server is tests/integration/test_authz_kube.py)."""

from __future__ import annotations

import pytest

from watchcache.kube.attributes import (
    Attributes,
    forbidden,
    request_attributes,
    request_info,
)
from watchcache.kube.status import StatusError

RAY = "/apis/ray.io/v1"


def _q(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in text.split("&") if text else []:
        key, _, value = pair.partition("=")
        out.setdefault(key, []).append(value)
    return out


def R(
    verb: str,
    group: str,
    resource: str,
    ns: str = "",
    name: str = "",
    sub: str = "",
    version: str = "v1",
) -> Attributes:
    return Attributes(True, verb, group, version, resource, sub, ns, name)


N = Attributes.non_resource

CASES: list[tuple[str, str, str, Attributes]] = [
    # collections and objects, namespaced and cluster-wide
    ("GET", f"{RAY}/namespaces/a/rayclusters", "", R("list", "ray.io", "rayclusters", "a")),
    ("GET", f"{RAY}/rayclusters", "", R("list", "ray.io", "rayclusters")),
    ("GET", f"{RAY}/namespaces/a/rayclusters/x", "", R("get", "ray.io", "rayclusters", "a", "x")),
    ("HEAD", f"{RAY}/namespaces/a/rayclusters/x", "", R("get", "ray.io", "rayclusters", "a", "x")),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "watch=true",
        R("watch", "ray.io", "rayclusters", "a"),
    ),
    ("GET", f"{RAY}/namespaces/a/rayclusters", "watch=1", R("watch", "ray.io", "rayclusters", "a")),
    ("GET", f"{RAY}/namespaces/a/rayclusters", "watch=", R("watch", "ray.io", "rayclusters", "a")),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "watch=FALSE",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    ("GET", f"{RAY}/namespaces/a/rayclusters", "watch=0", R("list", "ray.io", "rayclusters", "a")),
    ("GET", f"{RAY}/rayclusters", "watch=true", R("watch", "ray.io", "rayclusters")),
    # the legacy watch path
    ("GET", f"{RAY}/watch/namespaces/a/rayclusters", "", R("watch", "ray.io", "rayclusters", "a")),
    (
        "GET",
        f"{RAY}/watch/namespaces/a/rayclusters/x",
        "",
        R("watch", "ray.io", "rayclusters", "a", "x"),
    ),
    ("GET", f"{RAY}/watch/rayclusters", "", R("watch", "ray.io", "rayclusters")),
    # a name from the field selector; not when it is no path segment, or decoding fails
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name=x",
        R("list", "ray.io", "rayclusters", "a", "x"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name==x&watch=true",
        R("watch", "ray.io", "rayclusters", "a", "x"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.namespace=a,metadata.name=x",
        R("list", "ray.io", "rayclusters", "a", "x"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name!=x",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name=a%b",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name=..",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name=x&limit=z",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name=x&labelSelector=a=(",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "limit=z&watch=yes",
        R("watch", "ray.io", "rayclusters", "a"),
    ),
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters",
        "limit=z&watch=False",
        R("list", "ray.io", "rayclusters", "a"),
    ),
    # writes
    ("POST", f"{RAY}/namespaces/a/rayclusters", "", R("create", "ray.io", "rayclusters", "a")),
    (
        "PUT",
        f"{RAY}/namespaces/a/rayclusters/x",
        "",
        R("update", "ray.io", "rayclusters", "a", "x"),
    ),
    (
        "PATCH",
        f"{RAY}/namespaces/a/rayclusters/x",
        "",
        R("patch", "ray.io", "rayclusters", "a", "x"),
    ),
    (
        "DELETE",
        f"{RAY}/namespaces/a/rayclusters/x",
        "",
        R("delete", "ray.io", "rayclusters", "a", "x"),
    ),
    (
        "DELETE",
        f"{RAY}/namespaces/a/rayclusters",
        "",
        R("deletecollection", "ray.io", "rayclusters", "a"),
    ),
    (
        "DELETE",
        f"{RAY}/namespaces/a/rayclusters",
        "fieldSelector=metadata.name=x",
        R("deletecollection", "ray.io", "rayclusters", "a"),
    ),
    ("OPTIONS", f"{RAY}/namespaces/a/rayclusters", "", R("", "ray.io", "rayclusters", "a")),
    # subresources
    (
        "GET",
        f"{RAY}/namespaces/a/rayclusters/x/status",
        "",
        R("get", "ray.io", "rayclusters", "a", "x", "status"),
    ),
    (
        "PATCH",
        f"{RAY}/namespaces/a/rayclusters/x/status",
        "",
        R("patch", "ray.io", "rayclusters", "a", "x", "status"),
    ),
    (
        "PUT",
        f"{RAY}/namespaces/a/rayclusters/x/status/extra",
        "",
        R("update", "ray.io", "rayclusters", "a", "x", "status"),
    ),
    # the core group, configmaps, events of both groups
    ("GET", "/api/v1/namespaces/a/configmaps", "", R("list", "", "configmaps", "a")),
    ("GET", "/api/v1/namespaces/a/configmaps/t", "", R("get", "", "configmaps", "a", "t")),
    ("GET", "/api/v1/namespaces/a/events", "", R("list", "", "events", "a")),
    (
        "GET",
        "/apis/events.k8s.io/v1/namespaces/a/events",
        "watch=true",
        R("watch", "events.k8s.io", "events", "a"),
    ),
    # namespaces themselves
    ("GET", "/api/v1/namespaces", "", R("list", "", "namespaces")),
    ("GET", "/api/v1/namespaces/a", "", R("get", "", "namespaces", "a", "a")),
    ("PUT", "/api/v1/namespaces/a/status", "", R("update", "", "namespaces", "a", "a", "status")),
    (
        "PUT",
        "/api/v1/namespaces/a/finalize",
        "",
        R("update", "", "namespaces", "a", "a", "finalize"),
    ),
    ("DELETE", "/api/v1/namespaces/a", "", R("delete", "", "namespaces", "a", "a")),
    # the service proxy
    (
        "GET",
        "/api/v1/namespaces/a/services/head:8265/proxy/api/jobs/",
        "",
        R("get", "", "services", "a", "head:8265", "proxy"),
    ),
    (
        "POST",
        "/api/v1/namespaces/a/services/https:head:8443/proxy/x",
        "",
        R("create", "", "services", "a", "https:head:8443", "proxy"),
    ),
    (
        "GET",
        "/api/v1/namespaces/a/services/head/proxy",
        "",
        R("get", "", "services", "a", "head", "proxy"),
    ),
    (
        "GET",
        "/api/v1/proxy/namespaces/a/services/head/x/y",
        "",
        R("proxy", "", "services", "a", "head"),
    ),
    # groups with a version only, and discovery: non-resource requests
    ("GET", "/apis/ray.io/v1", "", N("/apis/ray.io/v1", "get")),
    ("GET", "/apis/ray.io", "", N("/apis/ray.io", "get")),
    ("GET", "/apis", "", N("/apis", "get")),
    ("GET", "/api", "", N("/api", "get")),
    ("GET", "/api/v1", "", N("/api/v1", "get")),
    ("GET", "/version", "", N("/version", "get")),
    ("GET", "/openapi/v2", "", N("/openapi/v2", "get")),
    ("GET", "/metrics", "", N("/metrics", "get")),
    ("GET", "/readyz", "", N("/readyz", "get")),
    ("GET", "/healthz", "", N("/healthz", "get")),
    ("GET", "/livez", "", N("/livez", "get")),
    ("HEAD", "/version", "", N("/version", "head")),
    ("POST", "/metrics", "", N("/metrics", "post")),
    ("GET", "/", "", N("/", "get")),
    ("GET", "/other/a/b/c", "", N("/other/a/b/c", "get")),
]


@pytest.mark.parametrize(("method", "path", "query", "want"), CASES)
def test_request_attributes(method: str, path: str, query: str, want: Attributes) -> None:
    assert request_attributes(method, path, _q(query)) == want


def test_request_info_keeps_parts_and_selectors() -> None:
    info = request_info(
        "GET", f"{RAY}/namespaces/a/rayclusters", _q("labelSelector=a%3Db&fieldSelector=f=1")
    )
    assert info.parts == ("rayclusters",)
    assert (info.label_selector, info.field_selector) == ("a%3Db", "f=1")
    proxy = request_info("GET", "/api/v1/namespaces/a/services/s/proxy/p/q", {})
    assert proxy.parts == ("services", "s", "proxy", "p", "q")
    assert proxy.api_prefix == "api"
    # the legacy watch path takes no selector into the attributes
    assert (
        request_info("GET", f"{RAY}/watch/rayclusters", _q("labelSelector=a")).label_selector == ""
    )


def test_a_path_verb_without_a_resource_is_the_servers_500() -> None:
    with pytest.raises(StatusError) as caught:
        request_attributes("GET", f"{RAY}/watch", {})
    assert caught.value.code == 500


def test_attributes_send_only_what_is_set() -> None:
    assert R("list", "", "configmaps", "a").review_spec() == {
        "resourceAttributes": {
            "namespace": "a",
            "verb": "list",
            "version": "v1",
            "resource": "configmaps",
        }
    }
    assert N("/metrics", "get").review_spec() == {
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"}
    }


WORDING = [
    (
        R("list", "ray.io", "rayclusters", "a"),
        "",
        'rayclusters.ray.io is forbidden: User "alice" cannot list resource "rayclusters" '
        'in API group "ray.io" in the namespace "a"',
        {"group": "ray.io", "kind": "rayclusters"},
    ),
    (
        R("watch", "ray.io", "rayclusters"),
        "",
        'rayclusters.ray.io is forbidden: User "alice" cannot watch resource "rayclusters" '
        'in API group "ray.io" at the cluster scope',
        {"group": "ray.io", "kind": "rayclusters"},
    ),
    (
        R("patch", "ray.io", "rayclusters", "a", "x", "status"),
        "",
        'rayclusters.ray.io "x" is forbidden: User "alice" cannot patch resource '
        '"rayclusters/status" in API group "ray.io" in the namespace "a"',
        {"name": "x", "group": "ray.io", "kind": "rayclusters"},
    ),
    (
        R("get", "", "configmaps", "a", "t"),
        'RBAC: role.rbac.authorization.k8s.io "r" not found',
        'configmaps "t" is forbidden: User "alice" cannot get resource "configmaps" in API '
        'group "" in the namespace "a": RBAC: role.rbac.authorization.k8s.io "r" not found',
        {"name": "t", "kind": "configmaps"},
    ),
    (
        N("/metrics", "get"),
        "",
        'forbidden: User "alice" cannot get path "/metrics"',
        {},
    ),
    (
        N("/a<b>&c", "get"),
        "<kept>",
        'forbidden: User "alice" cannot get path "/a&lt;b&gt;&amp;c": <kept>',
        {},
    ),
]


@pytest.mark.parametrize(("attrs", "reason", "message", "details"), WORDING)
def test_forbidden_wording(
    attrs: Attributes, reason: str, message: str, details: dict[str, str]
) -> None:
    error = forbidden("alice", attrs, reason)
    assert (error.code, error.reason, error.message) == (403, "Forbidden", message)
    assert (error.details or {}) == details
