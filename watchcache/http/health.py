"""Health, readiness and metrics, and the two endpoints that answer what no route serves:
404 for an unknown path, 400 for one Go cannot decode (outside the chain: there is no path
to reason about). Health and metrics run inside the chain, so that they are authenticated
and authorized as kube-apiserver's are (anonymous may read /healthz, /livez and /readyz
under the default RBAC; /metrics needs a grant)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from watchcache.http.adapter import Route, as_get
from watchcache.kube.status import StatusError, not_found_path
from watchcache.middleware.core import Headers, Request, Response

if TYPE_CHECKING:
    from watchcache.http.context import Context

TEXT = "text/plain; charset=utf-8"


def text(body: bytes, status: int = 200, content_type: str = TEXT) -> Response:
    return Response(status=status, headers=Headers({"Content-Type": content_type}), body=body)


async def healthy(request: Request) -> Response:
    """``/healthz`` and ``/livez``: the process answers."""
    return text(b"ok")


class Ready:
    """``/readyz``: ready once every cache has synced (at once in pass-through mode), and not
    while a synced cache is known to be behind (its watch restarting, or a re-list), nor once
    the server is shutting down. A shutdown is answered as kube-apiserver answers it: 500 with
    the list of checks, ``[-]shutdown failed``, so that a load balancer stops sending traffic
    while the server still serves (``--shutdown-delay``)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    async def __call__(self, request: Request) -> Response:
        ctx = self.context
        waiting = ctx.not_ready()
        waiting += [f"{r.name} behind: {r.behind}" for r in ctx.reflectors if r.lists and r.behind]
        if ctx.shutting_down:
            failed = text(check_list({"informer-sync": not waiting, "shutdown": False}), 500)
            failed.headers["X-Content-Type-Options"] = "nosniff"
            return failed
        if waiting:
            return text(("not ready: " + ", ".join(waiting)).encode(), 503)
        return text(b"ok")


def check_list(checks: dict[str, bool]) -> bytes:
    """kube-apiserver's failing health answer: a line per check (the reason withheld, since
    anyone may read it), then the verdict."""
    lines = [
        f"[+]{name} ok" if ok else f"[-]{name} failed: reason withheld"
        for name, ok in {"ping": True, **checks}.items()
    ]
    return ("\n".join(lines) + "\nreadyz check failed\n").encode()


class Metrics:
    """``/metrics``: Prometheus text."""

    def __init__(self, context: Context) -> None:
        self.context = context

    async def __call__(self, request: Request) -> Response:
        from watchcache.metrics import render

        body = render(self.context, self.context.requests)
        return text(body, content_type="text/plain; version=0.0.4; charset=utf-8")


async def not_found(request: Request) -> Response:
    """Every path watchcache does not serve: a 404 Status, as the KubeRay APIServer gives
    (after the middleware, which may answer such paths themselves)."""
    raise not_found_path()


async def bad_path(request: Request) -> Response:
    """A path with an escape that does not decode: Go's server refuses it with a 400."""
    raise StatusError(400, "malformed HTTP request: the path has an invalid escape")


def health_routes(context: Context) -> list[tuple[str, Route]]:
    """Paths kube-apiserver answers the same whatever the method."""
    return [
        (r"/healthz", Route(healthy, other=as_get)),
        (r"/livez", Route(healthy, other=as_get)),
        (r"/readyz", Route(Ready(context), other=as_get)),
        (r"/metrics", Route(Metrics(context), other=as_get)),
    ]


NOT_FOUND = Route(not_found, other=lambda request: None)  # any method: the 404, after the chain
BAD_PATH = Route(bad_path, chained=False)
