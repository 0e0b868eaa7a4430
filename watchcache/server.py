"""The route table and the server's lifecycle: what is cached, what passes through, what is 404."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
from collections.abc import Callable, Sequence

from tornado.netutil import bind_sockets

from watchcache.cache.hub import HistoryLimits, Hub
from watchcache.cache.reflector import Reflector
from watchcache.cache.resource import CachedResource, render_cache
from watchcache.cache.shared import WrittenVersions
from watchcache.cache.store import Store
from watchcache.cache.tokens import ContinueCodec
from watchcache.config import ResourceSpec, SecuritySettings, Settings
from watchcache.http.adapter import Route, Router, Served
from watchcache.http.discovery import discovery_routes
from watchcache.http.health import BAD_PATH, NOT_FOUND, health_routes
from watchcache.http.proxy import Forward, PassThrough
from watchcache.http.read import ResourceEndpoint, resource_routes
from watchcache.http.serving import (
    BoundedHTTPServer,
    ConnectionStats,
    descriptor_limit,
    fit_upstream,
)
from watchcache.http.tls import ServingCertificate
from watchcache.metrics import RequestCounter, render_own
from watchcache.middleware.core import Middleware, Next, compose
from watchcache.middleware.features import Feature, builtin_features
from watchcache.middleware.security import Security, build_security
from watchcache.upstream.client import Credentials, LineSink, Upstream, load_credentials
from watchcache.upstream.discovery import Discovery
from watchcache.workers import METRICS_EVERY, WorkerContext

log = logging.getLogger("watchcache")

# Upstream connections of the reflectors' pool beyond one per feed: a feed's next request
# may start while the connection of its last one is still being let go.
FEED_SPARE = 1
# Upstream connections for authentication and authorization reviews; answers are cached, so
# only a burst of new callers needs many at once, and it waits its turn (then is refused).
REVIEW_CONNECTIONS = 64


class Runtime:
    """The collaborators handlers share, created once per server (no module-level singletons)."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        middleware: Sequence[Middleware] = (),
        features: Sequence[Feature] | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        # The reflectors' LIST/WATCH feeds have a pool of their own, one connection per feed
        # (each holds one at a time) and one spare, so that forwarded requests filling
        # --max-upstream-connections can never keep a cache from following kube-apiserver.
        self.feeds = Upstream(upstream.credentials, max_connections=1)
        # TokenReviews and SubjectAccessReviews too: every request, cached reads included,
        # may need one, so forwarded requests filling their pool must not block them.
        self.reviews = Upstream(upstream.credentials, max_connections=REVIEW_CONNECTIONS)
        self.retry = settings.retry
        self.requests = RequestCounter()
        self.connections = ConnectionStats()  # replaced by the server's own when it starts
        # One of several workers: /metrics of them all from this worker's (see _share).
        self.whole_server: Callable[[bytes], bytes] | None = None
        self.shutting_down = False  # /readyz fails once set (Server.stop)
        self.cached: dict[ResourceSpec, CachedResource] = {}
        self.reflectors: list[Reflector[LineSink]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._codec = ContinueCodec()
        # Rendered list bodies of every resource, in one byte budget for the server.
        self.renders = render_cache(settings.render_cache_bytes)
        if features is None:
            features = builtin_features(settings, settings.feature_names())
        self.features = list(features)
        specs = list(settings.resources) if settings.cache else []
        specs += [s for f in self.features for s in f.resources]
        for spec in dict.fromkeys(specs):  # once each, in order
            self._cache(spec)
        self.feeds.max_connections = len(self.reflectors) + FEED_SPARE
        # What discovery lists: the configured resources and any other served cache (events).
        extra = [s for s in self.cached if s.served and s not in settings.resources]
        self.discovery = Discovery(upstream, [*settings.resources, *extra])
        built = [f.middleware(self) for f in self.features if f.middleware is not None]
        # Security runs outermost but for CORS (a browser's preflight carries no credential).
        self.security: Security | None = None
        if settings.security.enabled:
            rules = [f.attributes for f in self.features if f.attributes is not None]
            self.security = build_security(settings.security, self.reviews, rules)
            at = 1 if self.features and self.features[0].name == "cors" else 0
            built.insert(at, self.security)
        self.middleware: list[Middleware] = [*built, *middleware]
        self.chain: Next = compose(self.middleware)

    def _cache(self, spec: ResourceSpec) -> CachedResource:
        """A Store for ``spec``, fed by one Reflector per namespace (or one for all)."""
        feeds: tuple[str | None, ...] = self.settings.namespaces or (None,)
        store = Store(feeds=feeds)
        resource = CachedResource(
            spec=spec,
            store=store,
            hub=Hub(
                store,
                HistoryLimits(
                    count=self.settings.watch_history_events,
                    age=self.settings.watch_history_seconds,
                ),
            ),
            codec=self._codec,
            renders=self.renders,
            stall_timeout=self.settings.watch_stall_timeout,
        )
        self.cached[spec] = resource
        for ns in feeds:
            self.reflectors.append(
                Reflector(
                    spec,
                    self.feeds,
                    store,
                    namespace=ns,
                    silence=self.settings.upstream_watch_silence,
                )
            )
        return resource

    def pools(self) -> list[Upstream]:
        """Every pool of upstream connections: forwarded requests', the reflectors', the
        reviews' (the descriptors they may take are kept from the clients)."""
        return [self.upstream, self.feeds, self.reviews]

    def store(self, spec: ResourceSpec) -> Store:
        """A feature's cached resource (the FeatureContext its middleware is built with)."""
        return self.cached[spec].store

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(r.run()) for r in self.reflectors]

    def close_watches(self) -> None:
        """Tells every watch stream to end (its queue, a last bookmark, its final chunk)."""
        for resource in self.cached.values():
            resource.hub.close_all()

    async def end_watches(self, timeout: float = 5.0) -> None:
        """Ends every watch stream cleanly; the caches stay fed (writes in flight wait on them)."""
        self.close_watches()
        # Let every stream write its terminating chunk before connections are closed.
        await asyncio.gather(*(r.hub.wait_closed(timeout) for r in self.cached.values()))

    async def stop(self) -> None:
        self.close_watches()  # none left open after Server.stop; this one stops too
        # Cancelled again while any is left (bounded): Python 3.11's wait_for drops a
        # cancellation that meets a result ready at the same moment (a connect, a page).
        pending = list(self._tasks)
        for _ in range(50):
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
            pending = [t for t in pending if not t.done()]
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a reflector's end needs no log line

    def counters(self) -> list[tuple[str, str, float]]:
        """Counters of the parts /metrics does not know by name (authentication, authorization)."""
        return self.security.counters() if self.security is not None else []

    def not_ready(self) -> list[str]:
        """Names of whatever is not ready yet; empty when the server may take traffic."""
        return [
            f"{spec.plural}.{spec.group} not synced"
            for spec, res in self.cached.items()
            if not res.store.synced
        ]


def routes(runtime: Runtime) -> list[tuple[str, Route]]:
    """Every path served, first match wins: each cached resource, health, discovery, then the
    served groups' other paths and the features' forwarded ones (pass-through)."""
    # Sent upstream under the caller's name whenever callers are authenticated.
    impersonate = runtime.settings.security.authenticating
    forward = Forward(
        runtime.upstream, runtime.retry, runtime.settings.upstream_timeout, impersonate=impersonate
    )
    # The cached resources first: they take nearly every request, and the router tries the
    # rules in order. No path of theirs (a group version, then namespaces/NS/PLURAL or
    # PLURAL) is also a health or discovery path, so the order changes no answer.
    table = []
    for spec, resource in runtime.cached.items():
        if spec.served:
            route = Route(ResourceEndpoint(resource, forward, runtime.discovery), resource=spec)
            table += [(pattern, route) for pattern in resource_routes(spec)]
    table += [*health_routes(runtime), *discovery_routes(runtime.discovery, forward)]
    for feature in runtime.features:
        if feature.endpoints is not None:
            table += [(p, Route(e)) for p, e in feature.endpoints(runtime)]
    passthrough = Route(PassThrough(forward))
    groups = sorted({re.escape(r.api_prefix) for r in runtime.settings.resources})
    served = "(?:" + "|".join(groups) + ")(?:/.*)?" if groups else "(?!)"
    table.append((served, passthrough))
    for feature in runtime.features:
        table.extend((pattern, passthrough) for pattern in feature.forwards)
    return table


def make_app(runtime: Runtime) -> Router:
    """The HTTP application: every route, matched on the decoded path as kube-apiserver
    matches its routes (watchcache.kube.gourl), served by one exchange per request."""
    served = Served(runtime.chain, runtime.requests.count)
    return Router(
        routes(runtime),
        served,
        fallback=NOT_FOUND,
        undecodable=BAD_PATH,
        max_query_params=runtime.settings.limits.max_query_params,
    )


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_exposure(settings: Settings) -> None:
    """Refuses (ValueError, one line) to serve a non-loopback address with no authentication,
    unless asked to; warns when asked to."""
    sec = settings.security
    if settings.bind in LOOPBACK or settings.bind.startswith("127.") or sec.authenticating:
        return
    if not sec.allow_unauthenticated:
        raise ValueError(
            f"refusing to serve {settings.bind} without authentication: anyone who reaches the"
            " port would act with watchcache's own rights; give --authentication (see README,"
            ' "Security") or --allow-unauthenticated'
        )
    log.warning(
        "serving %s WITHOUT authentication (--allow-unauthenticated): anyone who reaches the"
        " port acts with watchcache's own rights",
        settings.bind,
    )


def security_summary(sec: SecuritySettings) -> str:
    modes = ",".join(m for m in sec.authentication if m != "none") or "none"
    return f"authentication {modes}, authorization {sec.authorization_mode}"


class Server:
    """One watchcache server: start it, serve, stop it. Usable as a library."""

    def __init__(
        self,
        settings: Settings,
        *,
        middleware: Sequence[Middleware] = (),
        features: Sequence[Feature] | None = None,
        credentials: Credentials | None = None,
        sockets: Sequence[socket.socket] | None = None,
        worker: WorkerContext | None = None,
    ) -> None:
        """``features``: the features to run (see middleware.features); None, the built-in
        KubeRay ones that ``settings`` asks for; ``[]``, none. ``middleware`` run after them.
        ``sockets``: listening sockets bound already (else --bind and --port are bound);
        ``worker``: this server is one of several workers (watchcache.workers)."""
        self.settings = settings
        self._sockets = list(sockets) if sockets is not None else None
        self.worker = worker
        self._written: WrittenVersions | None = None
        self._publisher: asyncio.Task[None] | None = None
        self.middleware = list(middleware)
        self.features = None if features is None else list(features)
        self._credentials = credentials
        self.runtime: Runtime | None = None
        self._http: BoundedHTTPServer | None = None
        self.port: int | None = None

    async def start(self) -> None:
        check_exposure(self.settings)
        creds = self._credentials or load_credentials(
            self.settings.kubeconfig, self.settings.context
        )
        limits = self.settings.limits
        upstream = Upstream(
            creds,
            max_connections=limits.max_upstream_connections,
            wait=limits.upstream_connection_wait,
        )
        self.runtime = Runtime(self.settings, upstream, self.middleware, self.features)
        others = sum(u.max_connections for u in self.runtime.pools() if u is not upstream)
        upstream.max_connections = fit_upstream(
            upstream.max_connections, others, descriptor_limit()
        )
        if upstream.max_connections < limits.max_upstream_connections:
            log.warning(
                "--max-upstream-connections lowered to %d to fit the descriptor limit",
                upstream.max_connections,
            )
        if self.worker is not None:
            self._share(self.worker, self.runtime)
        self.runtime.start()
        app = make_app(self.runtime)
        sec = self.settings.security
        tls = None
        if sec.tls_cert_file or sec.tls_private_key_file:
            if not (sec.tls_cert_file and sec.tls_private_key_file):
                raise ValueError("TLS needs both --tls-cert-file and --tls-private-key-file")
            tls = ServingCertificate(
                sec.tls_cert_file, sec.tls_private_key_file, sec.client_ca_file
            )
        upstream_bound = sum(u.max_connections for u in self.runtime.pools())
        self._http = BoundedHTTPServer(app, limits, tls, upstream=upstream_bound)
        self.runtime.connections = self._http.stats
        sockets = self._sockets or bind_sockets(self.settings.port, self.settings.bind)
        self.port = sockets[0].getsockname()[1]
        self._http.add_sockets(sockets)
        log.info(
            "watchcache serving on %s://%s:%d (upstream %s, %s, at most %d connections, "
            "%d upstream, %s)",
            "https" if tls is not None else "http",
            self.settings.bind,
            self.port,
            creds.server,
            "cache" if self.settings.cache else "pass-through",
            self._http.max_connections,
            upstream.max_connections,
            security_summary(sec),
        )

    def _share(self, worker: WorkerContext, runtime: Runtime) -> None:
        """One of several workers: the shared written versions, and /metrics of them all."""
        self._written = WrittenVersions(worker.written_path)
        for resource in runtime.cached.values():
            resource.written = self._written
        runtime.whole_server = worker.merged
        self._publisher = asyncio.ensure_future(self._publish(worker, runtime, os.getppid()))

    async def _publish(self, worker: WorkerContext, runtime: Runtime, parent: int) -> None:
        """Writes this worker's metrics for the others every second; stops this worker
        when its supervisor is gone."""
        while True:
            try:
                worker.publish(render_own(runtime, runtime.requests))
            except OSError as exc:
                log.warning("cannot write this worker's metrics: %s", exc)
            if os.getppid() != parent:
                log.warning("the supervisor is gone; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await asyncio.sleep(METRICS_EVERY)

    async def stop(self) -> None:
        """The shutdown, in kube-apiserver's order: /readyz fails at once while everything is
        still served for --shutdown-delay (load balancers take the server out first); then
        accepting stops and idle connections close; every watch ends cleanly (its queue
        written, a last bookmark if it asked for bookmarks, its final chunk); requests in
        flight finish within --shutdown-grace (writes still wait for the cache); only then
        do the caches stop and what is left close."""
        limits = self.settings.limits
        if self.runtime is not None:
            self.runtime.shutting_down = True
            if self._http is not None and limits.shutdown_delay > 0:
                log.info(
                    "/readyz fails; serving %gs more (--shutdown-delay)", limits.shutdown_delay
                )
                await asyncio.sleep(limits.shutdown_delay)
        loop = asyncio.get_running_loop()
        grace = limits.shutdown_grace
        deadline = loop.time() + grace
        if self._http is not None:
            self._http.stop()
            self._http.drain()
        if self.runtime is not None:
            await self.runtime.end_watches(min(grace, 5.0))
        if self._http is not None and not await self._http.wait_idle(
            max(0.0, deadline - loop.time())
        ):
            log.warning(
                "%d requests still in flight after %gs; closing them", self._http.busy(), grace
            )
        if self.runtime is not None:
            await self.runtime.stop()
        if self._http is not None:
            await self._http.close_all_connections()
        if self.runtime is not None:
            for pool in self.runtime.pools():
                pool.close()
        if self._publisher is not None:
            self._publisher.cancel()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
