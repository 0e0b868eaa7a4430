"""Features: what a piece of behaviour needs of the server, declared in one value.

A ``Feature`` names the resources it needs cached (beyond the served Ray resources), builds
its middleware once those caches exist, from a ``FeatureContext`` that hands it a store by
spec and the upstream client, and may serve endpoints of its own (``async (Request) ->
Response`` on a path pattern, inside the middleware chain like every endpoint). The
built-in KubeRay features below use exactly this API, nothing more;
``Server(settings, features=[...])`` takes any list of them, and ``features=[]`` serves the
plain Ray resources alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from watchcache.config import FEATURES
from watchcache.kube.attributes import Attributes
from watchcache.kube.resources import ResourceSpec
from watchcache.middleware.core import Endpoint, Middleware, Request
from watchcache.middleware.kuberay import (
    KUBERAY_SERVICES,
    RAY_EVENTS,
    SERVICE_PROXY,
    Cors,
    Defaults,
    ServiceProxyGate,
    ray_events,
)
from watchcache.middleware.templates import CONFIGMAPS, ComputeTemplates, template_attributes

if TYPE_CHECKING:
    from watchcache.cache.store import Store
    from watchcache.config import Settings
    from watchcache.upstream.client import Upstream


class FeatureContext(Protocol):
    """What a feature's middleware may use of the server."""

    @property
    def settings(self) -> Settings: ...

    @property
    def upstream(self) -> Upstream: ...

    def store(self, spec: ResourceSpec) -> Store:
        """The cache of a resource the feature declared (KeyError for any other)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One feature: its name, the resources it needs cached, its middleware, its endpoints."""

    name: str
    resources: tuple[ResourceSpec, ...] = ()
    middleware: Callable[[FeatureContext], Middleware] | None = None
    # (path pattern, endpoint) pairs the feature serves itself, built once caches exist.
    endpoints: Callable[[FeatureContext], Sequence[tuple[str, Endpoint]]] | None = None
    # The authorization attributes of the feature's own paths (None: kube-apiserver's).
    attributes: Callable[[Request], Attributes | None] | None = None
    # Path patterns (regular expressions) the feature's middleware answers or gates and
    # that then go through to the API server, like any write.
    forwards: tuple[str, ...] = ()


def cors(origin: str) -> Feature:
    """Access-Control headers for a browser dashboard served from ``origin``."""
    return Feature(name="cors", middleware=lambda ctx: Cors(origin))


def events() -> Feature:
    """``events.k8s.io`` events, limited to those about Ray resources, from the cache."""
    return Feature(name="ray-events", resources=(RAY_EVENTS,), middleware=lambda ctx: ray_events)


def service_proxy() -> Feature:
    """The Ray dashboard and job submission through ``services/proxy``, for KubeRay's
    Services only."""
    return Feature(
        name="service-proxy",
        resources=(KUBERAY_SERVICES,),
        middleware=lambda ctx: ServiceProxyGate(ctx.store(KUBERAY_SERVICES)),
        forwards=(SERVICE_PROXY,),
    )


def defaults(path: str) -> Feature:
    """Default values (a YAML file) merged into created Ray resources."""
    return Feature(name="defaults", middleware=lambda ctx: Defaults.from_file(path))


def compute_templates() -> Feature:
    """KubeRay's compute templates: their v1 routes, and applied on create and update."""
    return Feature(
        name="compute-templates",
        resources=(CONFIGMAPS,),
        middleware=lambda ctx: ComputeTemplates(ctx.store(CONFIGMAPS), ctx.upstream),
        attributes=template_attributes,  # templates are ConfigMaps: authorized as such
    )


NAMES = FEATURES  # the names `--features` takes, in the order the chain runs them


def builtin_features(settings: Settings, names: Sequence[str] = NAMES) -> list[Feature]:
    """The built-in features ``names`` asks for, as ``settings`` configures them (CORS needs
    an origin, defaults a file: without one, each is left out)."""
    unknown = set(names) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown features: {', '.join(sorted(unknown))}; known: {NAMES}")
    out: list[Feature] = []
    for name in NAMES:
        if name not in names:
            continue
        if name == "cors" and settings.cors_allow_origin:
            out.append(cors(settings.cors_allow_origin))
        elif name == "ray-events":
            out.append(events())
        elif name == "service-proxy":
            out.append(service_proxy())
        elif name == "defaults" and settings.defaults_file:
            out.append(defaults(settings.defaults_file))
        elif name == "compute-templates":
            out.append(compute_templates())
    return out
