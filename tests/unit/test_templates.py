"""The pure logic of the KubeRay middleware: templates, defaults, proxy paths, CORS.

What the API server then does with the result is tested against the real one in
tests/integration/test_kuberay_features.py; here, only the transformations themselves.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
import pytest
from tornado import httputil

from watchcache.config import RAY_RESOURCES
from watchcache.middleware import Request, Response, StatusError
from watchcache.middleware.kuberay import Cors, Defaults, _service_name, merge_defaults
from watchcache.middleware.templates import (
    ANNOTATION,
    LABEL,
    LABEL_VALUE,
    ComputeTemplates,
    _group_specs,
    apply_template,
    configmap_from_template,
    template_from_configmap,
)
from watchcache.store import Store

RAYCLUSTERS = RAY_RESOURCES[0]
TOLERATION = {
    "key": "ray.io/node-type",
    "operator": "Equal",
    "value": "gpu",
    "effect": "NoSchedule",
}
TEMPLATE: dict[str, Any] = {
    "name": "gpu-small",
    "namespace": "team-a",
    "cpu": 2,
    "memory": 4,
    "memory_unit": "Gi",
    "gpu": 1,
    "gpu_accelerator": "",
    "extended_resources": {"vpc.amazonaws.com/efa": 2},
    "tolerations": [TOLERATION],
}


def data_of(template: dict[str, Any]) -> dict[str, str]:
    return configmap_from_template(template, template["namespace"])["data"]


def group(*names: str) -> dict[str, Any]:
    containers = [{"name": n, "image": "rayproject/ray:2.46.0"} for n in names]
    return {"rayStartParams": {}, "template": {"spec": {"containers": containers}}}


# ---- the template's two shapes -------------------------------------------------------------
def test_template_round_trips_through_its_configmap() -> None:
    cm = configmap_from_template(TEMPLATE, "team-a")
    assert cm["metadata"] == {
        "name": "gpu-small",
        "namespace": "team-a",
        "labels": {LABEL: LABEL_VALUE},
    }
    assert all(isinstance(v, str) for v in cm["data"].values())
    assert template_from_configmap(cm["data"]) == TEMPLATE


def test_configmap_data_keeps_fractional_and_suffixed_quantities() -> None:
    tpl = template_from_configmap({"name": "t", "cpu": "0.5", "memory": "1500Mi"})
    assert (tpl["cpu"], tpl["memory"], tpl["gpu"]) == (0.5, "1500Mi", 0)
    assert (tpl["extended_resources"], tpl["tolerations"]) == ({}, [])


@pytest.mark.parametrize("missing", ["name", "cpu", "memory"])
def test_template_without_a_required_field_is_invalid_and_says_which(missing: str) -> None:
    tpl = {k: v for k, v in TEMPLATE.items() if k != missing}
    with pytest.raises(StatusError) as err:
        configmap_from_template(tpl, "team-a")
    assert err.value.code == 422
    assert missing in err.value.message


# ---- applying a template to a group --------------------------------------------------------
def test_template_sets_cpu_and_memory_on_every_container_and_the_rest_on_the_ray_one() -> None:
    head = group("log-shipper", "ray-head")
    apply_template(head, "ray-head", "gpu-small", data_of(TEMPLATE))
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
    apply_template(
        worker, "ray-worker", "t", data_of({**TEMPLATE, "gpu_accelerator": "amd.com/gpu"})
    )
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in limits


def test_template_without_gpu_adds_no_gpu_resource() -> None:
    worker = group("ray-worker")
    apply_template(worker, "ray-worker", "t", data_of({**TEMPLATE, "gpu": 0}))
    assert (
        "nvidia.com/gpu" not in worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_template_tolerations_are_appended_to_the_groups_own() -> None:
    own = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    worker = group("ray-worker")
    worker["template"]["spec"]["tolerations"] = [own]
    apply_template(worker, "ray-worker", "t", data_of(TEMPLATE))
    assert worker["template"]["spec"]["tolerations"] == [own, TOLERATION]


def test_template_on_a_group_without_containers_creates_the_ray_container() -> None:
    bare: dict[str, Any] = {}
    apply_template(bare, "ray-head", "t", data_of(TEMPLATE))
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
    return Request(
        method=method,
        path="/apis/ray.io/v1/namespaces/team-a/rayclusters",
        query={},
        headers=httputil.HTTPHeaders({"Content-Type": "application/json"}),
        body=orjson.dumps(obj),
        path_params={"namespace": "team-a", **params},
        resource=RAYCLUSTERS,
    )


async def passed_on(mw: Any, req: Request) -> dict[str, Any]:
    """What the middleware hands to the next step."""
    seen: list[Request] = []

    async def call_next(r: Request) -> Response:
        seen.append(r)
        return Response(status=201)

    await mw(req, call_next)
    (forwarded,) = seen
    return orjson.loads(forwarded.body)


def templates_store() -> Store:
    store = Store()
    cm = configmap_from_template(TEMPLATE, "team-a")
    cm["metadata"]["resourceVersion"] = "7"
    store.replace([cm], 7)
    return store


def ray_cluster() -> dict[str, Any]:
    head = group("ray-head")
    head["computeTemplate"] = "gpu-small"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "c"},
        "spec": {"headGroupSpec": head, "workerGroupSpecs": [group("ray-worker")]},
    }


def test_middleware_applies_the_named_template_and_removes_the_field() -> None:
    mw = ComputeTemplates(templates_store(), upstream=None)  # type: ignore[arg-type]
    sent = asyncio.run(passed_on(mw, request("POST", ray_cluster())))
    head = sent["spec"]["headGroupSpec"]
    assert "computeTemplate" not in head
    assert head["template"]["metadata"]["annotations"][ANNOTATION] == "gpu-small"
    worker = sent["spec"]["workerGroupSpecs"][0]
    assert "resources" not in worker["template"]["spec"]["containers"][0]


def test_middleware_refuses_an_unknown_template_by_name() -> None:
    mw = ComputeTemplates(templates_store(), upstream=None)  # type: ignore[arg-type]
    obj = ray_cluster()
    obj["spec"]["headGroupSpec"]["computeTemplate"] = "no-such"
    with pytest.raises(StatusError) as err:
        asyncio.run(passed_on(mw, request("POST", obj)))
    assert err.value.code == 422
    assert '"no-such"' in err.value.message


def test_middleware_leaves_status_subresource_writes_alone() -> None:
    mw = ComputeTemplates(templates_store(), upstream=None)  # type: ignore[arg-type]
    obj = ray_cluster()
    sent = asyncio.run(passed_on(mw, request("PUT", obj, name="c", subresource="status")))
    assert sent == obj


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
        headers=httputil.HTTPHeaders(
            {"Origin": "https://dash.example", "Access-Control-Request-Method": "DELETE"}
        ),
    )

    async def unreachable(r: Request) -> Response:
        raise AssertionError("a preflight must not reach the endpoint")

    resp = asyncio.run(Cors("https://dash.example")(req, unreachable))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "DELETE" in resp.headers["Access-Control-Allow-Methods"]
