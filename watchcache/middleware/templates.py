"""Compute templates, compatible with the KubeRay APIServer.

A template is a ConfigMap labelled ``ray.io/config-type: compute-template`` (kept in a
cache of its own), in the format KubeRay itself stores. A Ray resource created or replaced
with ``computeTemplate: NAME`` in its head group or a worker group gets that template's
resources, tolerations and an annotation naming it; the field itself is removed before the
object reaches the API server, whose CRD schema does not know it. KubeRay's v1 endpoints
that manage templates are answered here in KubeRay's own protocol (``templates_v1``).

Only those endpoints and bodies that name a ``computeTemplate`` are this middleware's
business: any other body goes on to the API server untouched, undecoded, so that what
kube-apiserver accepts (invalid UTF-8, lone surrogates, deep nesting) is never refused here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson

from watchcache.cache.store import Store
from watchcache.kube.attributes import Attributes
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError
from watchcache.middleware import templates_v1 as v1
from watchcache.middleware.core import Next, Request, Response
from watchcache.middleware.templates_v1 import LABEL, LABEL_VALUE
from watchcache.upstream.client import Response as UpstreamResponse
from watchcache.upstream.client import Upstream, UpstreamError

__all__ = ["ANNOTATION", "CONFIGMAPS", "LABEL", "LABEL_VALUE", "ComputeTemplates"]

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
MARKER = b"computeTemplate"
# A non-negative Kubernetes quantity (resource.ParseQuantity's grammar, without a sign).
_QUANTITY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


# ---- a template's values, as a Ray resource gets them ----------------------------------------
@dataclass(frozen=True, slots=True)
class Resources:
    """What a template gives a group, checked: quantities as Kubernetes writes them."""

    cpu: str
    memory: str
    gpu: str
    accelerator: str
    extended: dict[str, str]
    tolerations: list[dict[str, Any]]


def template_resources(name: str, namespace: str, data: dict[str, Any]) -> Resources:
    """The template ConfigMap's ``data``, validated when it is read: a malformed template
    is a 422 naming it and the field, never a 500 for every create that names it."""

    def invalid(key: str, why: str) -> StatusError:
        return StatusError(
            422,
            f'compute template "{name}" in namespace "{namespace}" is invalid: data.{key}: {why}',
            details={
                "name": name,
                "kind": "configmaps",
                "causes": [{"reason": "FieldValueInvalid", "message": why, "field": f"data.{key}"}],
            },
        )

    def quantity(key: str, value: str, required: bool) -> str:
        if not value and required:
            raise invalid(key, "Required value")
        if not _QUANTITY.fullmatch(value):
            raise invalid(key, f"{_shown(value)} is not a non-negative Kubernetes quantity")
        return value

    def loaded(key: str) -> Any:
        text = data.get(key)
        if text in (None, "", "null"):
            return None
        try:
            return json.loads(str(text))
        except (ValueError, RecursionError):
            raise invalid(key, f"{_shown(text)} is not JSON") from None

    cpu = quantity("cpu", str(data.get("cpu", "")), True)
    memory = str(data.get("memory", ""))
    if not memory:
        raise invalid("memory", "Required value")
    memory = quantity("memory", memory + str(data.get("memory_unit") or "Gi"), True)
    gpu = quantity("gpu", str(data.get("gpu") or "0"), False)

    extended = loaded("extended_resources") or {}
    if not isinstance(extended, dict) or not all(
        (type(v) is int and v >= 0) or (isinstance(v, str) and _QUANTITY.fullmatch(v))
        for v in extended.values()
    ):
        raise invalid(
            "extended_resources",
            "must be a JSON object of resource names to non-negative integers, not "
            + _shown(data.get("extended_resources")),
        )
    tolerations = loaded("tolerations") or []
    if not isinstance(tolerations, list) or not all(
        isinstance(t, dict)
        and all(isinstance(t.get(k, ""), str) for k in ("key", "operator", "value", "effect"))
        for t in tolerations
    ):
        raise invalid(
            "tolerations",
            "must be a JSON array of tolerations (objects whose key, operator, value and "
            f"effect are strings), not {_shown(data.get('tolerations'))}",
        )
    return Resources(
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        accelerator=str(data.get("gpu_accelerator") or "nvidia.com/gpu"),
        extended={k: str(v) for k, v in extended.items()},
        tolerations=tolerations,
    )


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


def apply_template(group: dict[str, Any], main: str, name: str, res: Resources) -> None:
    """Sets one group's pod template as the template says: cpu and memory on every
    container, GPUs and extended resources on the Ray one, tolerations appended."""
    template = group.setdefault("template", {})
    meta = template.setdefault("metadata", {})
    meta.setdefault("annotations", {})[ANNOTATION] = name
    pod = template.setdefault("spec", {})
    containers = pod.setdefault("containers", [])
    if not containers:
        containers.append({"name": main})
    for container in containers:
        resources = container.setdefault("resources", {})
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {}).update({"cpu": res.cpu, "memory": res.memory})
    target = next((c for c in containers if c.get("name") == main), containers[0])
    extra = dict(res.extended)
    gpus = _QUANTITY.fullmatch(res.gpu)
    if gpus and gpus[1].strip("0.") != "":  # a quantity whose number is not zero
        extra[res.accelerator] = res.gpu
    for kind in ("requests", "limits"):
        target["resources"][kind].update(extra)
    if res.tolerations:
        pod.setdefault("tolerations", []).extend(res.tolerations)


# ---- the bodies of Ray resources ---------------------------------------------------------------
def _decoded(request: Request) -> object | None:
    """The body, as the shared bounded decoder reads it (as kube-apiserver does: invalid
    UTF-8 and lone surrogates replaced, 10,000 levels deep); None for JSON it refuses, which
    goes on untouched for kube-apiserver to refuse in its own words. YAML refusals stand."""
    try:
        return request.json()
    except StatusError as err:
        if err.code == 400 and "yaml" not in request.content_type:
            return None
        raise


def _set_body(request: Request, obj: object) -> None:
    request.set_json(obj)  # any depth; held to the 3 MiB body limit


# ---- KubeRay's v1 routes -----------------------------------------------------------------------
def v1_route(path: str) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of a KubeRay compute-template path, or None for another path.
    Kind "all", "list" or "one"; "none" for a path under compute_templates that KubeRay's
    gateway routes nowhere. The path is decoded before it is split, as the gateway does."""
    parts = unquote(path)[1:].split("/")
    if parts[:2] != ["apis", "v1"]:
        return None
    rest = parts[2:]
    if rest[:1] == ["compute_templates"]:
        kind = "all" if len(rest) == 1 else "none"
        return kind, "", ""
    if len(rest) < 3 or rest[0] != "namespaces" or rest[2] != "compute_templates":
        return None
    # KubeRay's HTTP server redirects an unclean path ("//", "." or ".."): nothing is there.
    if "" in parts[:-1] or "." in parts or ".." in parts:
        return "none", "", ""
    if len(rest) == 3:
        return "list", rest[1], ""
    return ("one", rest[1], rest[3]) if len(rest) == 4 else ("none", "", "")


METHODS = {"all": ("GET",), "list": ("GET", "POST"), "one": ("GET", "DELETE")}
TEMPLATE_VERBS = {"all": "list", "list": "list", "one": "get"}


def template_attributes(request: Request) -> Attributes | None:
    """A compute-template route is authorized as what it reads and writes: ConfigMaps of
    its namespace (all namespaces for the cluster-wide list)."""
    route = v1_route(request.path)
    if route is None or route[0] == "none":
        return None
    kind, namespace, name = route
    verb = {"POST": "create", "DELETE": "delete"}.get(request.method, TEMPLATE_VERBS[kind])
    return Attributes(
        resource_request=True,
        verb=verb,
        version="v1",
        resource="configmaps",
        namespace=namespace,
        name=name,
    )


NAMESPACE_DIFFERS = (
    "The namespace in the request is different from the namespace defined in the compute template."
)


class ComputeTemplates:
    """The compute-template middleware: applies templates, and serves the v1 endpoints."""

    def __init__(self, store: Store, upstream: Upstream) -> None:
        self.store = store
        self.upstream = upstream

    async def __call__(self, request: Request, call_next: Next) -> Response:
        route = v1_route(request.path)
        if route is not None:
            try:
                return await self._endpoint(request, *route)
            except v1.V1Error as err:
                resp = Response.json(err.body(), err.http_status)
                if err.retry_after:
                    resp.headers["Retry-After"] = err.retry_after
                return resp
        spec = request.resource
        if (
            request.method in ("POST", "PUT")
            and spec is not None
            and spec.plural in RAY_PLURALS
            and not request.path_params.get("subresource")
            and MARKER in request.body
        ):
            self._apply(request)
        return await call_next(request)

    def _apply(self, request: Request) -> None:
        obj = _decoded(request)
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
            apply_template(group, main, str(name), template_resources(str(name), namespace, data))
        if changed:
            _set_body(request, obj)

    # ---- the endpoints -----------------------------------------------------------------------
    async def _endpoint(self, request: Request, kind: str, ns: str, name: str) -> Response:
        if kind == "none":
            raise v1.route_not_found()
        if request.method not in METHODS[kind]:
            raise v1.method_not_allowed()
        if not self.store.synced:
            raise v1.unavailable("the compute templates are not loaded yet")
        if kind == "all":
            return self._list(None)
        if kind == "list":
            return self._list(ns) if request.method == "GET" else await self._create(ns, request)
        if not name:
            raise v1.invalid_input(v1.EMPTY_NAME)
        if request.method == "DELETE":
            return await self._delete(ns, name)
        entry = self.store.get(ns, name)
        if entry is None:
            raise v1.not_found(name, deleting=False)
        return Response.json(v1.render(v1.from_configmap(orjson.loads(entry.raw))))

    def _list(self, namespace: str | None) -> Response:
        entries = sorted(self.store.entries_in(namespace), key=lambda e: (e.namespace, e.name))
        items = [v1.render(v1.from_configmap(orjson.loads(e.raw))) for e in entries]
        # An empty list is an unpopulated field, which KubeRay leaves out: "{}".
        return Response.json({"computeTemplates": items} if items else {})

    async def _create(self, namespace: str, request: Request) -> Response:
        tpl = v1.decode(request.body)
        if tpl.namespace != namespace:
            raise v1.invalid_create(NAMESPACE_DIFFERS)
        if not tpl.name:
            raise v1.invalid_create(v1.EMPTY_NAME)
        if tpl.cpu == 0:
            raise v1.invalid_create("Cpu amount is zero. Please specify a valid value.")
        if tpl.memory == 0:
            raise v1.invalid_create("Memory amount is zero. Please specify a valid value.")
        if self.store.get(namespace, tpl.name) is not None:
            raise v1.already_exists(tpl.name, namespace)
        cm = v1.to_configmap(tpl)
        resp = await self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/configmaps", cm)
        if resp.code == 409:
            raise v1.already_exists(tpl.name, namespace)
        if resp.code != 201:
            raise _refused(resp, "Create")
        created = orjson.loads(resp.body)
        await self.store.wait_for(int(created["metadata"]["resourceVersion"]), 5.0)
        return Response.json(v1.render(v1.from_configmap(created)))

    async def _delete(self, namespace: str, name: str) -> Response:
        if self.store.get(namespace, name) is None:
            raise v1.not_found(name, deleting=True)
        target = f"/api/v1/namespaces/{quote(namespace)}/configmaps/{quote(name, safe='')}"
        resp = await self._call("DELETE", target)
        if resp.code == 404:
            raise v1.not_found(name, deleting=True)
        if resp.code not in (200, 202):
            raise _refused(resp, "Delete")
        for _ in range(50):  # read-your-writes: the next GET no longer finds it
            if self.store.get(namespace, name) is None:
                break
            await self.store.wait_for(self.store.rv + 1, 0.1)
        return Response.json({})

    async def _call(self, method: str, target: str, obj: object = None) -> UpstreamResponse:
        """One write to kube-apiserver; not reaching it is 503 Unavailable with Retry-After
        (as a write through the proxy answers once its retries are spent)."""
        headers = {"Accept": "application/json"}
        if obj is not None:
            headers["Content-Type"] = "application/json"
        try:
            return await self.upstream.fetch(
                method,
                target,
                headers=headers,
                body=orjson.dumps(obj) if obj is not None else None,
            )
        except UpstreamError as exc:
            raise v1.unavailable(f"the Kubernetes API server is unavailable: {exc}") from exc


def _refused(resp: UpstreamResponse, action: str) -> v1.V1Error:
    """kube-apiserver's refusal, with its message, as a gRPC status."""
    try:
        message = str(orjson.loads(resp.body).get("message") or "")
    except (orjson.JSONDecodeError, AttributeError):
        message = ""
    message = message or resp.body[:200].decode("utf-8", "replace") or f"HTTP {resp.code}"
    return v1.from_kube(resp.code, message, resp.headers.get("Retry-After"), action)
