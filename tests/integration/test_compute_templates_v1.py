"""KubeRay's v1 compute-template protocol through watchcache, on the real kube-apiserver.

The cases are those of KubeRay's own end-to-end tests of its APIServer (create, get, list,
delete, valid and not), with the answers KubeRay's sources give: protobuf JSON in
lowerCamelCase with empty fields left out, and errors as its grpc-gateway renders a gRPC
status, ``{"code", "message"}`` under the HTTP status of that code, the message worded as
KubeRay's handlers word it. Templates are ConfigMaps in KubeRay's own format, checked on
kube-apiserver directly, both ways. Then three failures that were 500s or wrong 400s: a
malformed template named by a create, a template write while kube-apiserver is unreachable,
and Ray resource bodies kube-apiserver accepts that the template middleware refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from faultproxy import FaultProxy
from support import population
from support.controlplane import ControlPlane

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-templates-v1"
EMPTY_NS = "wc-templates-v1-empty"  # holds no template, ever
TEMPLATES = f"/apis/v1/namespaces/{NS}/compute_templates"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
LABEL = "ray.io/config-type=compute-template"

EMPTY_NAME = "Compute template name is empty. Please specify a valid value."
CREATE_CHECK = "Validate compute template runtime request failed."
GET_WRAP = "Get compute template failed."  # how KubeRay's get and delete wrap a NotFound
DELETE_WRAP = "Get compute template failure"


def invalid_create(message: str) -> dict[str, Any]:
    """KubeRay's answer to a create its validation refuses (HTTP 400)."""
    return {"code": 3, "message": f"{message}: {CREATE_CHECK}: Invalid input error: {message}"}


def not_found(name: str, wrap: str) -> dict[str, Any]:
    external = f"Compute template {name} not found"
    message = f'{external}: {wrap}: NotFoundError: {external}: configmaps "{name}" not found'
    return {"code": 5, "message": message}


EMPTY_NAME_ERROR = {"code": 3, "message": f"{EMPTY_NAME}: Invalid input error: {EMPTY_NAME}"}
ROUTE_NOT_FOUND = {"code": 5, "message": "Not Found"}
METHOD_NOT_ALLOWED = {"code": 12, "message": "Method Not Allowed"}


def call(
    proxy: Proxy,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request; a dict body is sent as KubeRay's Go client sends it (indented JSON)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body, indent=4).encode()
    sent = {"Accept": "application/json"}
    if data is not None:
        sent["Content-Type"] = "application/json"
    code, got_headers, raw = proxy.request(method, path, data, {**sent, **(headers or {})})
    assert got_headers.get("Content-Type") == "application/json", (code, raw[:300])
    return code, got_headers, json.loads(raw)


def kube(cp: ControlPlane, method: str, path: str, body: object = None) -> dict[str, Any]:
    code, raw = cp.request(method, path, body)
    assert code in (200, 201), f"{method} {path}: {code} {raw[:300]!r}"
    return json.loads(raw)


@pytest.fixture(scope="module")
def namespace(controlplane: ControlPlane) -> Iterator[str]:
    """The test namespace, with no template in it at the start nor at the end."""
    population.ensure_namespaces(controlplane.request, [NS, EMPTY_NS])
    clean = f"{CONFIGMAPS}?labelSelector={LABEL}"
    kube(controlplane, "DELETE", clean)
    yield NS
    kube(controlplane, "DELETE", clean)
    population.delete_all(controlplane.request, [NS])


def created(proxy: Proxy, body: dict[str, Any]) -> dict[str, Any]:
    code, _, answer = call(proxy, "POST", TEMPLATES, body)
    assert code == 200, answer
    return answer


def created_if_missing(proxy: Proxy, name: str) -> None:
    if call(proxy, "GET", f"{TEMPLATES}/{name}")[0] == 404:
        created(proxy, {"name": name, "namespace": NS, "cpu": 2, "memory": 4})


def poll_get(proxy: Proxy, name: str) -> tuple[int, dict[str, str], Any]:
    """GET of a template made directly on kube-apiserver, which the cache learns by watch."""
    deadline = time.monotonic() + 15
    while True:
        answer = call(proxy, "GET", f"{TEMPLATES}/{name}")
        if answer[0] != 404 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


# ---- create ----------------------------------------------------------------------------------
def test_create_answers_the_template_in_camel_case_with_the_default_memory_unit(
    cached: Proxy, namespace: str, controlplane: ControlPlane
) -> None:
    # As KubeRay's Go client sends it: proto field names, the empty ones left out.
    answer = created(cached, {"name": "basic", "namespace": NS, "cpu": 2, "memory": 4})
    assert answer == {"name": "basic", "namespace": NS, "cpu": 2, "memory": 4, "memoryUnit": "Gi"}
    cm = kube(controlplane, "GET", f"{CONFIGMAPS}/basic")
    assert cm["metadata"]["labels"] == {
        "ray.io/config-type": "compute-template",
        "ray.io/compute-template": "basic",
    }
    assert cm["data"] == {
        "name": "basic",
        "namespace": NS,
        "cpu": "2",
        "memory": "4",
        "memory_unit": "Gi",
        "gpu": "0",
        "gpu_accelerator": "",
        "extended_resources": "null",
    }


FULL = {
    "name": "full",
    "namespace": NS,
    "cpu": 8,
    "memory": 2048,
    "memoryUnit": "Mi",
    "gpu": 2,
    "gpuAccelerator": "nvidia.com/a100",
    "extendedResources": {"vpc.amazonaws.com/efa": 4, "example.com/fpga": 1},
    "tolerations": [
        {"key": "ray.io/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    ],
}


@pytest.mark.parametrize("casing", ["camel", "snake"])
def test_create_accepts_either_casing_and_answers_camel_case(
    cached: Proxy, namespace: str, controlplane: ControlPlane, casing: str
) -> None:
    name = f"full-{casing}"
    body = {**FULL, "name": name}
    if casing == "snake":
        for camel, snake in (
            ("memoryUnit", "memory_unit"),
            ("gpuAccelerator", "gpu_accelerator"),
            ("extendedResources", "extended_resources"),
        ):
            body[snake] = body.pop(camel)
    answer = created(cached, body)
    assert answer == {
        "name": name,
        "namespace": NS,
        "cpu": 8,
        "memory": 2048,
        "gpu": 2,
        "gpuAccelerator": "nvidia.com/a100",
        "tolerations": FULL["tolerations"],
        "extendedResources": {"example.com/fpga": 1, "vpc.amazonaws.com/efa": 4},
        "memoryUnit": "Mi",
    }
    assert list(answer) == [
        "name", "namespace", "cpu", "memory", "gpu", "gpuAccelerator",
        "tolerations", "extendedResources", "memoryUnit",
    ]  # fmt: skip
    data = kube(controlplane, "GET", f"{CONFIGMAPS}/{name}")["data"]
    assert data["extended_resources"] == '{"example.com/fpga":1,"vpc.amazonaws.com/efa":4}'
    assert json.loads(data["tolerations"]) == FULL["tolerations"]


def test_create_leaves_out_an_empty_extended_resources_and_ignores_unknown_fields(
    cached: Proxy, namespace: str
) -> None:
    answer = created(
        cached,
        {
            "name": "sparse",
            "namespace": NS,
            "cpu": "1",  # protojson takes a uint32 in a string too
            "memory": 1.0,
            "gpu": 0,
            "extendedResources": {},
            "tolerations": [],
            "notAField": {"anything": [1, 2]},
        },
    )
    assert answer == {"name": "sparse", "namespace": NS, "cpu": 1, "memory": 1, "memoryUnit": "Gi"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"namespace": NS, "cpu": 2, "memory": 4, "gpu": 0}, EMPTY_NAME),
        ({"name": "", "namespace": NS, "cpu": 2, "memory": 4}, EMPTY_NAME),
        (
            {"name": "other-ns", "namespace": "another", "cpu": 2, "memory": 4},
            "The namespace in the request is different from the namespace defined in the "
            "compute template.",
        ),
        (
            {"name": "no-ns", "cpu": 2, "memory": 4},
            "The namespace in the request is different from the namespace defined in the "
            "compute template.",
        ),
        (
            {"name": "zero-cpu", "namespace": NS, "cpu": 0, "memory": 4},
            "Cpu amount is zero. Please specify a valid value.",
        ),
        (
            {"name": "zero-memory", "namespace": NS, "cpu": 2, "memory": 0},
            "Memory amount is zero. Please specify a valid value.",
        ),
        (
            {"name": "basic", "namespace": NS, "cpu": 2, "memory": 0},  # a duplicate, invalid
            "Memory amount is zero. Please specify a valid value.",
        ),
    ],
)
def test_invalid_create_is_400_invalid_argument_in_kuberays_words(
    cached: Proxy,
    namespace: str,
    controlplane: ControlPlane,
    body: dict[str, Any],
    message: str,
) -> None:
    created_if_missing(cached, "basic")
    code, _, answer = call(cached, "POST", TEMPLATES, body)
    assert (code, answer) == (400, invalid_create(message))
    if body.get("name") not in (None, "", "basic"):
        assert controlplane.request("GET", f"{CONFIGMAPS}/{body['name']}")[0] == 404


def test_duplicate_create_is_409_already_exists(cached: Proxy, namespace: str) -> None:
    body = {"name": "twice", "namespace": NS, "cpu": 2, "memory": 4}
    created(cached, body)
    code, _, answer = call(cached, "POST", TEMPLATES, body)
    external = f"Compute template with name twice already exists in namespace {NS}"
    message = f"{external}: Create compute template failed.: Already exist error: {external}"
    assert (code, answer) == (409, {"code": 6, "message": message})


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "bad", "namespace": "' + NS.encode() + b'", "cpu": 2.5, "memory": 4}',
        b'{"name": "bad", "namespace": "' + NS.encode() + b'", "cpu": -1, "memory": 4}',
        b'{"name": "bad", "name": "again", "cpu": 1, "memory": 4}',
        b'{"name": "bad", "gpu_accelerator": "a", "gpuAccelerator": "b"}',
        b'{"name": 7}',
        b'{"name": "bad", "tolerations": {"key": "k"}}',
        b'{"name": "bad", "extendedResources": {"x": "many"}}',
        b"[]",
        b"{",
        b'{"name": "\xff"}',
        b'{"name": "\\ud800"}',
    ],
)
def test_body_protojson_refuses_is_400_invalid_argument(
    cached: Proxy, namespace: str, body: bytes
) -> None:
    code, _, answer = call(cached, "POST", TEMPLATES, body)
    assert code == 400
    assert set(answer) == {"code", "message"} and answer["code"] == 3
    assert answer["message"].startswith("proto: ")


def test_empty_body_is_an_empty_template_refused_for_its_namespace(
    cached: Proxy, namespace: str
) -> None:
    code, _, answer = call(cached, "POST", TEMPLATES, b"")
    assert (code, answer) == (
        400,
        invalid_create(
            "The namespace in the request is different from the namespace defined in the "
            "compute template."
        ),
    )


def test_memory_unit_that_is_not_a_quantity_suffix_is_400_and_creates_nothing(
    cached: Proxy, namespace: str, controlplane: ControlPlane
) -> None:
    body = {"name": "bad-unit", "namespace": NS, "cpu": 1, "memory": 4, "memoryUnit": "GB"}
    code, _, answer = call(cached, "POST", TEMPLATES, body)
    assert code == 400 and answer["code"] == 3 and '"4GB"' in answer["message"]
    assert controlplane.request("GET", f"{CONFIGMAPS}/bad-unit")[0] == 404


def test_name_kube_apiserver_refuses_is_400_with_its_reason(cached: Proxy, namespace: str) -> None:
    body = {"name": "Not_A_DNS_Name", "namespace": NS, "cpu": 1, "memory": 4}
    code, _, answer = call(cached, "POST", TEMPLATES, body)
    assert code == 400 and answer["code"] == 3
    assert "Not_A_DNS_Name" in answer["message"] and "Invalid value" in answer["message"]


# ---- get, list -------------------------------------------------------------------------------
def test_get_answers_the_template(cached: Proxy, namespace: str) -> None:
    created(cached, {"name": "fetched", "namespace": NS, "cpu": 3, "memory": 6, "gpu": 1})
    code, _, answer = call(cached, "GET", f"{TEMPLATES}/fetched")
    assert (code, answer) == (
        200,
        {"name": "fetched", "namespace": NS, "cpu": 3, "memory": 6, "gpu": 1, "memoryUnit": "Gi"},
    )


@pytest.mark.parametrize(
    ("path", "code", "answer"),
    [
        (f"{TEMPLATES}/another-template", 404, not_found("another-template", GET_WRAP)),
        (f"{TEMPLATES}/", 400, EMPTY_NAME_ERROR),
        ("/apis/v1/namespaces//compute_templates/some-name", 404, ROUTE_NOT_FOUND),
        (f"{TEMPLATES}/fetched/more", 404, ROUTE_NOT_FOUND),
        ("/apis/v1/compute_templates/", 404, ROUTE_NOT_FOUND),
    ],
)  # fmt: skip
def test_get_that_finds_nothing_is_answered_as_kuberay_answers_it(
    cached: Proxy, namespace: str, path: str, code: int, answer: dict[str, Any]
) -> None:
    assert call(cached, "GET", path)[::2] == (code, answer)


def test_lists_answer_compute_templates_in_camel_case_in_name_order(
    cached: Proxy, namespace: str
) -> None:
    for name in ("list-b", "list-a"):
        created(cached, {"name": name, "namespace": NS, "cpu": 1, "memory": 2})
    code, _, listed = call(cached, "GET", TEMPLATES)
    assert code == 200 and list(listed) == ["computeTemplates"]
    names = [t["name"] for t in listed["computeTemplates"]]
    assert names == sorted(names) and {"list-a", "list-b"} <= set(names)
    mine = {t["name"]: t for t in listed["computeTemplates"]}
    assert mine["list-a"] == {
        "name": "list-a",
        "namespace": NS,
        "cpu": 1,
        "memory": 2,
        "memoryUnit": "Gi",
    }
    code, _, everywhere = call(cached, "GET", "/apis/v1/compute_templates")
    assert code == 200 and list(everywhere) == ["computeTemplates"]
    keys = [(t["namespace"], t["name"]) for t in everywhere["computeTemplates"]]
    assert keys == sorted(keys) and (NS, "list-a") in keys


def test_list_of_a_namespace_without_templates_is_an_empty_object(
    cached: Proxy, namespace: str
) -> None:
    assert call(cached, "GET", f"/apis/v1/namespaces/{EMPTY_NS}/compute_templates")[::2] == (
        200,
        {},
    )


# ---- delete ----------------------------------------------------------------------------------
def test_delete_answers_an_empty_object_and_removes_the_configmap(
    cached: Proxy, namespace: str, controlplane: ControlPlane
) -> None:
    created(cached, {"name": "deleted", "namespace": NS, "cpu": 1, "memory": 2})
    assert call(cached, "DELETE", f"{TEMPLATES}/deleted")[::2] == (200, {})
    assert controlplane.request("GET", f"{CONFIGMAPS}/deleted")[0] == 404
    assert call(cached, "GET", f"{TEMPLATES}/deleted")[::2] == (
        404,
        not_found("deleted", GET_WRAP),
    )


@pytest.mark.parametrize(
    ("path", "code", "answer"),
    [
        (f"{TEMPLATES}/another-template", 404, not_found("another-template", DELETE_WRAP)),
        (f"{TEMPLATES}/", 400, EMPTY_NAME_ERROR),
        ("/apis/v1/namespaces//compute_templates/some-name", 404, ROUTE_NOT_FOUND),
    ],
)  # fmt: skip
def test_delete_that_finds_nothing_is_answered_as_kuberay_answers_it(
    cached: Proxy, namespace: str, path: str, code: int, answer: dict[str, Any]
) -> None:
    assert call(cached, "DELETE", path)[::2] == (code, answer)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", f"{TEMPLATES}/basic"),
        ("PATCH", f"{TEMPLATES}/basic"),
        ("POST", f"{TEMPLATES}/basic"),
        ("DELETE", TEMPLATES),
        ("POST", "/apis/v1/compute_templates"),
    ],
)
def test_a_method_the_route_does_not_take_is_501_unimplemented(
    cached: Proxy, namespace: str, method: str, path: str
) -> None:
    body = b"{}" if method in ("PUT", "PATCH", "POST") else None
    assert call(cached, method, path, body)[::2] == (501, METHOD_NOT_ALLOWED)


def test_head_is_501_too_and_carries_no_body(cached: Proxy, namespace: str) -> None:
    code, headers, raw = cached.request("HEAD", f"{TEMPLATES}/basic")
    assert (code, raw) == (501, b"")
    assert headers["Content-Type"] == "application/json"


# ---- the ConfigMap format, both ways -----------------------------------------------------------
def test_template_kuberay_stored_is_served_as_kuberay_serves_it(
    cached: Proxy, namespace: str, controlplane: ControlPlane
) -> None:
    """A ConfigMap as KubeRay's APIServer writes one, made directly on kube-apiserver."""
    cm = {
        "metadata": {
            "name": "from-kuberay",
            "labels": {"ray.io/config-type": "compute-template", "ray.io/compute-template": "x"},
        },
        "data": {
            "name": "from-kuberay",
            "namespace": NS,
            "cpu": "4",
            "memory": "8",
            "memory_unit": "Gi",
            "gpu": "0",
            "gpu_accelerator": "",
            "extended_resources": "null",
            "tolerations": '[{"key":"k","operator":"Exists","effect":"NoSchedule"}]',
        },
    }
    kube(controlplane, "POST", CONFIGMAPS, cm)
    code, _, answer = poll_get(cached, "from-kuberay")
    assert (code, answer) == (
        200,
        {
            "name": "from-kuberay",
            "namespace": NS,
            "cpu": 4,
            "memory": 8,
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "memoryUnit": "Gi",
        },
    )


# ---- issue 11: a malformed template is a 422 naming it, not a 500 ------------------------------
@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("malformed-er-list", "extended_resources", '["vpc.amazonaws.com/efa"]'),
        ("malformed-er-value", "extended_resources", '{"vpc.amazonaws.com/efa": "lots"}'),
        ("malformed-er-json", "extended_resources", "{not json"),
        ("malformed-tol-object", "tolerations", '{"key": "k"}'),
        ("malformed-tol-item", "tolerations", '["k"]'),
    ],
)
def test_create_naming_a_malformed_template_is_422_naming_it_and_the_field(
    cached: Proxy, namespace: str, controlplane: ControlPlane, name: str, key: str, value: str
) -> None:
    data = {"name": name, "namespace": NS, "cpu": "1", "memory": "2", key: value}
    kube(
        controlplane,
        "POST",
        CONFIGMAPS,
        {
            "metadata": {"name": name, "labels": {"ray.io/config-type": "compute-template"}},
            "data": data,
        },
    )
    assert poll_get(cached, name)[0] == 200  # KubeRay serves it, the malformed field left out
    cluster = population.raycluster(f"uses-{name}", NS, {}, controlplane.samples_dir, state=None)
    cluster["spec"]["headGroupSpec"]["computeTemplate"] = name
    code, _, status = call(cached, "POST", RAYCLUSTERS, cluster)
    assert code == 422, status
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    assert f'"{name}"' in status["message"] and f"data.{key}" in status["message"]
    assert status["details"]["causes"][0]["field"] == f"data.{key}"
    assert controlplane.request("GET", f"{RAYCLUSTERS}/uses-{name}")[0] == 404


# ---- issue 11: kube-apiserver unreachable is 503 with Retry-After, not a 500 ------------------
@pytest.fixture
def behind_faults(
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path: Path,
    namespace: str,
) -> Iterator[tuple[FaultProxy, Proxy]]:
    """A watchcache that reaches kube-apiserver only through a fault proxy."""
    faults = FaultProxy(controlplane.server, controlplane.ssl_context(), lifetime=300).start()
    kubeconfig = controlplane.write_kubeconfig(
        tmp_path / "faults.kubeconfig", controlplane.admin, server=faults.base
    )
    proxy = proxy_factory("--kubeconfig", str(kubeconfig))
    try:
        yield faults, proxy
    finally:
        proxy.proc.terminate()
        proxy.proc.wait(15)
        faults.stop()


def assert_unavailable(answer: tuple[int, dict[str, str], Any]) -> None:
    code, headers, body = answer
    assert code == 503, body
    assert headers.get("Retry-After", "").isdigit()
    assert set(body) == {"code", "message"} and body["code"] == 14


def test_template_writes_while_the_connection_drops_are_503_with_retry_after(
    behind_faults: tuple[FaultProxy, Proxy], controlplane: ControlPlane
) -> None:
    faults, proxy = behind_faults
    faults.drop("POST", CONFIGMAPS, times=5)
    body = {"name": "while-dropped", "namespace": NS, "cpu": 1, "memory": 2}
    assert_unavailable(call(proxy, "POST", TEMPLATES, body))
    # Once kube-apiserver answers again, so does the create.
    faults.reset()
    code, _, answer = call(proxy, "POST", TEMPLATES, body)
    assert code == 200, answer
    faults.drop("DELETE", f"{CONFIGMAPS}/while-dropped", times=5)
    assert_unavailable(call(proxy, "DELETE", f"{TEMPLATES}/while-dropped"))


def test_template_create_while_kube_apiserver_is_down_is_503_with_retry_after(
    behind_faults: tuple[FaultProxy, Proxy],
) -> None:
    faults, proxy = behind_faults
    faults.stop()  # nothing listens there any more: every connection is refused
    body = {"name": "while-down", "namespace": NS, "cpu": 1, "memory": 2}
    assert_unavailable(call(proxy, "POST", TEMPLATES, body))
    # What a write through the proxy answers in the same case: 503 too.
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}}
    code, _, raw = proxy.request("POST", RAYCLUSTERS, json.dumps(cluster).encode())
    assert code == 503, raw


# ---- issue 11: bodies kube-apiserver accepts are not the template middleware's to refuse --------
DEEP = 1100  # past orjson's 1,024 and Python's own recursion limit; kube-apiserver's is 10,000


def ray_body(cp: ControlPlane, name: str, case: str, template: str | None) -> bytes:
    """A RayCluster's JSON with one oddity kube-apiserver takes: an invalid UTF-8 byte or a
    lone surrogate in an annotation (both read as U+FFFD), or an unknown field nested DEEP
    levels (decoded, then pruned)."""
    cluster = population.raycluster(name, NS, {}, cp.samples_dir, state=None)
    cluster["metadata"]["annotations"] = {"note": "NOTE"}
    cluster["metadata"]["notAField"] = "DEEP"
    if template:
        cluster["spec"]["headGroupSpec"]["computeTemplate"] = template
    raw = json.dumps(cluster).encode()
    note = {"invalid-utf8": b"bad \xff byte", "lone-surrogate": b"\\ud800 alone"}
    raw = raw.replace(b'"NOTE"', b'"' + note.get(case, b"plain") + b'"')
    deep = b"[" * DEEP + b'"bottom"' + b"]" * DEEP if case == "deep" else b'"shallow"'
    return raw.replace(b'"DEEP"', deep)


@pytest.mark.parametrize(
    ("case", "template"),
    [
        ("invalid-utf8", None),
        ("lone-surrogate", None),
        ("deep", None),
        ("invalid-utf8", "for-bodies"),
        ("lone-surrogate", "for-bodies"),
        ("deep", "for-bodies"),
    ],
)
def test_ray_body_kube_apiserver_accepts_is_accepted_through_watchcache(
    cached: Proxy, namespace: str, controlplane: ControlPlane, case: str, template: str | None
) -> None:
    if template:
        created_if_missing(cached, template)
    suffix = f"{case}-{'tpl' if template else 'plain'}"
    direct, raw = controlplane.request(
        "POST", RAYCLUSTERS, ray_body(controlplane, f"direct-{suffix}", case, None)
    )
    assert direct == 201, raw[:300]
    code, _, answer = cached.request(
        "POST",
        RAYCLUSTERS,
        ray_body(controlplane, f"proxied-{suffix}", case, template),
        {"Content-Type": "application/json"},
    )
    assert code == direct, answer[:300]
    stored = kube(controlplane, "GET", f"{RAYCLUSTERS}/proxied-{suffix}")
    reference = kube(controlplane, "GET", f"{RAYCLUSTERS}/direct-{suffix}")
    assert stored["metadata"]["annotations"] == reference["metadata"]["annotations"]
    head = stored["spec"]["headGroupSpec"]
    assert "computeTemplate" not in head
    if template:
        assert head["template"]["metadata"]["annotations"]["ray.io/compute-template"] == template


def test_body_naming_a_template_deeper_than_kube_apiserver_reads_is_400_not_500(
    cached: Proxy, namespace: str, controlplane: ControlPlane
) -> None:
    created_if_missing(cached, "for-bodies")
    body = ray_body(controlplane, "too-deep", "plain", "for-bodies")
    body = body.replace(b'"shallow"', b"[" * 10_001 + b"]" * 10_001)  # kube's limit: 10,000
    code, _, raw = cached.request("POST", RAYCLUSTERS, body, {"Content-Type": "application/json"})
    status = json.loads(raw)
    assert (code, status["kind"], status["reason"]) == (400, "Status", "BadRequest")
    assert controlplane.request("GET", f"{RAYCLUSTERS}/too-deep")[0] == 404
