"""Discovery and OpenAPI filters: a client learns of the served resources and nothing else.

Documents from the real API server are filtered in tests/integration/test_discovery_tables.py;
these pin the rules on small hand-written documents.
"""

from __future__ import annotations

import orjson

from watchcache.config import RAY_RESOURCES, ResourceSpec
from watchcache.kube.negotiation import accepts_json
from watchcache.upstream.discovery import (
    Served,
    filter_discovery,
    filter_openapi,
    with_server_address,
)

SERVED = Served.of(
    [
        *RAY_RESOURCES,
        ResourceSpec(group="", version="v1", plural="services", kind="Service", served=False),
    ]
)


def _aggregated_group(name: str, versions: dict[str, list[str]]) -> dict:
    return {
        "metadata": {"name": name},
        "versions": [
            {"version": v, "resources": [{"resource": r} for r in rs], "freshness": "Current"}
            for v, rs in versions.items()
        ],
    }


def test_aggregated_discovery_keeps_only_served_groups_versions_and_resources() -> None:
    doc = {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [
            _aggregated_group("apps", {"v1": ["deployments"]}),
            _aggregated_group("ray.io", {"v1": ["rayclusters", "other"], "v1alpha1": ["rayjobs"]}),
        ],
    }
    out = filter_discovery(doc, SERVED)
    assert [i["metadata"]["name"] for i in out["items"]] == ["ray.io"]
    (version,) = out["items"][0]["versions"]
    assert version["version"] == "v1"
    assert [r["resource"] for r in version["resources"]] == ["rayclusters"]
    assert version["freshness"] == "Current"


def test_core_group_keeps_only_the_namespace_get_watchcache_answers() -> None:
    namespaces = {
        "resource": "namespaces",
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        "subresources": [{"subresource": "status", "verbs": ["get"]}],
    }
    doc = {
        "kind": "APIGroupDiscoveryList",
        "items": [
            {
                "metadata": {},
                "versions": [{"version": "v1", "resources": [{"resource": "pods"}, namespaces]}],
            }
        ],
    }
    (item,) = filter_discovery(doc, SERVED)["items"]
    assert item["versions"] == [
        {"version": "v1", "resources": [{"resource": "namespaces", "verbs": ["get"]}]}
    ]
    legacy = filter_discovery(
        {
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {"name": "namespaces", "shortNames": ["ns"], "verbs": ["get", "list"]},
                {"name": "namespaces/status", "verbs": ["get"]},
                {"name": "services", "verbs": ["get"]},
            ],
        },
        SERVED,
    )
    assert legacy["resources"] == [{"name": "namespaces", "shortNames": ["ns"], "verbs": ["get"]}]


def test_api_versions_lists_v1_and_never_keeps_the_api_servers_address() -> None:
    upstream = {"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}
    legacy = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [upstream]}
    out = filter_discovery(legacy, SERVED)
    assert (out["versions"], out["serverAddressByClientCIDRs"]) == (["v1"], [])
    body = with_server_address(orjson.dumps(out), "127.0.0.1:8888")
    assert body.endswith(b"\n")
    assert orjson.loads(body)["serverAddressByClientCIDRs"] == [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:8888"}
    ]
    assert orjson.loads(with_server_address(body, None))["serverAddressByClientCIDRs"] == []
    group = {"kind": "APIGroup", "name": "ray.io", "versions": [], "serverAddressByClientCIDRs": []}
    assert "serverAddressByClientCIDRs" not in filter_discovery(group, SERVED)


def test_group_documents_drop_unserved_versions_and_fix_the_preferred_one() -> None:
    group = {
        "kind": "APIGroup",
        "name": "ray.io",
        "versions": [
            {"groupVersion": "ray.io/v1alpha1", "version": "v1alpha1"},
            {"groupVersion": "ray.io/v1", "version": "v1"},
        ],
        "preferredVersion": {"groupVersion": "ray.io/v1alpha1", "version": "v1alpha1"},
    }
    out = filter_discovery(group, SERVED)
    assert out["versions"] == [{"groupVersion": "ray.io/v1", "version": "v1"}]
    assert out["preferredVersion"]["version"] == "v1"
    groups = filter_discovery(
        {"kind": "APIGroupList", "groups": [group, {"name": "apps", "versions": []}]}, SERVED
    )
    assert [g["name"] for g in groups["groups"]] == ["ray.io"]


def test_resource_list_keeps_served_resources_and_their_subresources() -> None:
    doc = {
        "kind": "APIResourceList",
        "groupVersion": "ray.io/v1",
        "resources": [{"name": n} for n in ("rayclusters", "rayclusters/status", "foos")],
    }
    names = [r["name"] for r in filter_discovery(doc, SERVED)["resources"]]
    assert names == ["rayclusters", "rayclusters/status"]


def test_openapi_keeps_served_paths_and_exactly_the_definitions_they_reach() -> None:
    ref = "#/definitions/"
    doc = {
        "swagger": "2.0",
        "paths": {
            "/apis/ray.io/v1/namespaces/{namespace}/rayclusters": {
                "get": {"parameters": [{"$ref": "#/parameters/limit"}], "x": {"$ref": ref + "A"}}
            },
            "/apis/ray.io/v1/watch/rayjobs": {"get": {"x": {"$ref": ref + "C"}}},
            "/apis/apps/v1/deployments": {"get": {"x": {"$ref": ref + "D"}}},
            "/apis/apps/v1/": {},
            "/apis/ray.io/v1/": {},
        },
        "definitions": {
            "A": {"properties": {"b": {"$ref": ref + "B"}}},
            "B": {"type": "string"},
            "C": {},
            "D": {"properties": {"e": {"$ref": ref + "E"}}},
            "E": {},
        },
        "parameters": {"limit": {"name": "limit"}, "other": {}},
        "securityDefinitions": {"BearerToken": {}},
    }
    out = filter_openapi(doc, SERVED)
    assert list(out["paths"]) == [
        "/apis/ray.io/v1/namespaces/{namespace}/rayclusters",
        "/apis/ray.io/v1/watch/rayjobs",
        "/apis/ray.io/v1/",
    ]
    assert list(out["definitions"]) == ["A", "B", "C"]
    assert list(out["parameters"]) == ["limit"]
    assert out["securityDefinitions"] == {"BearerToken": {}}


def test_openapi_v3_components_are_pruned_but_security_schemes_are_kept() -> None:
    doc = {
        "paths": {"/apis/ray.io/v1/rayservices": {"$ref": "#/components/schemas/S"}},
        "components": {
            "schemas": {"S": {}, "T": {}},
            "securitySchemes": {"BearerToken": {}},
        },
    }
    out = filter_openapi(doc, SERVED)
    assert out["components"] == {"schemas": {"S": {}}, "securitySchemes": {"BearerToken": {}}}


def test_accepts_json_unless_only_protobuf_is_acceptable() -> None:
    assert accepts_json(None)
    assert accepts_json("application/json")
    assert accepts_json("*/*")
    assert accepts_json("application/com.github.proto-openapi.spec.v2@v1.0+protobuf, */*;q=0.1")
    assert not accepts_json("application/com.github.proto-openapi.spec.v2@v1.0+protobuf")


def test_a_served_core_resource_is_listed_whole_beside_the_namespace_get() -> None:
    served = Served.of(
        [ResourceSpec(group="", version="v1", plural="configmaps", kind="ConfigMap")]
    )
    doc = {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "configmaps", "verbs": ["get", "list", "watch"]},
            {"name": "namespaces", "verbs": ["get", "list"]},
            {"name": "pods", "verbs": ["get"]},
        ],
    }
    assert filter_discovery(doc, served)["resources"] == [
        {"name": "configmaps", "verbs": ["get", "list", "watch"]},
        {"name": "namespaces", "verbs": ["get"]},
    ]
