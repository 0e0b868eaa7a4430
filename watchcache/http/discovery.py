"""``/version``, discovery and OpenAPI, answered from ``watchcache.upstream.discovery``'s documents;
and the one core path kubectl needs besides (a namespace's GET).

The documents are the API server's, filtered to what watchcache serves and kept for a TTL
(see ``watchcache.upstream.discovery``); this handler adds HTTP around them: the ETag and 304, gzip,
OpenAPI v3's ``?hash=`` URLs (immutable when the hash is current, a 301 to the current one
otherwise, as the API server does), and 406 for an OpenAPI format watchcache does not render
(protobuf), on which clients fall back to JSON.
"""

from __future__ import annotations

import contextlib
import re
import time
from email.utils import formatdate
from typing import Literal

import orjson

from watchcache.http.adapter import Route
from watchcache.http.proxy import Forward, NamespaceGet
from watchcache.kube.negotiation import accepts_json, parse_accept, restful_accepts_json
from watchcache.kube.status import StatusError, method_not_allowed, not_found_path
from watchcache.kube.wire import go_indent
from watchcache.middleware.core import Headers, Request, Response
from watchcache.upstream.discovery import Discovery, Document, with_server_address

Kind = Literal["version", "discovery", "openapi/v2", "openapi/v3", "openapi/v3/gv"]


def not_acceptable() -> StatusError:
    return StatusError(406, "only the following media types are accepted: application/json")


class DiscoveryEndpoint:
    """One kind of discovery document; see ``discovery_routes`` for the paths."""

    def __init__(self, discovery: Discovery, kind: Kind) -> None:
        self.discovery = discovery
        self.kind = kind

    def get_only(self, path: str) -> bool:
        """kube-apiserver serves /version, /api[/v1] and built-in groups' documents on GET
        alone (405 otherwise, HEAD included); /apis, CRD groups and OpenAPI on any method."""
        if self.kind == "version":
            return True
        if self.kind != "discovery":
            return False
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            return True
        group = parts[1] if len(parts) > 1 else ""
        return bool(group) and ("." not in group or group.endswith(".k8s.io"))

    def other(self, request: Request) -> StatusError | None:
        """A method outside the standard ones: 405 where only GET is served, else GET."""
        if self.get_only(request.path):
            return method_not_allowed()
        request.method = "GET"
        return None

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET" and self.get_only(request.path):
            raise method_not_allowed()
        docs = self.discovery
        accept = request.headers.get("Accept") or ""
        if self.kind == "version":
            if not restful_accepts_json(accept):
                raise StatusError(
                    406, "406: Not Acceptable\n\nAvailable representations: application/json"
                )
            doc = await docs.version()
        elif self.kind == "discovery":
            doc = await docs.discovery(request.path.rstrip("/") or "/", accept)
        elif self.kind == "openapi/v3":
            doc = await docs.openapi_v3_index()  # kube serves its index whatever Accept says
        elif self.kind == "openapi/v3/gv" and accept and not parse_accept(accept):
            return Response(status=200)  # no clause parses: kube-openapi answers 200, no body
        elif not accepts_json(accept):
            raise not_acceptable()
        elif self.kind == "openapi/v2":
            doc = await docs.openapi_v2()
        else:
            gv = request.path_params.get("gv") or ""
            found = await docs.openapi_v3(gv)
            if found is None:
                raise not_found_path()
            doc = hashed(request, found, gv)
        body, kept = self.rendered(request, doc)
        return Response(
            status=doc.code, headers=Headers(doc.headers), body=body, compress=doc if kept else True
        )

    def rendered(self, request: Request, doc: Document) -> tuple[bytes, bool]:
        """The body this request gets, and whether it is the kept one (whose gzip form is
        kept too). Discovery answers are the API server's negotiated ones: ``/api`` names
        watchcache's own address, and a pretty request gets them indented. /version and
        OpenAPI are written by the API server the same for everyone."""
        if self.kind != "discovery" or doc.code != 200:
            return doc.body, True
        body = doc.body
        if request.path.rstrip("/") == "/api":
            body = with_server_address(body, request.local_address)
        if request.pretty:
            with contextlib.suppress(ValueError):  # not JSON after all: as it is
                body = go_indent(body)
        return body, body is doc.body


def hashed(request: Request, doc: Document, gv_path: str) -> Document:
    """A ``?hash=`` request: immutable if the hash is the current one, else a redirect."""
    wanted = (request.query.get("hash") or [""])[-1]
    if not wanted or doc.code != 200 or not doc.etag:
        return doc
    current = doc.etag.strip('"')
    if wanted != current:
        location = f"/openapi/v3/{gv_path}?hash={current}"
        return Document(301, b"", {"Location": location, "Content-Type": "text/plain"})
    headers = {
        **doc.headers,
        "Vary": "Accept",
        "Cache-Control": "public, immutable",
        "Expires": formatdate(time.time() + 365 * 86400, usegmt=True),
    }
    return Document(200, doc.body, headers, doc.gzipped)


class RootPaths:
    """``/``: the paths served, as the API server lists its own (``{"paths": [...]}``)."""

    def __init__(self, paths: list[str]) -> None:
        self.body = orjson.dumps({"paths": paths}, option=orjson.OPT_INDENT_2)

    async def __call__(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise method_not_allowed()
        return Response(
            status=200, headers=Headers({"Content-Type": "application/json"}), body=self.body
        )


def discovery_routes(discovery: Discovery, forward: Forward) -> list[tuple[str, Route]]:
    """The discovery paths: /version, /api, /apis, each served group and group version, and
    OpenAPI. Paths of groups watchcache does not serve stay 404."""

    def doc(kind: Kind) -> Route:
        endpoint = DiscoveryEndpoint(discovery, kind)
        return Route(endpoint, other=endpoint.other)

    specs = discovery.specs
    table: list[tuple[str, Route]] = [
        (r"/version/?", doc("version")),
        (r"/api/?", doc("discovery")),
        (r"/api/v1/?", doc("discovery")),  # CORE_V1, at least
        (r"/apis/?", doc("discovery")),
        (r"/openapi/v2/?", doc("openapi/v2")),
        (r"/openapi/v3/?", doc("openapi/v3")),
        (r"/openapi/v3/(?P<gv>.+)", doc("openapi/v3/gv")),
        (r"/api/v1/namespaces/[^/]+", Route(NamespaceGet(forward))),
    ]
    groups = {s.group for s in specs if s.group and s.served}
    gvs = {s.api_prefix for s in specs if s.served}
    fixed = ["/api", "/apis", "/apis/", "/healthz", "/livez", "/metrics", "/openapi/v2"]
    fixed += ["/openapi/v3", "/openapi/v3/", "/readyz", "/version"]
    paths = sorted({*fixed, *(f"/apis/{g}" for g in groups), *gvs})
    table.append((r"/", Route(RootPaths(paths))))
    for group in sorted(groups):
        table.append((rf"/apis/{re.escape(group)}/?", doc("discovery")))
    for prefix in sorted(gvs):
        table.append((rf"{re.escape(prefix)}/?", doc("discovery")))
    return table
