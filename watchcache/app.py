"""The route table and the server's lifecycle: what is cached, what passes through, what is 404."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Sequence
from typing import Any

from cachetools import LRUCache
from tornado import httpserver, web
from tornado.netutil import bind_sockets

from watchcache.config import ResourceSpec, Settings
from watchcache.discovery import Discovery
from watchcache.handlers.base import (
    HealthHandler,
    MetricsHandler,
    NotFoundHandler,
    ReadyHandler,
)
from watchcache.handlers.discovery import discovery_routes
from watchcache.handlers.proxy import PassThroughHandler
from watchcache.handlers.read import CachedResource, ResourceHandler, list_path_args
from watchcache.metrics import RequestCounter
from watchcache.middleware.core import Middleware, Next, Request, Response, compose
from watchcache.middleware.kuberay import (
    KUBERAY_SERVICES,
    RAY_EVENTS,
    SERVICE_PROXY,
    Cors,
    Defaults,
    ServiceProxyGate,
    ray_events,
)
from watchcache.middleware.templates import CONFIGMAPS, ComputeTemplates
from watchcache.pagination import ContinueCodec
from watchcache.reflector import Reflector
from watchcache.store import Store
from watchcache.upstream import Credentials, Upstream, load_credentials
from watchcache.watch import Hub

log = logging.getLogger("watchcache")

RENDER_CACHE_BYTES = 256 * 1024 * 1024


class Runtime:
    """The collaborators handlers share, created once per server (no module-level singletons)."""

    def __init__(
        self, settings: Settings, upstream: Upstream, middleware: Sequence[Middleware] = ()
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.retry = settings.retry
        self.requests = RequestCounter()
        self.cached: dict[ResourceSpec, CachedResource] = {}
        self.reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._codec = ContinueCodec()
        specs = list(settings.resources) if settings.cache else []
        if settings.kuberay_features:
            specs += [CONFIGMAPS, RAY_EVENTS, KUBERAY_SERVICES]
        for spec in specs:
            self._cache(spec)
        # What discovery lists: the configured resources and any other served cache (events).
        extra = [s for s in self.cached if s.served and s not in settings.resources]
        self.discovery = Discovery(upstream, [*settings.resources, *extra])
        self.middleware: list[Middleware] = [*self._builtin_middleware(), *middleware]
        self.chain: Next = compose(self.middleware, _dispatch)

    def _cache(self, spec: ResourceSpec) -> CachedResource:
        """A Store for ``spec``, fed by one Reflector per namespace (or one for all)."""
        feeds: tuple[str | None, ...] = self.settings.namespaces or (None,)
        store = Store(feeds=feeds)
        resource = CachedResource(
            spec=spec,
            store=store,
            hub=Hub(store),
            codec=self._codec,
            # Rendered list bodies, bounded by their bytes (gzipped forms ride along).
            renders=LRUCache(maxsize=RENDER_CACHE_BYTES, getsizeof=lambda r: len(r.body)),
        )
        self.cached[spec] = resource
        for ns in feeds:
            self.reflectors.append(
                Reflector(
                    spec,
                    self.upstream,
                    store,
                    namespace=ns,
                    silence=self.settings.upstream_watch_silence,
                )
            )
        return resource

    def _builtin_middleware(self) -> list[Middleware]:
        """The KubeRay features, written on the public middleware API, outermost first."""
        settings = self.settings
        out: list[Middleware] = []
        if settings.cors_allow_origin:
            out.append(Cors(settings.cors_allow_origin))
        if settings.kuberay_features:
            out.append(ray_events)
            out.append(ServiceProxyGate(self.cached[KUBERAY_SERVICES].store))
        # Defaults first: a defaults file may name a group's computeTemplate.
        if settings.defaults_file:
            out.append(Defaults.from_file(settings.defaults_file))
        if settings.kuberay_features:
            out.append(ComputeTemplates(self.cached[CONFIGMAPS].store, self.upstream))
        return out

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(r.run()) for r in self.reflectors]

    async def stop(self) -> None:
        for resource in self.cached.values():
            resource.hub.close_all()
        # Let every stream write its terminating chunk before connections are closed.
        await asyncio.gather(*(r.hub.wait_closed(5.0) for r in self.cached.values()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def not_ready(self) -> list[str]:
        """Names of whatever is not ready yet; empty when the server may take traffic."""
        return [
            f"{spec.plural}.{spec.group} not synced"
            for spec, res in self.cached.items()
            if not res.store.synced
        ]


async def _dispatch(request: Request) -> Response:
    """The chain's innermost step: the handler the route chose does its own work."""
    return await request.handler.run_endpoint(request)  # type: ignore[attr-defined]


def routes(runtime: Runtime) -> list[Any]:
    args = {"runtime": runtime}
    table: list[Any] = [
        (r"/healthz", HealthHandler, args),
        (r"/livez", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
        (r"/metrics", MetricsHandler, args),
        *discovery_routes(runtime, runtime.discovery.specs),
    ]
    for spec, resource in runtime.cached.items():
        if not spec.served:
            continue
        for pattern, _ in list_path_args(spec):
            table.append((pattern, ResourceHandler, {"runtime": runtime, "resource": resource}))
    groups = sorted({re.escape(r.api_prefix) for r in runtime.settings.resources})
    served = "(?:" + "|".join(groups) + ")(?:/.*)?" if groups else "(?!)"
    table.append((served, PassThroughHandler, args))
    if runtime.settings.kuberay_features:
        table.append((SERVICE_PROXY, PassThroughHandler, args))
    return table


def make_app(runtime: Runtime) -> web.Application:
    return web.Application(
        routes(runtime),
        default_handler_class=NotFoundHandler,
        default_handler_args={"runtime": runtime},
        compress_response=False,
        log_function=_log_request,
    )


def _log_request(handler: web.RequestHandler) -> None:
    status = handler.get_status()
    runtime = getattr(handler, "runtime", None)
    if runtime is not None:
        runtime.requests.count(handler.request.method or "", status)
    level = logging.WARNING if status >= 500 else logging.DEBUG
    log.log(
        level,
        "%s %s %d %.1fms",
        handler.request.method,
        handler.request.uri,
        status,
        1000.0 * handler.request.request_time(),
    )


class Server:
    """One watchcache server: start it, serve, stop it. Usable as a library."""

    def __init__(
        self,
        settings: Settings,
        *,
        middleware: Sequence[Middleware] = (),
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = settings
        self.middleware = list(middleware)
        self._credentials = credentials
        self.runtime: Runtime | None = None
        self._http: httpserver.HTTPServer | None = None
        self.port: int | None = None

    async def start(self) -> None:
        creds = self._credentials or load_credentials(
            self.settings.kubeconfig, self.settings.context
        )
        self.runtime = Runtime(self.settings, Upstream(creds), self.middleware)
        self.runtime.start()
        app = make_app(self.runtime)
        self._http = httpserver.HTTPServer(app, xheaders=False, idle_connection_timeout=300)
        sockets = bind_sockets(self.settings.port, self.settings.bind)
        self.port = sockets[0].getsockname()[1]
        self._http.add_sockets(sockets)
        log.info(
            "watchcache serving on http://%s:%d (upstream %s, %s)",
            self.settings.bind,
            self.port,
            creds.server,
            "cache" if self.settings.cache else "pass-through",
        )

    async def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
        if self.runtime is not None:
            await self.runtime.stop()  # ends every watch stream cleanly first
        if self._http is not None:
            await self._http.close_all_connections()
        if self.runtime is not None:
            self.runtime.upstream.close()

    async def serve_forever(self) -> None:
        """Starts, serves until SIGINT or SIGTERM, then stops cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
