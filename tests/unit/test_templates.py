"""The pure logic of the KubeRay middleware: templates, defaults, proxy paths, CORS.

What the API server then does with the result is tested against the real one in
tests/integration/test_kuberay_features.py; here, only the transformations themselves.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import orjson
import pytest

from watchcache.cache.store import Store
from watchcache.config import RAY_RESOURCES
from watchcache.middleware import Headers, Request, Response, StatusError
from watchcache.middleware import templates_v1 as v1
from watchcache.middleware.kuberay import Cors, Defaults, _service_name, merge_defaults
from watchcache.middleware.templates import (
    ANNOTATION,
    ComputeTemplates,
    _group_specs,
    apply_template,
    template_resources,
    v1_route,
)

RAYCLUSTERS = RAY_RESOURCES[0]
TOLERATION = {
    "key": "ray.io/node-type",
    "operator": "Equal",
    "value": "gpu",
    "effect": "NoSchedule",
}
TEMPLATE = v1.Template(
    name="gpu-small",
    namespace="team-a",
    cpu=2,
    memory=4,
    memory_unit="Gi",
    gpu=1,
    extended_resources={"vpc.amazonaws.com/efa": 2},
    tolerations=[TOLERATION],
)


def configmap(tpl: v1.Template = TEMPLATE) -> dict[str, Any]:
    return v1.to_configmap(tpl)


def resources_of(tpl: v1.Template = TEMPLATE, **data: str) -> Any:
    return template_resources(tpl.name, tpl.namespace, {**configmap(tpl)["data"], **data})


def group(*names: str) -> dict[str, Any]:
    containers = [{"name": n, "image": "rayproject/ray:2.46.0"} for n in names]
    return {"rayStartParams": {}, "template": {"spec": {"containers": containers}}}


def v1_error(body: bytes) -> v1.V1Error:
    with pytest.raises(v1.V1Error) as err:
        v1.decode(body)
    return err.value


# ---- the v1 wire format ----------------------------------------------------------------------
def test_template_body_is_read_in_either_casing_and_unknown_fields_are_dropped() -> None:
    snake = v1.decode(
        b'{"name": "t", "namespace": "n", "cpu": 2, "memory": 4, "gpu": 1, "gpu_accelerator":'
        b' "amd.com/gpu", "memory_unit": "Mi", "extended_resources": {"x": 1}, "other": [1]}'
    )
    camel = v1.decode(
        b'{"name": "t", "namespace": "n", "cpu": 2, "memory": 4, "gpu": 1, "gpuAccelerator":'
        b' "amd.com/gpu", "memoryUnit": "Mi", "extendedResources": {"x": 1}, "other": [1]}'
    )
    assert snake == camel
    assert (camel.gpu_accelerator, camel.memory_unit, camel.extended_resources) == (
        "amd.com/gpu",
        "Mi",
        {"x": 1},
    )


@pytest.mark.parametrize(
    ("given", "read"),
    [("2", 2), ("2.0", 2), ("2e0", 2), ('"2"', 2), ("4294967295", 4294967295), ("null", 0)],
)
def test_template_numbers_are_read_as_protojson_reads_a_uint32(given: str, read: int) -> None:
    assert v1.decode(b'{"cpu": %s}' % given.encode()).cpu == read


@pytest.mark.parametrize(
    "body",
    [
        b'{"cpu": 2.5}',
        b'{"cpu": -1}',
        b'{"cpu": 4294967296}',
        b'{"cpu": "two"}',
        b'{"cpu": " 2"}',
        b'{"cpu": true}',
        b'{"name": 5}',
        b'{"name": "a", "name": "b"}',
        b'{"gpu_accelerator": "a", "gpuAccelerator": "b"}',
        b'{"extendedResources": {"x": 1, "x": 2}}',
        b'{"extendedResources": {"x": -1}}',
        b'{"extendedResources": [1]}',
        b'{"tolerations": {"key": "k"}}',
        b'{"tolerations": [null]}',
        b'{"tolerations": [{"key": 1}]}',
        b"[]",
        b"null",
        b"{",
        b'{"cpu": NaN}',
        b'{"x": "\\ud800"}',
        b'{"x": "\xff"}',
        b"name: t",
    ],
)
def test_template_body_protojson_refuses_is_invalid_argument(body: bytes) -> None:
    err = v1_error(body)
    assert (err.code, err.http_status) == (3, 400)
    assert err.body() == {"code": 3, "message": err.message}


def test_template_body_may_be_empty_and_only_its_first_json_value_is_read() -> None:
    assert v1.decode(b"") == v1.Template()
    assert v1.decode(b' {"name": "t"} and then anything').name == "t"


def test_template_body_with_invalid_utf8_is_invalid_argument() -> None:
    assert v1_error(b'{"name": "\xff"}').code == 3
    assert v1_error(b'{"name": "t", "x": "\xff"}').code == 3


def test_template_is_rendered_in_camel_case_with_empty_fields_left_out() -> None:
    tpl = v1.Template(name="t", namespace="n", cpu=1, memory=2, memory_unit="Gi")
    assert v1.render(tpl) == {
        "name": "t",
        "namespace": "n",
        "cpu": 1,
        "memory": 2,
        "memoryUnit": "Gi",
    }
    assert v1.render(TEMPLATE) == {
        "name": "gpu-small",
        "namespace": "team-a",
        "cpu": 2,
        "memory": 4,
        "gpu": 1,
        "tolerations": [TOLERATION],
        "extendedResources": {"vpc.amazonaws.com/efa": 2},
        "memoryUnit": "Gi",
    }


def test_template_configmap_is_the_one_kuberay_writes() -> None:
    cm = configmap(v1.Template(name="t", namespace="n", cpu=1, memory=2))
    assert cm["metadata"] == {
        "name": "t",
        "namespace": "n",
        "labels": {"ray.io/config-type": "compute-template", "ray.io/compute-template": "t"},
    }
    assert cm["data"] == {
        "name": "t",
        "namespace": "n",
        "cpu": "1",
        "memory": "2",
        "memory_unit": "Gi",
        "gpu": "0",
        "gpu_accelerator": "",
        "extended_resources": "null",
    }
    full = configmap()["data"]
    assert full["extended_resources"] == '{"vpc.amazonaws.com/efa":2}'
    assert full["tolerations"] == (
        '[{"key":"ray.io/node-type","operator":"Equal","value":"gpu","effect":"NoSchedule"}]'
    )


def test_template_round_trips_through_its_configmap() -> None:
    assert v1.from_configmap(configmap()) == TEMPLATE


def test_template_with_a_memory_unit_that_is_no_quantity_suffix_is_invalid_argument() -> None:
    with pytest.raises(v1.V1Error) as err:
        configmap(v1.Template(name="t", namespace="n", cpu=1, memory=2, memory_unit="GB"))
    assert (err.value.code, err.value.http_status) == (3, 400)
    assert '"2GB"' in err.value.message


def test_configmap_is_read_as_kuberay_reads_it_dropping_what_it_cannot_parse() -> None:
    tpl = v1.from_configmap(
        {
            "metadata": {"name": "from-meta", "namespace": "ns"},
            "data": {
                "name": "ignored",
                "cpu": "0.5",
                "memory": "007",
                "gpu": "-1",
                "extended_resources": '{"a": 1, "b": "2", "c": 1.0, "d": -1}',
                "tolerations": '[{"KEY": "k", "value": 3}, "junk"]',
            },
        }
    )
    assert v1.render(tpl) == {
        "name": "from-meta",
        "namespace": "ns",
        "memory": 7,
        "tolerations": [{"key": "k"}, {}],
        "extendedResources": {"a": 1},
    }
    bad = v1.from_configmap({"metadata": {"name": "t"}, "data": {"extended_resources": "{"}})
    assert bad.extended_resources is None


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/apis/v1/compute_templates", ("all", "", "")),
        ("/apis/v1/compute_templates/", ("none", "", "")),
        ("/apis/v1/namespaces/n/compute_templates", ("list", "n", "")),
        ("/apis/v1/namespaces/n/compute_templates/t", ("one", "n", "t")),
        ("/apis/v1/namespaces/n/compute_templates/", ("one", "n", "")),
        ("/apis/v1/namespaces/n/compute_templates/a%20b", ("one", "n", "a b")),
        ("/apis/v1/namespaces/n/compute_templates/t/x", ("none", "", "")),
        ("/apis/v1/namespaces//compute_templates/t", ("none", "", "")),
        ("/apis/v1/namespaces/n/compute_templates/..", ("none", "", "")),
        ("/apis/v1/namespaces/n/clusters", None),
        ("/apis/ray.io/v1/namespaces/n/rayclusters", None),
    ],
)
def test_v1_paths_are_routed_as_kuberays_gateway_routes_them(
    path: str, route: tuple[str, str, str] | None
) -> None:
    assert v1_route(path) == route


# ---- a template's values, checked when read ---------------------------------------------------
def test_template_values_keep_fractional_and_suffixed_quantities() -> None:
    res = template_resources("t", "n", {"cpu": "0.5", "memory": "1500", "memory_unit": "Mi"})
    assert (res.cpu, res.memory, res.gpu, res.extended, res.tolerations) == (
        "0.5",
        "1500Mi",
        "0",
        {},
        [],
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("extended_resources", "[1, 2]"),
        ("extended_resources", '{"x": "lots"}'),
        ("extended_resources", '{"x": -1}'),
        ("extended_resources", "{not json"),
        ("tolerations", '{"key": "k"}'),
        ("tolerations", '["k"]'),
        ("tolerations", '[{"key": 1}]'),
        ("cpu", "two"),
        ("cpu", ""),
        ("memory", "-4"),
        ("gpu", "one"),
    ],
)
def test_malformed_template_is_422_naming_the_template_and_the_field(key: str, value: str) -> None:
    with pytest.raises(StatusError) as err:
        resources_of(**{key: value})
    assert err.value.code == 422
    assert '"gpu-small"' in err.value.message and f"data.{key}" in err.value.message
    assert err.value.details is not None
    assert err.value.details["causes"][0]["field"] == f"data.{key}"


# ---- applying a template to a group --------------------------------------------------------
def test_template_sets_cpu_and_memory_on_every_container_and_the_rest_on_the_ray_one() -> None:
    head = group("log-shipper", "ray-head")
    apply_template(head, "ray-head", "gpu-small", resources_of())
    shipper, ray = head["template"]["spec"]["containers"]
    for kind in ("requests", "limits"):
        assert shipper["resources"][kind] == {"cpu": "2", "memory": "4Gi"}
        assert ray["resources"][kind] == {
            "cpu": "2",
            "memory": "4Gi",
            "nvidia.com/gpu": "1",
            "vpc.amazonaws.com/efa": "2",
        }
    assert head["template"]["metadata"]["annotations"] == {ANNOTATION: "gpu-small"}
    assert head["template"]["spec"]["tolerations"] == [TOLERATION]


def test_template_gpu_uses_the_named_accelerator() -> None:
    worker = group("ray-worker")
    apply_template(worker, "ray-worker", "t", resources_of(gpu_accelerator="amd.com/gpu"))
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in limits


@pytest.mark.parametrize("gpu", ["0", "", "0.0"])
def test_template_without_gpu_adds_no_gpu_resource(gpu: str) -> None:
    worker = group("ray-worker")
    apply_template(worker, "ray-worker", "t", resources_of(gpu=gpu))
    assert (
        "nvidia.com/gpu" not in worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_template_tolerations_are_appended_to_the_groups_own() -> None:
    own = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    worker = group("ray-worker")
    worker["template"]["spec"]["tolerations"] = [own]
    apply_template(worker, "ray-worker", "t", resources_of())
    assert worker["template"]["spec"]["tolerations"] == [own, TOLERATION]


def test_template_on_a_group_without_containers_creates_the_ray_container() -> None:
    bare: dict[str, Any] = {}
    apply_template(bare, "ray-head", "t", resources_of())
    (container,) = bare["template"]["spec"]["containers"]
    assert container["name"] == "ray-head"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("nesting", [(), ("rayClusterSpec",), ("rayClusterConfig",)])
def test_groups_are_found_in_clusters_jobs_and_services(nesting: tuple[str, ...]) -> None:
    cluster = {"headGroupSpec": group("ray-head"), "workerGroupSpecs": [group("ray-worker")] * 2}
    spec: dict[str, Any] = {nesting[0]: cluster} if nesting else cluster
    assert [main for _, main in _group_specs(spec)] == ["ray-head", "ray-worker", "ray-worker"]


# ---- the middleware on a request -----------------------------------------------------------
def request(method: str, obj: object, **params: str) -> Request:
    body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return Request(
        method=method,
        path="/apis/ray.io/v1/namespaces/team-a/rayclusters",
        query={},
        headers=Headers({"Content-Type": "application/json"}),
        body=body,
        path_params={"namespace": "team-a", **params},
        resource=RAYCLUSTERS,
    )


async def forwarded(mw: Any, req: Request) -> Request:
    """The request the middleware hands to the next step."""
    seen: list[Request] = []

    async def call_next(r: Request) -> Response:
        seen.append(r)
        return Response(status=201)

    await mw(req, call_next)
    (out,) = seen
    return out


async def passed_on(mw: Any, req: Request) -> dict[str, Any]:
    return orjson.loads((await forwarded(mw, req)).body)


def templates_store(tpl: v1.Template = TEMPLATE) -> Store:
    store = Store()
    cm = configmap(tpl)
    cm["metadata"]["resourceVersion"] = "7"
    store.replace([cm], 7)
    return store


def ray_cluster(template: str = "gpu-small") -> dict[str, Any]:
    head = group("ray-head")
    head["computeTemplate"] = template
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "c"},
        "spec": {"headGroupSpec": head, "workerGroupSpecs": [group("ray-worker")]},
    }


def middleware(store: Store | None = None) -> ComputeTemplates:
    return ComputeTemplates(store or templates_store(), upstream=None)  # type: ignore[arg-type]


def test_middleware_applies_the_named_template_and_removes_the_field() -> None:
    sent = asyncio.run(passed_on(middleware(), request("POST", ray_cluster())))
    head = sent["spec"]["headGroupSpec"]
    assert "computeTemplate" not in head
    assert head["template"]["metadata"]["annotations"][ANNOTATION] == "gpu-small"
    worker = sent["spec"]["workerGroupSpecs"][0]
    assert "resources" not in worker["template"]["spec"]["containers"][0]


def test_middleware_refuses_an_unknown_template_by_name() -> None:
    with pytest.raises(StatusError) as err:
        asyncio.run(passed_on(middleware(), request("POST", ray_cluster("no-such"))))
    assert err.value.code == 422
    assert '"no-such"' in err.value.message


def test_middleware_refuses_a_malformed_template_naming_it_and_the_field() -> None:
    cm = configmap()
    cm["data"]["extended_resources"] = '["not", "a", "map"]'
    cm["metadata"]["resourceVersion"] = "7"
    store = Store()
    store.replace([cm], 7)
    with pytest.raises(StatusError) as err:
        asyncio.run(passed_on(middleware(store), request("POST", ray_cluster())))
    assert err.value.code == 422
    assert '"gpu-small"' in err.value.message and "data.extended_resources" in err.value.message


def test_middleware_leaves_status_subresource_writes_alone() -> None:
    obj = ray_cluster()
    sent = asyncio.run(passed_on(middleware(), request("PUT", obj, name="c", subresource="status")))
    assert sent == obj


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata": {"name": "c", "annotations": {"a": "\xff"}}, "spec": {}}',
        b'{"metadata": {"name": "c", "annotations": {"a": "\\ud800"}}, "spec": {}}',
        b'{"metadata": {"name": "c"}, "spec": {"x": ' + b"[" * 1100 + b"]" * 1100 + b"}}",
        b"{not json at all",
    ],
)
def test_body_naming_no_template_is_passed_on_byte_for_byte(body: bytes) -> None:
    sent = asyncio.run(forwarded(middleware(), request("POST", body)))
    assert sent.body == body


def test_template_is_applied_to_a_body_with_invalid_utf8_and_lone_surrogates() -> None:
    obj = ray_cluster()
    obj["metadata"]["annotations"] = {"a": "PLACEHOLDER", "b": "SURROGATE"}
    body = orjson.dumps(obj).replace(b"PLACEHOLDER", b"\xff").replace(b"SURROGATE", b"\\ud800")
    sent = asyncio.run(forwarded(middleware(), request("POST", body)))
    decoded = json.loads(sent.body)
    # Both become U+FFFD, as kube-apiserver's decoder makes them (and stores them) anyway.
    assert decoded["metadata"]["annotations"] == {"a": "\ufffd", "b": "\ufffd"}
    head = decoded["spec"]["headGroupSpec"]
    assert "computeTemplate" not in head
    assert head["template"]["metadata"]["annotations"][ANNOTATION] == "gpu-small"


# ---- defaults ------------------------------------------------------------------------------
def test_defaults_fill_unset_fields_and_never_override_given_ones() -> None:
    given = {"metadata": {"labels": {"team": "mine"}}, "spec": {"suspend": False, "x": None}}
    defaults = {
        "metadata": {"labels": {"team": "ray", "tier": "dev"}, "annotations": {"a": "1"}},
        "spec": {"suspend": True, "x": 3, "list": [1]},
    }
    before = copy.deepcopy(defaults)
    assert merge_defaults(given, defaults) == {
        "metadata": {"labels": {"team": "mine", "tier": "dev"}, "annotations": {"a": "1"}},
        "spec": {"suspend": False, "x": 3, "list": [1]},
    }
    assert defaults == before


def test_defaults_do_not_merge_into_a_given_list() -> None:
    assert merge_defaults({"l": [{"a": 1}]}, {"l": [{"a": 2}, {"b": 3}]}) == {"l": [{"a": 1}]}


def test_defaults_resource_section_wins_over_all_and_image_fills_containers() -> None:
    mw = Defaults(
        {
            "all": {"metadata": {"labels": {"tier": "all", "team": "all"}}},
            "rayclusters": {"metadata": {"labels": {"tier": "cluster"}}},
            "image": "rayproject/ray:2.46.0",
        }
    )
    obj = ray_cluster()
    obj["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"] = [
        {"name": "ray-worker"},
        {"name": "sidecar", "image": "busybox"},
    ]
    sent = asyncio.run(passed_on(mw, request("POST", obj)))
    assert sent["metadata"]["labels"] == {"tier": "cluster", "team": "all"}
    images = [
        c["image"] for c in sent["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    ]
    assert images == ["rayproject/ray:2.46.0", "busybox"]


# ---- the service proxy's name part ---------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("dash", "dash"),
        ("dash:8265", "dash"),
        ("dash:", "dash"),
        ("http:dash:8265", "dash"),
        ("https:dash:", "dash"),
        (":dash:8265", "dash"),
        ("http:dash", "http"),  # two parts are name:port, as the API server reads them
    ],
)
def test_service_part_is_split_as_the_api_server_splits_it(text: str, name: str) -> None:
    assert _service_name(text) == name


@pytest.mark.parametrize("text", ["a:b:c:d", "ftp:dash:8265", ":8265", "http::8265"])
def test_malformed_service_part_is_a_bad_request(text: str) -> None:
    with pytest.raises(StatusError) as err:
        _service_name(text)
    assert err.value.code == 400


# ---- CORS ----------------------------------------------------------------------------------
def test_cors_answers_a_preflight_without_calling_the_server() -> None:
    req = Request(
        method="OPTIONS",
        path="/apis/ray.io/v1/rayclusters",
        query={},
        headers=Headers(
            {"Origin": "https://dash.example", "Access-Control-Request-Method": "DELETE"}
        ),
    )

    async def unreachable(r: Request) -> Response:
        raise AssertionError("a preflight must not reach the endpoint")

    resp = asyncio.run(Cors("https://dash.example")(req, unreachable))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "DELETE" in resp.headers["Access-Control-Allow-Methods"]
