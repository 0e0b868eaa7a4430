"""Discovery, OpenAPI and Tables through watchcache, judged against kube-apiserver.

Discovery and OpenAPI are the API server's documents cut to what watchcache serves: what
remains must be exactly the API server's, and nothing unserved may remain. Tables are
rendered from the cache and must be kube-apiserver's own Table for the same request, key
order included, once what must differ is set aside: a list's resourceVersion (the cache's
own), its continue token (each server's own), and Age cells (computed from each server's
clock at the moment of the request).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from support import population
from support.controlplane import ControlPlane

from watchcache.config import RAY_RESOURCES
from watchcache.middleware.kuberay import RAY_EVENTS

if TYPE_CHECKING:
    from conftest import Proxy

AGGREGATED = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
    "application/json"
)
TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
TABLE_V1BETA1 = "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
PROTO_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
# What watchcache serves by default: the Ray resources and (a KubeRay feature) Ray events.
SERVED_PLURALS: dict[tuple[str, str], set[str]] = {}
for _spec in (*RAY_RESOURCES, RAY_EVENTS):
    SERVED_PLURALS.setdefault((_spec.group, _spec.version), set()).add(_spec.plural)
NAMESPACES = ("wc-tables-a", "wc-tables-b")
MARK = "watchcache.test/tables"

Reply = tuple[int, dict[str, str], bytes]


def kube(cp: ControlPlane, path: str, accept: str | None = None, **headers: str) -> Reply:
    """A GET straight to kube-apiserver, with headers, as kubectl would send it."""
    req = urllib.request.Request(cp.server + path, method="GET")
    req.add_header("Authorization", f"Bearer {cp.admin.token}")
    req.add_header("User-Agent", "kubectl/test")  # no pretty-printing for this agent
    if accept:
        req.add_header("Accept", accept)
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=30) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def via(proxy: Proxy, path: str, accept: str | None = None, **headers: str) -> Reply:
    hdrs = {"User-Agent": "kubectl/test", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if accept:
        hdrs["Accept"] = accept
    return proxy.request("GET", path, headers=hdrs)


# ---- discovery -----------------------------------------------------------------------------
def test_version_is_the_api_servers(controlplane: ControlPlane, cached: Proxy) -> None:
    assert json.loads(via(cached, "/version")[2]) == json.loads(kube(controlplane, "/version")[2])


def _expected_aggregated(doc: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for item in doc["items"]:
        group = item["metadata"].get("name", "")
        versions = [
            {**v, "resources": [r for r in v["resources"] if r["resource"] in plurals]}
            for v in item["versions"]
            if (plurals := SERVED_PLURALS.get((group, v["version"])))
        ]
        if versions:
            items.append({**item, "versions": versions})
    return items


def test_aggregated_discovery_is_kubes_cut_to_the_served_resources(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    k_code, k_headers, k_body = kube(controlplane, "/apis", AGGREGATED)
    code, headers, body = via(cached, "/apis", AGGREGATED)
    assert (code, headers["Content-Type"]) == (k_code, k_headers["Content-Type"])
    doc, want = json.loads(body), json.loads(k_body)
    assert doc["items"] == _expected_aggregated(want)
    assert {i["metadata"]["name"] for i in doc["items"]} == {"ray.io", "events.k8s.io"}
    ray = next(i for i in doc["items"] if i["metadata"]["name"] == "ray.io")
    assert [v["version"] for v in ray["versions"]] == ["v1"]  # v1alpha1 is not served


def test_core_group_discovery_lists_only_the_namespace_get(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    code, headers, body = via(cached, "/api", AGGREGATED)
    k_code, k_headers, k_body = kube(controlplane, "/api", AGGREGATED)
    assert (code, headers["Content-Type"]) == (k_code, k_headers["Content-Type"])
    assert body.endswith(b"\n") and k_body.endswith(b"\n")
    want = json.loads(k_body)
    (core,) = want["items"]
    (v1,) = core["versions"]
    namespaces = next(r for r in v1["resources"] if r["resource"] == "namespaces")
    namespaces = {k: v for k, v in namespaces.items() if k != "subresources"}
    assert json.loads(body) == {
        **want,
        "items": [{**core, "versions": [{**v1, "resources": [{**namespaces, "verbs": ["get"]}]}]}],
    }
    legacy = json.loads(via(cached, "/api")[2])
    assert (legacy["kind"], legacy["versions"]) == ("APIVersions", ["v1"])


def test_group_and_group_version_documents_are_kubes_for_what_is_served(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    for path in ("/apis/ray.io/v1", "/apis/events.k8s.io/v1"):
        got, want = json.loads(via(cached, path)[2]), json.loads(kube(controlplane, path)[2])
        plurals = SERVED_PLURALS[tuple(want["groupVersion"].rpartition("/")[::2])]  # type: ignore[index]
        want["resources"] = [r for r in want["resources"] if r["name"].split("/")[0] in plurals]
        assert got == want
    group = json.loads(via(cached, "/apis/ray.io")[2])
    want = json.loads(kube(controlplane, "/apis/ray.io")[2])
    want["versions"] = [v for v in want["versions"] if v["version"] == "v1"]
    assert group == want
    groups = json.loads(via(cached, "/apis")[2])
    assert [g["name"] for g in groups["groups"]] == ["events.k8s.io", "ray.io"]


def test_discovery_answers_304_to_its_own_etag(cached: Proxy) -> None:
    code, headers, _ = via(cached, "/apis", AGGREGATED)
    assert code == 200 and headers["Etag"].startswith('"')
    code, _, body = via(cached, "/apis", AGGREGATED, If_None_Match=headers["Etag"])
    assert (code, body) == (304, b"")


@pytest.mark.parametrize(
    "path",
    ["/apis/apps", "/apis/apps/v1", "/api/v2", "/apis/ray.io/v1alpha1", "/openapi/v3/apis/apps/v1"],
)
def test_discovery_of_what_is_not_served_is_404(cached: Proxy, path: str) -> None:
    code, _, body = via(cached, path)
    assert code == 404
    assert json.loads(body)["reason"] == "NotFound"


# ---- OpenAPI -------------------------------------------------------------------------------
def test_openapi_v3_index_lists_the_served_group_versions_at_their_own_hashes(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    index = json.loads(via(cached, "/openapi/v3")[2])
    assert set(index["paths"]) == {"apis/ray.io/v1", "apis/events.k8s.io/v1"}
    assert set(index["paths"]) <= set(json.loads(kube(controlplane, "/openapi/v3")[2])["paths"])
    for entry in index["paths"].values():
        code, headers, body = via(cached, entry["serverRelativeURL"])
        digest = entry["serverRelativeURL"].rpartition("hash=")[2]
        assert code == 200
        assert hashlib.sha512(body).hexdigest().upper() == digest
        assert headers["Etag"] == f'"{digest}"'
        assert headers["Cache-Control"] == "public, immutable"


def test_openapi_v3_of_ray_is_kubes_document(controlplane: ControlPlane, cached: Proxy) -> None:
    """Every ray.io/v1 resource is served, so nothing is cut from its document."""
    path = "/openapi/v3/apis/ray.io/v1"
    assert json.loads(via(cached, path)[2]) == json.loads(kube(controlplane, path)[2])


def test_openapi_v3_stale_hash_redirects_to_the_current_one(cached: Proxy) -> None:
    url = json.loads(via(cached, "/openapi/v3")[2])["paths"]["apis/ray.io/v1"]
    conn = http.client.HTTPConnection(urlsplit(cached.base).netloc, timeout=30)
    try:
        conn.request("GET", "/openapi/v3/apis/ray.io/v1?hash=0123ABCD")  # not followed
        resp = conn.getresponse()
        assert resp.status == 301
        assert resp.getheader("Location") == url["serverRelativeURL"]
    finally:
        conn.close()


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_v2_keeps_the_served_paths_and_only_what_they_reference(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    code, headers, body = via(cached, "/openapi/v2", "application/json")
    k_body = kube(controlplane, "/openapi/v2", "application/json")[2]
    doc, full = json.loads(body), json.loads(k_body)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert len(body) < len(k_body) / 3
    prefixes = ("/apis/ray.io/v1/", "/apis/events.k8s.io/v1/")
    groups = ("/apis/ray.io/", "/apis/events.k8s.io/")  # discovery: also served
    assert set(doc["paths"]) == {p for p in full["paths"] if p.startswith(prefixes) or p in groups}
    for section in ("paths", "definitions", "parameters"):
        assert all(full[section][k] == v for k, v in doc[section].items()), section
    refs = set(_refs(doc))
    for ref in refs:
        _, section, name = ref.split("/", 2)
        assert name in doc[section], ref
    referenced = {r.rpartition("/")[2] for r in refs}
    assert set(doc["definitions"]) == referenced & set(full["definitions"])
    assert "io.ray.v1alpha1.RayCluster" not in doc["definitions"]


def test_openapi_v2_asked_in_protobuf_only_is_406_and_json_when_json_is_acceptable(
    cached: Proxy,
) -> None:
    assert via(cached, "/openapi/v2", PROTO_V2)[0] == 406
    code, headers, _ = via(cached, "/openapi/v2", f"{PROTO_V2}, application/json;q=0.5")
    assert (code, headers["Content-Type"]) == (200, "application/json")


def test_openapi_answers_304_to_its_own_etag(cached: Proxy) -> None:
    for path in ("/openapi/v2", "/openapi/v3"):
        etag = via(cached, path)[1]["Etag"]
        assert via(cached, path, If_None_Match=etag)[0] == 304


# ---- Tables --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table_objects(controlplane: ControlPlane, cached: Proxy) -> Iterator[list[dict[str, Any]]]:
    """Ray objects as the operator leaves them (status, labels), one of them being deleted
    (a finalizer holds it, with its deletionTimestamp), present in the proxy's cache."""
    plans = population.plan(18, NAMESPACES, seed=11)
    objects = [population.build(p, controlplane.samples_dir) for p in plans]
    for obj in objects:
        obj["metadata"].setdefault("labels", {})[MARK] = "1"
    objects[0]["metadata"]["finalizers"] = ["watchcache.test/hold"]
    stored = population.populate(controlplane.request, objects)
    controlplane.request("DELETE", population.object_path(stored[0]))
    _wait_for_cache(controlplane, cached)
    yield stored
    release = json.dumps({"metadata": {"finalizers": None}}).encode()
    controlplane.request(
        "PATCH",
        population.object_path(stored[0]),
        release,
        content_type="application/merge-patch+json",
    )
    population.delete_all(controlplane.request, NAMESPACES)


def _wait_for_cache(cp: ControlPlane, proxy: Proxy, timeout: float = 30.0) -> None:
    """Until the proxy lists what kube-apiserver lists (the same versions), bounded."""
    deadline = time.monotonic() + timeout
    for plural in ("rayclusters", "rayjobs", "rayservices"):
        path = f"/apis/ray.io/v1/{plural}?labelSelector={MARK}%3D1"
        want = _versions(kube(cp, path)[2])
        while _versions(via(proxy, path)[2]) != want:
            assert time.monotonic() < deadline, f"the cache did not catch up on {plural}"
            time.sleep(0.05)


def _versions(body: bytes) -> list[tuple[str, str, str]]:
    items = json.loads(body)["items"]
    return [
        (i["metadata"]["namespace"], i["metadata"]["name"], i["metadata"]["resourceVersion"])
        for i in items
    ]


def _ordered(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that remembers its key order, so that equality checks the order too."""
    return {"__keys__": [k for k, _ in pairs], **dict(pairs)}


def normalised_table(body: bytes, is_list: bool) -> dict[str, Any]:
    """A Table with what must differ set aside: a list's resourceVersion and continue token
    (checked for presence), and Age cells."""
    table = json.loads(body, object_pairs_hook=_ordered)
    assert table["kind"] == "Table", body[:300]
    meta = table["metadata"]
    if is_list:
        assert meta["resourceVersion"].isdigit()
        meta["resourceVersion"] = "N"
    if "continue" in meta:
        meta["continue"] = "TOKEN"
    dates = [i for i, c in enumerate(table["columnDefinitions"]) if c["type"] == "date"]
    for row in table["rows"]:
        for i in dates:
            if isinstance(row["cells"][i], str) and row["cells"][i][:1].isdigit():
                row["cells"][i] = "AGE"
    return table


def _table_cases() -> list[Any]:
    """(path, is_list) of the Table requests compared: lists (namespaced, all namespaces by a
    label, selective, paged, empty), every includeObject, and single objects of each kind."""
    ns = NAMESPACES[0]
    api = "/apis/ray.io/v1"
    lists = [
        f"{api}/namespaces/{ns}/rayclusters",
        f"{api}/namespaces/{ns}/rayjobs",
        f"{api}/namespaces/{ns}/rayservices",
        f"{api}/rayclusters?labelSelector={MARK}%3D1",
        f"{api}/rayjobs?labelSelector={MARK}%3D1&limit=500",
        f"{api}/namespaces/{ns}/rayclusters?labelSelector=team%3Dml",
        f"{api}/namespaces/{ns}/rayclusters?includeObject=Object",
        f"{api}/namespaces/{ns}/rayjobs?includeObject=None",
        f"{api}/namespaces/{ns}/rayservices?includeObject=Metadata",
        f"{api}/rayclusters?labelSelector={MARK}%3D1&limit=2",
        f"{api}/namespaces/wc-tables-nothing-here/rayclusters",
    ]
    last_of_kind = {p.kind: p for p in population.plan(18, NAMESPACES, seed=11)}
    gets = [
        f"{api}/namespaces/{p.namespace}/{population.PLURALS[p.kind]}/{p.name}"
        for p in last_of_kind.values()
    ]
    gets += [g + "?includeObject=Object" for g in gets[:1]]
    return [pytest.param(p, True, id=p) for p in lists] + [
        pytest.param(p, False, id=p) for p in gets
    ]


@pytest.mark.parametrize("accept", [TABLE, TABLE_V1BETA1], ids=["v1", "v1beta1"])
@pytest.mark.parametrize(("path", "is_list"), _table_cases())
def test_table_is_kube_apiservers_table(
    controlplane: ControlPlane,
    cached: Proxy,
    table_objects: list[dict[str, Any]],
    path: str,
    is_list: bool,
    accept: str,
) -> None:
    want = kube(controlplane, path, accept)
    got = via(cached, path, accept)
    assert got[0] == want[0] == 200, got[2][:300]
    assert got[1]["Content-Type"] == want[1]["Content-Type"]
    assert normalised_table(got[2], is_list) == normalised_table(want[2], is_list)
    assert got[2].endswith(b"}\n") and want[2].endswith(b"}\n")  # as kube writes JSON


def test_a_pretty_table_is_indented_as_kubes(
    controlplane: ControlPlane, cached: Proxy, table_objects: list[dict[str, Any]]
) -> None:
    path = population.object_path(table_objects[1]) + "?pretty=true"
    got, want = via(cached, path, TABLE), kube(controlplane, path, TABLE)
    assert got[0] == want[0] == 200
    assert got[2].startswith(b'{\n  "kind": "Table",') and not got[2].endswith(b"\n")
    assert want[2].startswith(b'{\n  "kind": "Table",') and not want[2].endswith(b"\n")
    assert normalised_table(got[2], False) == normalised_table(want[2], False)


def test_table_of_a_held_deletion_carries_its_deletion_timestamp(
    controlplane: ControlPlane, cached: Proxy, table_objects: list[dict[str, Any]]
) -> None:
    path = population.object_path(table_objects[0])
    got = json.loads(via(cached, path, TABLE)[2])
    meta = got["rows"][0]["object"]["metadata"]
    assert meta["deletionTimestamp"] and meta["finalizers"] == ["watchcache.test/hold"]
    assert normalised_table(via(cached, path, TABLE)[2], False) == normalised_table(
        kube(controlplane, path, TABLE)[2], False
    )


def test_bad_include_object_is_kubes_400(controlplane: ControlPlane, cached: Proxy) -> None:
    path = f"/apis/ray.io/v1/namespaces/{NAMESPACES[0]}/rayclusters?includeObject=All"
    got, want = via(cached, path, TABLE), kube(controlplane, path, TABLE)
    assert got[0] == want[0] == 400
    assert json.loads(got[2]) == json.loads(want[2])


@pytest.mark.parametrize(
    "accept",
    [
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
        "text/html",
    ],
)
def test_representations_the_cache_does_not_render_are_the_api_servers(
    controlplane: ControlPlane, cached: Proxy, table_objects: list[dict[str, Any]], accept: str
) -> None:
    path = population.object_path(table_objects[1])
    got, want = via(cached, path, accept), kube(controlplane, path, accept)
    assert (got[0], got[1].get("Content-Type")) == (want[0], want[1].get("Content-Type"))
    assert got[2] == want[2]


def test_table_of_a_resource_without_printer_columns_here_is_the_api_servers(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    """events.k8s.io events are printed by kube-apiserver's built-in printer, not a CRD's
    columns: their Tables pass through."""
    path = f"/apis/events.k8s.io/v1/namespaces/{NAMESPACES[0]}/events"
    got, want = via(cached, path, TABLE), kube(controlplane, path, TABLE)
    assert got[0] == want[0] == 200
    assert json.loads(got[2])["columnDefinitions"] == json.loads(want[2])["columnDefinitions"]


def test_table_watch_streams_one_row_tables(
    controlplane: ControlPlane, cached: Proxy, table_objects: list[dict[str, Any]]
) -> None:
    """A Table watch (kubectl get -w) passes through: each event carries a one-row Table."""
    target = table_objects[2]
    ns, name = target["metadata"]["namespace"], target["metadata"]["name"]
    plural = population.PLURALS[target["kind"]]
    listing = json.loads(via(cached, f"/apis/ray.io/v1/namespaces/{ns}/{plural}", TABLE)[2])
    path = (
        f"/apis/ray.io/v1/namespaces/{ns}/{plural}?watch=true&timeoutSeconds=20"
        f"&resourceVersion={listing['metadata']['resourceVersion']}"
        f"&fieldSelector=metadata.name%3D{name}"
    )
    lines: queue.Queue[bytes] = queue.Queue()
    req = urllib.request.Request(cached.base + path, headers={"Accept": TABLE})

    def read() -> None:
        with urllib.request.urlopen(req, timeout=30) as resp:
            for line in resp:
                lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    patch = json.dumps({"metadata": {"labels": {"watched": "yes"}}}).encode()
    deadline = time.monotonic() + 20
    event: dict[str, Any] | None = None
    code, _ = controlplane.request(
        "PATCH",
        population.object_path(target),
        patch,
        content_type="application/merge-patch+json",
    )
    assert code == 200
    while event is None:
        left = deadline - time.monotonic()
        assert left > 0, "no MODIFIED event within 20 s"
        try:
            candidate = json.loads(lines.get(timeout=left))
        except queue.Empty:
            continue
        if candidate["type"] == "MODIFIED":
            event = candidate
    table = event["object"]
    assert (table["kind"], len(table["rows"])) == ("Table", 1)
    assert table["rows"][0]["cells"][0] == name
    assert table["rows"][0]["object"]["metadata"]["labels"]["watched"] == "yes"
