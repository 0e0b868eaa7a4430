"""The route table and the server's lifecycle: what is cached, what passes through, what is 404."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from typing import Any

from cachetools import LRUCache
from tornado import httpserver, web
from tornado.netutil import bind_sockets

from watchcache.config import ResourceSpec, Settings
from watchcache.handlers.base import HealthHandler, NotFoundHandler, ReadyHandler
from watchcache.handlers.proxy import PassThroughHandler
from watchcache.handlers.read import CachedResource, ResourceHandler, list_path_args
from watchcache.pagination import ContinueCodec
from watchcache.reflector import Reflector
from watchcache.store import Store
from watchcache.upstream import Credentials, Upstream, load_credentials
from watchcache.watch import Hub

log = logging.getLogger("watchcache")


class Runtime:
    """The collaborators handlers share, created once per server (no module-level singletons)."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.settings = settings
        self.upstream = upstream
        self.retry = settings.retry
        self.cached: dict[ResourceSpec, CachedResource] = {}
        self.reflectors: list[Reflector] = []
        self._tasks: list[asyncio.Task[None]] = []
        if settings.cache:
            codec = ContinueCodec()
            feeds: tuple[str | None, ...] = settings.namespaces or (None,)
            for spec in settings.resources:
                store = Store(feeds=feeds)
                self.cached[spec] = CachedResource(
                    spec=spec,
                    store=store,
                    hub=Hub(store),
                    codec=codec,
                    renders=LRUCache(maxsize=256),
                )
                for ns in feeds:
                    self.reflectors.append(Reflector(spec, upstream, store, namespace=ns))

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(r.run()) for r in self.reflectors]

    async def stop(self) -> None:
        for resource in self.cached.values():
            resource.hub.close_all()
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


def routes(runtime: Runtime) -> list[Any]:
    args = {"runtime": runtime}
    table: list[Any] = [
        (r"/healthz", HealthHandler, args),
        (r"/livez", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
    ]
    for spec, resource in runtime.cached.items():
        for pattern, _ in list_path_args(spec):
            table.append((pattern, ResourceHandler, {"runtime": runtime, "resource": resource}))
    groups = sorted({re.escape(r.api_prefix) for r in runtime.settings.resources})
    served = "(?:" + "|".join(groups) + ")(?:/.*)?" if groups else "(?!)"
    table.append((served, PassThroughHandler, args))
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

    def __init__(self, settings: Settings, *, credentials: Credentials | None = None) -> None:
        self.settings = settings
        self._credentials = credentials
        self.runtime: Runtime | None = None
        self._http: httpserver.HTTPServer | None = None
        self.port: int | None = None

    async def start(self) -> None:
        creds = self._credentials or load_credentials(
            self.settings.kubeconfig, self.settings.context
        )
        self.runtime = Runtime(self.settings, Upstream(creds))
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
            await asyncio.sleep(0.05)
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
