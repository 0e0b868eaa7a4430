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
from typing import TYPE_CHECKING, Literal

import orjson

from watchcache.http.base import BaseHandler, decoded_query
from watchcache.http.conditional import encoded, etag_matches
from watchcache.http.proxy import PassThroughHandler
from watchcache.kube.negotiation import (
    accepts_json,
    parse_accept,
    restful_accepts_json,
    wants_pretty,
)
from watchcache.kube.status import StatusError, method_not_allowed, not_found_path
from watchcache.kube.wire import go_indent
from watchcache.upstream.discovery import Document, with_server_address

if TYPE_CHECKING:
    from watchcache.http.context import Context
    from watchcache.kube.resources import ResourceSpec

Kind = Literal["version", "discovery", "openapi/v2", "openapi/v3", "openapi/v3/gv"]


def not_acceptable() -> StatusError:
    return StatusError(406, "only the following media types are accepted: application/json")


class DiscoveryHandler(BaseHandler):
    """One kind of discovery document; see ``discovery_routes`` for the paths."""

    def initialize(self, runtime: Context, kind: Kind) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.kind = kind

    def get_only(self) -> bool:
        """kube-apiserver serves /version, /api[/v1] and built-in groups' documents on GET
        alone (405 otherwise, HEAD included); /apis, CRD groups and OpenAPI on any method."""
        if self.kind == "version":
            return True
        if self.kind != "discovery":
            return False
        parts = self.request.path.strip("/").split("/")
        if parts[0] == "api":
            return True
        group = parts[1] if len(parts) > 1 else ""
        return bool(group) and ("." not in group or group.endswith(".k8s.io"))

    def other_method(self) -> None:
        if self.get_only():
            raise method_not_allowed()
        self.request.method = "GET"

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        if self.request.method != "GET" and self.get_only():
            raise method_not_allowed()
        docs = self.runtime.discovery
        accept = self.request.headers.get("Accept", "")
        if self.kind == "version":
            if not restful_accepts_json(accept):
                raise StatusError(
                    406, "406: Not Acceptable\n\nAvailable representations: application/json"
                )
            doc = await docs.version()
        elif self.kind == "discovery":
            doc = await docs.discovery(self.request.path.rstrip("/") or "/", accept)
        elif self.kind == "openapi/v3":
            doc = await docs.openapi_v3_index()  # kube serves its index whatever Accept says
        elif self.kind == "openapi/v3/gv" and accept and not parse_accept(accept):
            return  # no clause parses: kube-openapi answers 200 with no body
        elif not accepts_json(accept):
            raise not_acceptable()
        elif self.kind == "openapi/v2":
            doc = await docs.openapi_v2()
        else:
            found = await docs.openapi_v3(kwargs.get("gv") or "")
            if found is None:
                raise not_found_path()
            doc = self._hashed(found, kwargs.get("gv") or "")
        self._send(doc)

    def compute_etag(self) -> str | None:
        return None  # a document has the ETag the API server gives it, or none

    def _hashed(self, doc: Document, gv_path: str) -> Document:
        """A ``?hash=`` request: immutable if the hash is the current one, else a redirect."""
        wanted = self.get_query_argument("hash", None)
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

    def _send(self, doc: Document) -> None:
        self.set_status(doc.code)
        for name, value in doc.headers.items():
            self.set_header(name, value)
        etag = doc.etag
        if (
            etag
            and doc.code == 200
            and etag_matches(self.request.headers.get("If-None-Match"), etag)
        ):
            self.set_status(304)
            self.clear_header("Content-Type")
            self.finish()
            return
        body, kept = self._rendered(doc)

        def keep(zipped: bytes) -> None:
            doc.gzipped = zipped

        body, zipped = encoded(
            body,
            self.request.headers.get("Accept-Encoding"),
            kept=doc.gzipped if kept else None,
            keep=keep if kept else None,
        )
        if zipped:
            self.set_header("Content-Encoding", "gzip")
            self.add_header("Vary", "Accept-Encoding")
        self.finish(body)

    def _rendered(self, doc: Document) -> tuple[bytes, bool]:
        """The body this request gets, and whether it is the kept one (whose gzip form is
        kept too). Discovery answers are the API server's negotiated ones: ``/api`` names
        watchcache's own address, and a pretty request gets them indented. /version and
        OpenAPI are written by the API server the same for everyone."""
        if self.kind != "discovery" or doc.code != 200:
            return doc.body, True
        body = doc.body
        if self.request.path.rstrip("/") == "/api":
            body = with_server_address(body, self._own_address())
        headers = self.request.headers
        agent, accept = headers.get("User-Agent"), headers.get("Accept")
        if wants_pretty(decoded_query(self.request), agent, accept):
            with contextlib.suppress(ValueError):  # not JSON after all: as it is
                body = go_indent(body)
        return body, body is doc.body

    def _own_address(self) -> str | None:
        """host:port of watchcache's end of this connection: where this client reached it."""
        stream = getattr(self.request.connection, "stream", None)
        sock = getattr(stream, "socket", None)
        try:
            host, port = sock.getsockname()[:2]  # type: ignore[union-attr]
        except (AttributeError, OSError, TypeError, ValueError):
            return None
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RootPathsHandler(BaseHandler):
    """``/``: the paths served, as the API server lists its own (``{"paths": [...]}``)."""

    def initialize(self, runtime: Context, paths: list[str]) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.paths = paths

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        if self.request.method not in ("GET", "HEAD"):
            raise method_not_allowed()
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"paths": self.paths}, option=orjson.OPT_INDENT_2))


class NamespaceHandler(PassThroughHandler):
    """``GET /api/v1/namespaces/<name>``, passed through. Namespaces are not served, but
    kubectl asks for the namespace after a 404 in it, to tell "no such object" from "no such
    namespace"; without this its message would be wrong. Only GET: nothing else of the core
    group is served."""

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        if self.request.method != "GET":
            raise not_found_path()
        await self.forward()


def discovery_routes(
    runtime: Context, specs: list[ResourceSpec]
) -> list[tuple[str, type, dict[str, object]]]:
    """The discovery paths: /version, /api, /apis, each served group and group version, and
    OpenAPI. Paths of groups watchcache does not serve stay 404."""

    def args(kind: Kind) -> dict[str, object]:
        return {"runtime": runtime, "kind": kind}

    table: list[tuple[str, type, dict[str, object]]] = [
        (r"/version/?", DiscoveryHandler, args("version")),
        (r"/api/?", DiscoveryHandler, args("discovery")),
        (r"/api/v1/?", DiscoveryHandler, args("discovery")),  # CORE_V1, at least
        (r"/apis/?", DiscoveryHandler, args("discovery")),
        (r"/openapi/v2/?", DiscoveryHandler, args("openapi/v2")),
        (r"/openapi/v3/?", DiscoveryHandler, args("openapi/v3")),
        (r"/openapi/v3/(?P<gv>.+)", DiscoveryHandler, args("openapi/v3/gv")),
        (r"/api/v1/namespaces/[^/]+", NamespaceHandler, {"runtime": runtime}),
    ]
    groups = {s.group for s in specs if s.group and s.served}
    gvs = {s.api_prefix for s in specs if s.served}
    fixed = ["/api", "/apis", "/apis/", "/healthz", "/livez", "/metrics", "/openapi/v2"]
    fixed += ["/openapi/v3", "/openapi/v3/", "/readyz", "/version"]
    paths = sorted({*fixed, *(f"/apis/{g}" for g in groups), *gvs})
    table.append((r"/", RootPathsHandler, {"runtime": runtime, "paths": paths}))
    for group in sorted(groups):
        table.append((rf"/apis/{re.escape(group)}/?", DiscoveryHandler, args("discovery")))
    for prefix in sorted(gvs):
        table.append((rf"{re.escape(prefix)}/?", DiscoveryHandler, args("discovery")))
    return table
