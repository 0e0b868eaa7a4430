"""The KubeRay APIServer's other features, each a middleware: Ray events, the dashboard and
job-submission service proxy gate, default values, and CORS."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from watchcache.cache.store import Store
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError, method_not_allowed
from watchcache.middleware.core import Headers, Next, Request, Response

# Only events about Ray resources are ever cached: the limit is the cache's own upstream
# selector, so no user selector can widen it.
RAY_EVENTS = ResourceSpec(
    group="events.k8s.io",
    version="v1",
    plural="events",
    kind="Event",
    field_selector="regarding.apiVersion=ray.io/v1",
)
KUBERAY_SERVICES = ResourceSpec(
    group="",
    version="v1",
    plural="services",
    kind="Service",
    label_selector="app.kubernetes.io/name=kuberay",
    served=False,
)
SERVICE_PROXY = (
    r"/api/v1/namespaces/(?P<namespace>[^/]+)/services/(?P<service>[^/]+)/proxy(?P<rest>/.*)?"
)
_SERVICE_PROXY = re.compile(SERVICE_PROXY + "$")


async def ray_events(request: Request, call_next: Next) -> Response:
    """The events endpoint is read-only: list, get and watch of Ray events."""
    spec = request.resource
    if spec is RAY_EVENTS and request.method not in ("GET", "HEAD"):
        raise method_not_allowed({"group": "events.k8s.io", "kind": "events"})
    return await call_next(request)


def _service_name(text: str) -> str:
    """The Service of a proxy path's ``[scheme:]name[:port]`` part, split as the API server
    splits it (``SplitSchemeNamePort``): two parts are always ``name:port``, three are
    ``scheme:name:port`` with scheme http, https or empty. Anything else is a 400."""
    parts = text.split(":")
    if len(parts) in (1, 2):
        scheme, name = "", parts[0]
    elif len(parts) == 3:
        scheme, name = parts[0], parts[1]
    else:
        scheme, name = "", ""
    if not name or scheme not in ("", "http", "https"):
        raise StatusError(400, f'invalid service request "{text}"')
    return name


class ServiceProxyGate:
    """Passes the Ray dashboard and job-submission proxy through only for KubeRay Services."""

    def __init__(self, services: Store) -> None:
        self.services = services

    async def __call__(self, request: Request, call_next: Next) -> Response:
        m = _SERVICE_PROXY.match(request.path)
        if m is None:
            return await call_next(request)
        name = _service_name(m["service"])
        if self.services.get(m["namespace"], name) is None:
            raise StatusError(
                404,
                f'services "{name}" not found',
                details={
                    "name": name,
                    "kind": "services",
                    "causes": [{"message": "kuberay service not found"}],
                },
            )
        if not m["rest"]:
            # The API server answers ".../proxy" with a redirect to ".../proxy/"; go there at once.
            request.path += "/"
        return await call_next(request)


def merge_defaults(obj: Any, defaults: Any) -> Any:
    """``obj`` with every field it leaves unset taken from ``defaults`` (objects merge
    recursively; a value the request gives, list or scalar, always wins)."""
    if isinstance(obj, dict) and isinstance(defaults, dict):
        out = dict(obj)
        for key, value in defaults.items():
            given = obj.get(key)
            # A null is unset too: "image: null" in a YAML body is a request for the default.
            out[key] = copy.deepcopy(value) if given is None else merge_defaults(given, value)
        return out
    return obj


class Defaults:
    """Default values for created Ray resources, from a YAML file::

    all:                      # every Ray resource
      metadata: {labels: {team: ray}}
    rayclusters:              # one resource; merged over "all"
      spec: {headGroupSpec: {rayStartParams: {dashboard-host: 0.0.0.0}}}
    image: rayproject/ray:2.46.0   # for every Ray container that names no image
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    @classmethod
    def from_file(cls, path: str) -> Defaults:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the defaults file must hold a mapping")
        return cls(values)

    async def __call__(self, request: Request, call_next: Next) -> Response:
        spec = request.resource
        if (
            request.method == "POST"
            and spec is not None
            and spec.group == "ray.io"
            and request.body
        ):
            obj = request.json()
            if isinstance(obj, dict):
                merged = merge_defaults(obj, self.values.get(spec.plural) or {})
                merged = merge_defaults(merged, self.values.get("all") or {})
                image = self.values.get("image")
                if image:
                    _default_images(merged, str(image))
                request.set_json(merged)
        return await call_next(request)


def _default_images(obj: Any, image: str) -> None:
    """Sets ``image`` on every container of every pod template that has none. A loop, not
    recursion: a body may nest 10,000 deep."""
    work = [obj]
    while work:
        node = work.pop()
        if isinstance(node, dict):
            containers = node.get("containers")
            if isinstance(containers, list):
                for container in containers:
                    if isinstance(container, dict) and not container.get("image"):
                        container["image"] = image
            work.extend(node.values())
        elif isinstance(node, list):
            work.extend(node)


class Cors:
    """``Access-Control-Allow-Origin`` on every answer, and preflight ``OPTIONS`` answered,
    so a browser dashboard on another origin can call the server."""

    METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"

    def __init__(self, origin: str) -> None:
        self.origin = origin

    async def __call__(self, request: Request, call_next: Next) -> Response:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers = Headers()
            headers["Access-Control-Allow-Methods"] = self.METHODS
            asked = request.headers.get("Access-Control-Request-Headers")
            headers["Access-Control-Allow-Headers"] = asked or "Content-Type, Authorization"
            headers["Access-Control-Max-Age"] = "600"
            response = Response(status=204, headers=headers, body=b"")
        else:
            response = await call_next(request)
        response.headers["Access-Control-Allow-Origin"] = self.origin
        if self.origin != "*":
            response.headers.add("Vary", "Origin")
        return response
