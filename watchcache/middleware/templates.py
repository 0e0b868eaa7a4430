"""Compute templates, compatible with the KubeRay APIServer.

A template is a ConfigMap labelled ``ray.io/config-type: compute-template`` (kept in a
cache of its own). A Ray resource created or replaced with ``computeTemplate: NAME`` in its
head group or a worker group gets that template's resources, tolerations and an annotation
naming it; the field itself is removed before the object reaches the API server, whose CRD
schema does not know it. The KubeRay v1 endpoints that manage templates are answered here.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import orjson
from tornado import httputil

from watchcache.config import ResourceSpec
from watchcache.middleware.core import Next, Request, Response
from watchcache.status import StatusError, method_not_allowed
from watchcache.store import Store
from watchcache.upstream import Response as UpstreamResponse
from watchcache.upstream import Upstream

LABEL = "ray.io/config-type"
LABEL_VALUE = "compute-template"
ANNOTATION = "ray.io/compute-template"
CONFIGMAPS = ResourceSpec(
    group="",
    version="v1",
    plural="configmaps",
    kind="ConfigMap",
    label_selector=f"{LABEL}={LABEL_VALUE}",
    served=False,
)
RAY_PLURALS = frozenset({"rayclusters", "rayjobs", "rayservices"})
FIELDS = (
    "name",
    "namespace",
    "cpu",
    "memory",
    "memory_unit",
    "gpu",
    "gpu_accelerator",
    "extended_resources",
    "tolerations",
)
_ONE = re.compile(r"^/apis/v1/namespaces/(?P<ns>[^/]+)/compute_templates/(?P<name>[^/]+)/?$")
_NAMESPACED = re.compile(r"^/apis/v1/namespaces/(?P<ns>[^/]+)/compute_templates/?$")
_ALL = "/apis/v1/compute_templates"


def template_from_configmap(data: dict[str, str]) -> dict[str, Any]:
    """The v1 JSON shape of a template, from its ConfigMap's data."""
    out: dict[str, Any] = {key: data.get(key, "") for key in FIELDS}
    for key in ("extended_resources", "tolerations"):
        out[key] = orjson.loads(data[key]) if data.get(key) else ({} if key[0] == "e" else [])
    for key in ("cpu", "memory", "gpu"):
        value = out[key]
        try:
            out[key] = int(value) if str(value).isdigit() else float(value) if value else 0
        except ValueError:
            out[key] = value
    return out


def configmap_from_template(tpl: dict[str, Any], namespace: str) -> dict[str, Any]:
    name = tpl.get("name")
    if not isinstance(name, str) or not name:
        raise StatusError(422, "compute template: name is required")
    for key in ("cpu", "memory"):
        if tpl.get(key) in (None, ""):
            raise StatusError(422, f"compute template {name!r}: {key} is required")
    data = {
        "name": name,
        "namespace": namespace,
        "cpu": str(tpl["cpu"]),
        "memory": str(tpl["memory"]),
        "memory_unit": str(tpl.get("memory_unit") or "Gi"),
        "gpu": str(tpl.get("gpu") or 0),
        "gpu_accelerator": str(tpl.get("gpu_accelerator") or ""),
        "extended_resources": orjson.dumps(tpl.get("extended_resources") or {}).decode(),
        "tolerations": orjson.dumps(tpl.get("tolerations") or []).decode(),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL: LABEL_VALUE}},
        "data": data,
    }


def _group_specs(spec: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(group spec, main container name) of every head and worker group in a Ray resource."""
    out = []
    for cluster in (spec, spec.get("rayClusterSpec"), spec.get("rayClusterConfig")):
        if not isinstance(cluster, dict):
            continue
        head = cluster.get("headGroupSpec")
        if isinstance(head, dict):
            out.append((head, "ray-head"))
        for worker in cluster.get("workerGroupSpecs") or []:
            if isinstance(worker, dict):
                out.append((worker, "ray-worker"))
    return out


def apply_template(group: dict[str, Any], main: str, name: str, data: dict[str, str]) -> None:
    """Sets one group's pod template as the template says."""
    tpl = template_from_configmap(data)
    template = group.setdefault("template", {})
    meta = template.setdefault("metadata", {})
    meta.setdefault("annotations", {})[ANNOTATION] = name
    pod = template.setdefault("spec", {})
    containers = pod.setdefault("containers", [])
    if not containers:
        containers.append({"name": main})
    memory = f"{tpl['memory']}{tpl['memory_unit'] or 'Gi'}"
    for container in containers:
        resources = container.setdefault("resources", {})
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {}).update({"cpu": str(tpl["cpu"]), "memory": memory})
    target = next((c for c in containers if c.get("name") == main), containers[0])
    extra: dict[str, str] = {k: str(v) for k, v in (tpl["extended_resources"] or {}).items()}
    if tpl["gpu"] not in (0, "0", ""):
        extra[tpl["gpu_accelerator"] or "nvidia.com/gpu"] = str(tpl["gpu"])
    for kind in ("requests", "limits"):
        target["resources"][kind].update(extra)
    if tpl["tolerations"]:
        pod.setdefault("tolerations", []).extend(tpl["tolerations"])


class ComputeTemplates:
    """The compute-template middleware: applies templates, and serves the v1 endpoints."""

    def __init__(self, store: Store, upstream: Upstream) -> None:
        self.store = store
        self.upstream = upstream

    async def __call__(self, request: Request, call_next: Next) -> Response:
        path = request.path
        if path.startswith("/apis/v1/") and "compute_templates" in path:
            return await self._endpoint(request)
        spec = request.resource
        if (
            request.method in ("POST", "PUT")
            and spec is not None
            and spec.plural in RAY_PLURALS
            and not request.path_params.get("subresource")
            and request.body
        ):
            self._apply(request)
        return await call_next(request)

    def _apply(self, request: Request) -> None:
        obj = request.json()
        if not isinstance(obj, dict) or not isinstance(obj.get("spec"), dict):
            return
        namespace = request.path_params.get("namespace", "")
        changed = False
        for group, main in _group_specs(obj["spec"]):
            name = group.pop("computeTemplate", None)
            if name is None:
                continue
            changed = True
            entry = self.store.get(namespace, str(name))
            if entry is None:
                raise StatusError(
                    422, f'compute template "{name}" not found in namespace "{namespace}"'
                )
            data = orjson.loads(entry.raw).get("data") or {}
            apply_template(group, main, str(name), data)
        if changed:
            request.set_json(obj)

    async def _endpoint(self, request: Request) -> Response:
        if request.path.rstrip("/") == _ALL:
            if request.method != "GET":
                raise method_not_allowed()
            return self._list(None)
        if m := _NAMESPACED.match(request.path):
            ns = m["ns"]
            if request.method == "GET":
                return self._list(ns)
            if request.method == "POST":
                return await self._create(ns, request)
            raise method_not_allowed()
        if m := _ONE.match(request.path):
            ns, name = m["ns"], m["name"]
            if request.method == "GET":
                entry = self.store.get(ns, name)
                if entry is None:
                    raise _missing(ns, name)
                data = orjson.loads(entry.raw).get("data") or {}
                return Response.json(template_from_configmap(data))
            if request.method == "DELETE":
                return await self._delete(ns, name)
            raise method_not_allowed()
        raise StatusError(404, "the server could not find the requested resource")

    def _list(self, namespace: str | None) -> Response:
        items = [
            template_from_configmap(orjson.loads(e.raw).get("data") or {})
            for e in self.store.entries_in(namespace)
        ]
        return Response.json({"compute_templates": items})

    async def _create(self, namespace: str, request: Request) -> Response:
        tpl = request.json()
        if not isinstance(tpl, dict):
            raise StatusError(400, "a compute template is a JSON object")
        cm = configmap_from_template(tpl, namespace)
        resp = await self.upstream.fetch(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/configmaps",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            body=orjson.dumps(cm),
        )
        if resp.code != 201:
            return _relayed(resp)
        rv = int(orjson.loads(resp.body)["metadata"]["resourceVersion"])
        await self.store.wait_for(rv, 5.0)  # read-your-writes for the next GET
        return Response.json(template_from_configmap(cm["data"]))

    async def _delete(self, namespace: str, name: str) -> Response:
        if self.store.get(namespace, name) is None:
            raise _missing(namespace, name)
        resp = await self.upstream.fetch(
            "DELETE",
            f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name)}",
            headers={"Accept": "application/json"},
        )
        if resp.code not in (200, 202):
            return _relayed(resp)
        for _ in range(50):
            if self.store.get(namespace, name) is None:
                break
            await self.store.wait_for(self.store.rv + 1, 0.1)
        return Response.json({})


def _relayed(resp: UpstreamResponse) -> Response:
    """The API server's refusal, as it gave it: its code, body and content type (not its
    framing headers, which describe a message this server does not send)."""
    headers = httputil.HTTPHeaders()
    headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
    return Response(status=resp.code, headers=headers, body=resp.body)


def _missing(namespace: str, name: str) -> StatusError:
    return StatusError(404, f'compute template "{name}" not found in namespace "{namespace}"')
