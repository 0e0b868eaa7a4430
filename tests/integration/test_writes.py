"""Writes through watchcache (issue 5): the API server's answer, unchanged, and read-your-writes.

Each write is sent twice: through the cached proxy into one namespace, and straight to
kube-apiserver into another, to objects that start the same. The two answers must carry the
same status code, the same Status reason and causes, and the same resulting object, once
what must differ is set aside (namespace, uid, resourceVersion, timestamps, generated
names). After each write through the proxy, a read through the proxy, made at once and never
polled, must show it: that is the write path's read-your-writes promise.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml
from differential import Answer, answer, diff_objects, status_summary
from support import population
from support.controlplane import ControlPlane

if TYPE_CHECKING:
    from conftest import Proxy

API = "/apis/ray.io/v1"
VIA_PROXY, DIRECT = "wc-writes-proxy", "wc-writes-kube"
CLIENT_NS = "wc-writes-client"
JSON = "application/json"
YAML = "application/yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
STRATEGIC = "application/strategic-merge-patch+json"
UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_BODY = 3 * 1024 * 1024

# A body, or how to make it for one namespace (a PUT carries that side's resourceVersion).
BodyFor = bytes | Callable[[str], bytes] | None


def collection(ns: str) -> str:
    return f"{API}/namespaces/{ns}/rayclusters"


@dataclass
class Env:
    """The two sides of every differential write."""

    proxy: Proxy
    cp: ControlPlane

    def cluster(self, name: str, **labels: str) -> dict[str, Any]:
        """A RayCluster from the operator's sample, without a namespace: the path gives it."""
        obj = population.raycluster(
            name, VIA_PROXY, labels, self.cp.samples_dir, variant=1, state=None
        )
        del obj["metadata"]["namespace"]
        return obj

    def send(
        self, ns: str, method: str, tail: str, body: BodyFor = None, content_type: str = JSON
    ) -> Answer:
        """One write into ``ns``: through the proxy for VIA_PROXY, else directly."""
        data = body(ns) if callable(body) else body
        path = collection(ns) + tail
        if ns == DIRECT:
            return answer(*self.cp.request(method, path, data, content_type=content_type))
        headers = {"Content-Type": content_type} if data is not None else {}
        code, _, raw = self.proxy.request(method, path, data, headers)
        return answer(code, raw)

    def both(
        self, method: str, tail: str, body: BodyFor = None, content_type: str = JSON
    ) -> tuple[Answer, Answer]:
        """The same write on both sides; returns (through the proxy, direct) after checking
        that they answered alike. The proxy's goes last, so that a read made right after
        ``both`` returns follows it at once."""
        want = self.send(DIRECT, method, tail, body, content_type)
        got = self.send(VIA_PROXY, method, tail, body, content_type)
        assert_same_answer(f"{method} {tail} ({content_type})", want, got)
        return got, want

    def seed(self, obj: dict[str, Any]) -> None:
        """Creates ``obj`` on both sides, directly."""
        for ns in (VIA_PROXY, DIRECT):
            code, raw = self.cp.request("POST", collection(ns), obj)
            assert code == 201, raw[:300]

    def current(self, ns: str, name: str) -> dict[str, Any]:
        code, raw = self.cp.request("GET", f"{collection(ns)}/{name}")
        assert code == 200, raw[:300]
        return json.loads(raw)

    def read(self, path: str) -> Answer:
        """A read through the proxy, at once: no retry, no poll."""
        code, _, raw = self.proxy.request("GET", path)
        return answer(code, raw)


@pytest.fixture(scope="module")
def env(controlplane: ControlPlane, cached: Proxy) -> Iterator[Env]:
    population.ensure_namespaces(controlplane.request, (VIA_PROXY, DIRECT, CLIENT_NS))
    yield Env(cached, controlplane)
    population.delete_all(controlplane.request, (VIA_PROXY, DIRECT, CLIENT_NS))


# ---- comparing answers -------------------------------------------------------------------------


def normalized(body: Any) -> Any:
    """What must be the same on both sides: the namespace, uids, resourceVersions, times and
    generated name suffixes set aside."""
    text = json.dumps(body).replace(VIA_PROXY, "<ns>").replace(DIRECT, "<ns>")
    out = json.loads(UID.sub("<uid>", text))
    for obj in out.get("items") or [out] if isinstance(out, dict) else []:
        meta = obj.get("metadata") or {}
        for name in ("resourceVersion", "creationTimestamp", "uid"):
            meta.pop(name, None)
        if "deletionTimestamp" in meta:
            meta["deletionTimestamp"] = "<set>"
        for entry in meta.get("managedFields") or []:
            entry.pop("time", None)
        prefix = meta.get("generateName")
        if prefix and str(meta.get("name", "")).startswith(prefix):
            meta["name"] = prefix + "<generated>"
    if isinstance(out, dict) and "items" in out:
        out.get("metadata", {}).pop("resourceVersion", None)
        out["items"].sort(key=lambda item: item["metadata"]["name"])
    return out


def status_text(status: dict[str, Any]) -> str:
    """A Status, normalized, with the numbers in its message (resourceVersions) set aside."""
    return re.sub(r"\d+", "N", json.dumps(normalized(status), sort_keys=True))


def assert_same_answer(where: str, want: Answer, got: Answer) -> None:
    assert got.code == want.code, f"{where}: kube {want.code}, proxy {got.code}: {got.raw[:400]!r}"
    if isinstance(want.body, dict) and want.body.get("kind") == "Status":
        assert isinstance(got.body, dict) and got.body.get("kind") == "Status", got.raw[:400]
        assert status_summary(got.body) == status_summary(want.body), (where, got.body, want.body)
        assert status_text(got.body) == status_text(want.body), where
        return
    assert want.body is not None, f"{where}: kube answered {want.code} without JSON"
    assert normalized(got.body) == normalized(want.body), (
        f"{where}: {diff_objects(normalized(want.body), normalized(got.body))}"
    )


# ---- read-your-writes --------------------------------------------------------------------------


def assert_reads_show(env: Env, written: Answer) -> None:
    """A GET and a LIST through the proxy, made at once, show the object as written."""
    obj = written.body
    path = f"{collection(VIA_PROXY)}/{obj['metadata']['name']}"
    got = env.read(path)
    assert got.code == 200, got.raw[:300]
    assert got.body == obj, diff_objects(obj, got.body)
    listed = env.read(collection(VIA_PROXY))
    by_name = {i["metadata"]["name"]: i for i in listed.body["items"]}
    assert by_name.get(obj["metadata"]["name"]) == obj, "the list does not show the write"
    assert listed.rv >= written.rv


def assert_reads_show_gone(env: Env, name: str) -> None:
    got = env.read(f"{collection(VIA_PROXY)}/{name}")
    assert got.code == 404, f"still readable right after its delete: {got.raw[:200]!r}"
    listed = env.read(collection(VIA_PROXY))
    assert name not in [i["metadata"]["name"] for i in listed.body["items"]]


# ---- create ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [JSON, YAML])
def test_create_answers_as_kube_does_and_is_read_back_at_once(env: Env, content_type: str) -> None:
    obj = env.cluster(f"create-{content_type.split('/')[1]}", team="ml")
    dump = json.dumps if content_type == JSON else yaml.safe_dump
    got, _ = env.both("POST", "", dump(obj).encode(), content_type)
    assert got.code == 201
    assert_reads_show(env, got)


def test_create_with_generate_name_answers_as_kube_does_and_is_read_back_at_once(
    env: Env,
) -> None:
    obj = env.cluster("unused")
    obj["metadata"] = {"generateName": "gen-", "labels": {"made": "generated"}}
    got, _ = env.both("POST", "", json.dumps(obj).encode())
    assert got.code == 201 and got.body["metadata"]["name"].startswith("gen-")
    assert_reads_show(env, got)


def test_create_of_an_existing_name_is_409_already_exists(env: Env) -> None:
    obj = env.cluster("create-twice")
    env.seed(obj)
    got, _ = env.both("POST", "", json.dumps(obj).encode())
    assert (got.code, got.body["reason"]) == (409, "AlreadyExists")


# ---- update ------------------------------------------------------------------------------------


def test_put_update_answers_as_kube_does_and_is_read_back_at_once(env: Env) -> None:
    env.seed(env.cluster("put-update", team="ml"))

    def updated(ns: str) -> bytes:
        obj = env.current(ns, "put-update")
        obj["metadata"]["labels"]["team"] = "data"
        obj["spec"]["workerGroupSpecs"][0]["replicas"] = 3
        return json.dumps(obj).encode()

    got, _ = env.both("PUT", "/put-update", updated)
    assert got.code == 200 and got.body["metadata"]["generation"] == 2
    assert_reads_show(env, got)
    selected = env.read(collection(VIA_PROXY) + "?labelSelector=team%3Ddata")
    assert "put-update" in [i["metadata"]["name"] for i in selected.body["items"]]


def test_put_status_answers_as_kube_does_and_is_read_back_at_once(env: Env) -> None:
    env.seed(env.cluster("put-status"))

    def with_status(ns: str) -> bytes:
        obj = env.current(ns, "put-status")
        obj["status"] = {"state": "ready", "readyWorkerReplicas": 1, "desiredWorkerReplicas": 1}
        return json.dumps(obj).encode()

    got, _ = env.both("PUT", "/put-status/status", with_status)
    assert got.code == 200 and got.body["status"]["state"] == "ready"
    assert_reads_show(env, got)
    status = env.read(f"{collection(VIA_PROXY)}/put-status/status")
    assert status.body == got.body


def test_put_with_a_stale_resource_version_is_409_conflict(env: Env) -> None:
    env.seed(env.cluster("put-stale"))
    stale = {ns: env.current(ns, "put-stale") for ns in (VIA_PROXY, DIRECT)}
    env.both("PATCH", "/put-stale", b'{"metadata":{"labels":{"step":"1"}}}', MERGE)

    def stale_update(ns: str) -> bytes:
        obj = copy.deepcopy(stale[ns])
        obj["metadata"].setdefault("labels", {})["step"] = "2"
        return json.dumps(obj).encode()

    got, _ = env.both("PUT", "/put-stale", stale_update)
    assert (got.code, got.body["reason"]) == (409, "Conflict")
    assert env.read(f"{collection(VIA_PROXY)}/put-stale").body["metadata"]["labels"]["step"] == "1"


# ---- patch -------------------------------------------------------------------------------------

PATCHES = {
    "merge": (MERGE, "", {"metadata": {"labels": {"patched": "merge"}}, "spec": {"suspend": True}}),
    "json-patch": (
        JSON_PATCH,
        "",
        [
            {"op": "add", "path": "/metadata/labels/patched", "value": "json"},
            {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2},
        ],
    ),
    "apply": (
        APPLY,
        "?fieldManager=wc-test&force=true",
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": "{name}", "labels": {"patched": "apply"}},
            "spec": {"suspend": True},
        },
    ),
}


@pytest.mark.parametrize("kind", PATCHES)
def test_patch_answers_as_kube_does_and_is_read_back_at_once(env: Env, kind: str) -> None:
    name = f"patch-{kind}"
    env.seed(env.cluster(name, team="ml"))
    content_type, query, patch = PATCHES[kind]
    body = json.dumps(patch).replace("{name}", name).encode()
    if content_type == APPLY:
        body = yaml.safe_dump(json.loads(body)).encode()
    got, _ = env.both("PATCH", f"/{name}{query}", body, content_type)
    assert got.code == 200 and got.body["metadata"]["labels"]["patched"] in kind
    assert_reads_show(env, got)


def test_server_side_apply_creates_a_missing_object_and_records_its_field_manager(
    env: Env,
) -> None:
    obj = env.cluster("apply-create", team="ml")
    obj["metadata"]["name"] = "apply-create"
    query = "?fieldManager=wc-test"
    got, _ = env.both("PATCH", f"/apply-create{query}", yaml.safe_dump(obj).encode(), APPLY)
    assert got.code == 201
    managers = [(m["manager"], m["operation"]) for m in got.body["metadata"]["managedFields"]]
    assert managers == [("wc-test", "Apply")]
    assert_reads_show(env, got)


def test_server_side_apply_conflict_without_force_is_409(env: Env) -> None:
    env.seed(env.cluster("apply-conflict", team="ml"))
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "apply-conflict", "labels": {"team": "other"}},
    }
    query = "?fieldManager=wc-test"
    got, _ = env.both("PATCH", f"/apply-conflict{query}", yaml.safe_dump(body).encode(), APPLY)
    assert (got.code, got.body["reason"]) == (409, "Conflict")


def test_strategic_merge_patch_of_a_custom_resource_is_refused_as_kube_refuses_it(
    env: Env,
) -> None:
    env.seed(env.cluster("patch-strategic"))
    got, _ = env.both("PATCH", "/patch-strategic", b'{"spec":{"suspend":true}}', STRATEGIC)
    assert got.code == 415


# ---- delete ------------------------------------------------------------------------------------


def test_delete_with_delete_options_body_answers_as_kube_does_and_is_gone_at_once(
    env: Env,
) -> None:
    env.seed(env.cluster("delete-body"))
    options = {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "propagationPolicy": "Background",
        "gracePeriodSeconds": 0,
    }
    got, _ = env.both("DELETE", "/delete-body", json.dumps(options).encode())
    assert got.code == 200
    assert_reads_show_gone(env, "delete-body")


def test_delete_with_grace_period_query_is_gone_at_once(env: Env) -> None:
    env.seed(env.cluster("delete-query"))
    got, _ = env.both("DELETE", "/delete-query?gracePeriodSeconds=0&propagationPolicy=Background")
    assert got.code == 200
    assert_reads_show_gone(env, "delete-query")


def test_foreground_delete_shows_the_deletion_timestamp_at_once(env: Env) -> None:
    """With no garbage collector running, a foreground delete leaves the object, finalized."""
    env.seed(env.cluster("delete-foreground"))
    got, _ = env.both("DELETE", "/delete-foreground?propagationPolicy=Foreground")
    assert got.code == 200
    assert got.body["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert_reads_show(env, got)
    for ns in (VIA_PROXY, DIRECT):
        unblock = b'{"metadata":{"finalizers":null}}'
        env.send(ns, "PATCH", "/delete-foreground", unblock, MERGE)
    assert_reads_show_gone(env, "delete-foreground")


@pytest.mark.parametrize("field", ["uid", "resourceVersion"])
def test_delete_with_a_failed_precondition_is_409_and_deletes_nothing(env: Env, field: str) -> None:
    name = f"delete-precondition-{field.lower()}"
    env.seed(env.cluster(name))
    wrong = {"uid": "00000000-0000-0000-0000-000000000000", "resourceVersion": "1"}[field]
    options = json.dumps({"preconditions": {field: wrong}}).encode()
    got, _ = env.both("DELETE", f"/{name}", options)
    assert (got.code, got.body["reason"]) == (409, "Conflict")
    assert env.read(f"{collection(VIA_PROXY)}/{name}").code == 200


def test_delete_with_a_matching_precondition_deletes(env: Env) -> None:
    env.seed(env.cluster("delete-precondition-ok"))

    def options(ns: str) -> bytes:
        uid = env.current(ns, "delete-precondition-ok")["metadata"]["uid"]
        return json.dumps({"preconditions": {"uid": uid}}).encode()

    got, _ = env.both("DELETE", "/delete-precondition-ok", options)
    assert got.code == 200
    assert_reads_show_gone(env, "delete-precondition-ok")


def test_delete_collection_with_label_selector_deletes_only_the_selected(env: Env) -> None:
    for i in range(3):
        env.seed(env.cluster(f"sweep-{i}", sweep="yes"))
    env.seed(env.cluster("sweep-kept", sweep="no"))
    got, _ = env.both("DELETE", "?labelSelector=sweep%3Dyes")
    assert got.code == 200
    assert sorted(i["metadata"]["name"] for i in got.body["items"]) == [
        "sweep-0",
        "sweep-1",
        "sweep-2",
    ]
    selected = env.read(collection(VIA_PROXY) + "?labelSelector=sweep")
    assert [i["metadata"]["name"] for i in selected.body["items"]] == ["sweep-kept"]
    for i in range(3):
        assert env.read(f"{collection(VIA_PROXY)}/sweep-{i}").code == 404


# ---- refusals ----------------------------------------------------------------------------------


def test_object_the_crd_schema_rejects_is_422_invalid_with_kubes_causes(env: Env) -> None:
    obj = env.cluster("invalid")
    del obj["spec"]["headGroupSpec"]
    obj["spec"]["enableInTreeAutoscaling"] = "yes"
    got, _ = env.both("POST", "", json.dumps(obj).encode())
    assert (got.code, got.body["reason"]) == (422, "Invalid")
    assert got.body["details"]["causes"]


def test_patch_the_crd_schema_rejects_is_422_and_changes_nothing(env: Env) -> None:
    env.seed(env.cluster("invalid-patch"))
    patch = b'{"spec":{"workerGroupSpecs":[{"groupName":"g","replicas":"three"}]}}'
    got, _ = env.both("PATCH", "/invalid-patch", patch, MERGE)
    assert (got.code, got.body["reason"]) == (422, "Invalid")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_strict_field_validation_refuses_an_unknown_field_as_kube_does(
    env: Env, method: str
) -> None:
    obj = env.cluster("strict")
    obj["spec"]["bogusField"] = 1
    if method == "PATCH":
        env.seed(env.cluster("strict"))
        got, _ = env.both("PATCH", "/strict?fieldValidation=Strict", b'{"spec":{"bogus":1}}', MERGE)
    else:
        got, _ = env.both("POST", "?fieldValidation=Strict", json.dumps(obj).encode())
    assert got.code in (400, 422) and "bogus" in got.body["message"]


def test_dry_run_answers_as_kube_does_and_writes_nothing(env: Env) -> None:
    obj = env.cluster("dry-run", team="ml")
    got, _ = env.both("POST", "?dryRun=All", json.dumps(obj).encode())
    assert got.code == 201
    assert env.read(f"{collection(VIA_PROXY)}/dry-run").code == 404
    assert env.cp.request("GET", f"{collection(VIA_PROXY)}/dry-run")[0] == 404

    env.seed(obj)
    patch = b'{"metadata":{"labels":{"team":"dry"}}}'
    got, _ = env.both("PATCH", "/dry-run?dryRun=All", patch, MERGE)
    assert got.code == 200 and got.body["metadata"]["labels"]["team"] == "dry"
    got, _ = env.both("DELETE", "/dry-run?dryRun=All")
    assert got.code == 200
    stored = env.current(VIA_PROXY, "dry-run")
    assert stored["metadata"]["labels"]["team"] == "ml"
    assert env.read(f"{collection(VIA_PROXY)}/dry-run").body == stored


@pytest.mark.parametrize(
    ("method", "tail", "body", "content_type"),
    [
        ("PUT", "/missing", None, JSON),
        ("PATCH", "/missing", b'{"metadata":{"labels":{"a":"b"}}}', MERGE),
        ("DELETE", "/missing", None, JSON),
        ("PUT", "/missing/status", None, JSON),
    ],
)
def test_write_to_a_missing_object_is_404_as_kube_answers(
    env: Env, method: str, tail: str, body: bytes | None, content_type: str
) -> None:
    if method == "PUT":
        obj = env.cluster("missing")

        def body_for(ns: str) -> bytes:
            obj["metadata"]["resourceVersion"] = "1"
            return json.dumps(obj).encode()

        got, _ = env.both(method, tail, body_for, content_type)
    else:
        got, _ = env.both(method, tail, body, content_type)
    assert (got.code, got.body["reason"]) == (404, "NotFound")


# ---- limits ------------------------------------------------------------------------------------


def _oversized(env: Env) -> bytes:
    obj = env.cluster("too-large")
    obj["metadata"]["annotations"] = {"padding": "x" * (MAX_BODY + 1024)}
    return json.dumps(obj).encode()


def _send_oversized(proxy: Proxy, body: bytes, *, chunked: bool) -> tuple[int, bytes]:
    """POSTs ``body`` while reading the answer, as HTTP clients such as Go's do: the proxy may
    answer 413 and close before the whole body is sent, which breaks the rest of the send."""
    url = urlsplit(proxy.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", collection(VIA_PROXY))
    conn.putheader("Content-Type", JSON)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    assert conn.sock is not None
    sock = conn.sock

    def send() -> None:
        with contextlib.suppress(OSError):
            for i in range(0, len(body), 65536):
                piece = body[i : i + 65536]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
        sender.join(30)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_three_mebibytes_is_413_and_the_proxy_stays_healthy(
    env: Env, chunked: bool
) -> None:
    code, raw = _send_oversized(env.proxy, _oversized(env), chunked=chunked)
    assert code == 413
    status = json.loads(raw)
    assert (status["kind"], status["code"], status["reason"]) == (
        "Status",
        413,
        "RequestEntityTooLarge",
    )
    assert env.read(f"{collection(VIA_PROXY)}/too-large").code == 404
    assert env.proxy.request("GET", "/healthz")[0] == 200
    name = f"after-413-{'chunked' if chunked else 'length'}"
    code, _, raw = env.proxy.request(
        "POST",
        collection(VIA_PROXY),
        json.dumps(env.cluster(name)).encode(),
        {"Content-Type": JSON},
    )
    assert code == 201, raw[:300]


def test_body_just_under_the_limit_is_passed_on(env: Env) -> None:
    """kube-apiserver itself judges a body under 3 MiB (here: too large an annotation)."""
    obj = env.cluster("under-limit")
    obj["metadata"]["annotations"] = {"padding": "x" * (MAX_BODY - 4096)}
    got, _ = env.both("POST", "", json.dumps(obj).encode())
    assert got.code == 422


# ---- the Python kubernetes client ------------------------------------------------------------


def test_python_client_crud_status_patches_and_selectors_through_the_proxy(env: Env) -> None:
    from kubernetes import client

    config = client.Configuration(host=env.proxy.base)
    with client.ApiClient(config) as api_client:
        api = client.CustomObjectsApi(api_client)
        where = {
            "group": "ray.io",
            "version": "v1",
            "namespace": CLIENT_NS,
            "plural": "rayclusters",
        }
        body = env.cluster("py-client", team="ml")
        created = api.create_namespaced_custom_object(body=body, **where)
        assert created["metadata"]["namespace"] == CLIENT_NS
        got = api.get_namespaced_custom_object(name="py-client", **where)
        assert got == created

        got["spec"]["workerGroupSpecs"][0]["replicas"] = 2
        replaced = api.replace_namespaced_custom_object(name="py-client", body=got, **where)
        assert api.get_namespaced_custom_object(name="py-client", **where) == replaced

        merged = api.patch_namespaced_custom_object(
            name="py-client", body={"metadata": {"labels": {"env": "prod"}}}, **where
        )
        assert merged["metadata"]["labels"] == {"team": "ml", "env": "prod"}
        json_patched = api.patch_namespaced_custom_object(
            name="py-client",
            body=[{"op": "replace", "path": "/metadata/labels/env", "value": "dev"}],
            _content_type=JSON_PATCH,
            **where,
        )
        assert json_patched["metadata"]["labels"]["env"] == "dev"
        applied = api.patch_namespaced_custom_object(
            name="py-client",
            body={
                "apiVersion": "ray.io/v1",
                "kind": "RayCluster",
                "metadata": {"name": "py-client", "labels": {"tier": "gold"}},
            },
            field_manager="py-test",
            force=True,
            _content_type=APPLY,
            **where,
        )
        assert applied["metadata"]["labels"]["tier"] == "gold"
        assert api.get_namespaced_custom_object(name="py-client", **where) == applied

        status = api.patch_namespaced_custom_object_status(
            name="py-client", body={"status": {"state": "ready"}}, **where
        )
        assert status["status"]["state"] == "ready"
        assert api.get_namespaced_custom_object_status(name="py-client", **where) == status

        api.create_namespaced_custom_object(body=env.cluster("py-other", team="data"), **where)
        listed = api.list_namespaced_custom_object(label_selector="team=ml", **where)
        assert [i["metadata"]["name"] for i in listed["items"]] == ["py-client"]

        api.delete_namespaced_custom_object(
            name="py-client", body=client.V1DeleteOptions(grace_period_seconds=0), **where
        )
        with pytest.raises(client.ApiException) as gone:
            api.get_namespaced_custom_object(name="py-client", **where)
        assert gone.value.status == 404
        assert json.loads(gone.value.body)["reason"] == "NotFound"


# ---- headers ---------------------------------------------------------------------------------


def test_kubes_warning_headers_come_back_with_the_answer(env: Env) -> None:
    """kube-apiserver warns of an unknown field (fieldValidation=Warn) in a header."""
    obj = env.cluster("warned")
    obj["spec"]["bogusField"] = 1
    body = json.dumps(obj).encode()
    warnings = {}
    for ns in (DIRECT, VIA_PROXY):
        base = env.cp.server if ns == DIRECT else env.proxy.base
        req = urllib.request.Request(base + collection(ns), data=body, method="POST")
        req.add_header("Content-Type", JSON)
        if ns == DIRECT:
            req.add_header("Authorization", f"Bearer {env.cp.admin.token}")
        context = env.cp.ssl_context() if ns == DIRECT else None
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            assert resp.status == 201
            warnings[ns] = resp.headers.get_all("Warning")
    assert warnings[VIA_PROXY] == warnings[DIRECT]
    assert "bogusField" in warnings[DIRECT][0]


# ---- read-your-writes with a cache per namespace ---------------------------------------------

QUIET = "wc-writes-quiet"


def held_too_long(proxy: Proxy, ns: str) -> bool:
    """Whether watchcache logged that a write's answer waited out its bound for the cache."""
    return f"POST {collection(ns)}: the cache did not show the write" in proxy.log()


@pytest.fixture(scope="module")
def per_namespace(env: Env, proxy_factory: Callable[..., Proxy]) -> Proxy:
    """watchcache caching two namespaces (a watch each), one of them quiet."""
    population.ensure_namespaces(env.cp.request, [QUIET])
    return proxy_factory("--namespace", VIA_PROXY, "--namespace", QUIET)


def test_a_write_waits_only_for_its_own_namespaces_watch(env: Env, per_namespace: Proxy) -> None:
    """The quiet namespace's watch has nothing to tell: the write must not wait for it."""
    obj = env.cluster("per-namespace")
    code, _, raw = per_namespace.request(
        "POST", collection(VIA_PROXY), json.dumps(obj).encode(), {"Content-Type": JSON}
    )
    assert code == 201, raw[:300]
    got = per_namespace.request("GET", f"{collection(VIA_PROXY)}/per-namespace")
    assert json.loads(got[2]) == json.loads(raw)
    assert not held_too_long(per_namespace, VIA_PROXY)


def test_a_write_to_a_namespace_not_cached_is_not_held(env: Env, per_namespace: Proxy) -> None:
    code, _, raw = per_namespace.request(
        "POST",
        collection(DIRECT),
        json.dumps(env.cluster("uncached")).encode(),
        {"Content-Type": JSON},
    )
    assert code == 201, raw[:300]
    assert not held_too_long(per_namespace, DIRECT)
