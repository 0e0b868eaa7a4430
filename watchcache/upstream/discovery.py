"""Discovery and OpenAPI: the API server's documents, cut down to what watchcache serves.

Clients find resources through discovery (kubectl asks for aggregated discovery first) and
validate, apply and explain them with OpenAPI v3. Each document is fetched from the API
server, filtered so that it names only the served group versions and resources (a client
never learns of a path watchcache would answer with 404), and kept for a TTL, so a burst of
kubectl runs costs the API server one request per document per TTL; concurrent misses share
one fetch. A filtered document gets its own ETag, computed as the API server computes it
(SHA-512, upper-case hex), and OpenAPI v3's index points at the filtered documents' hashes,
so conditional requests and kubectl's disk cache keep working.

The printer columns of the served CRDs (for Tables) are fetched and kept the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import quote

import orjson
from cachetools import TTLCache

from watchcache.kube.jsonpath import Unsupported
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError
from watchcache.kube.tables import TableSpec
from watchcache.kube.wire import go_escape
from watchcache.upstream.client import Upstream, UpstreamError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

GVKey = tuple[str, str]  # (group, version); group "" is the core group


@dataclass(frozen=True, slots=True)
class Served:
    """The group versions and resources watchcache serves: what every document is cut to."""

    resources: Mapping[GVKey, frozenset[str]]

    @classmethod
    def of(cls, specs: Iterable[ResourceSpec]) -> Served:
        out: dict[GVKey, set[str]] = {}
        for spec in specs:
            if spec.served:
                out.setdefault((spec.group, spec.version), set()).add(spec.plural)
        return cls({gv: frozenset(plurals) for gv, plurals in out.items()})

    def versions(self, group: str) -> list[str]:
        return [v for g, v in self.resources if g == group]

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(g for g, _ in self.resources))

    @property
    def openapi_v3_paths(self) -> list[str]:
        """The OpenAPI v3 index keys of the served group versions: ``apis/ray.io/v1``."""
        return [f"apis/{g}/{v}" if g else f"api/{v}" for g, v in self.resources]

    def has_path(self, path: str) -> bool:
        """Whether an OpenAPI path is served: a served resource's
        (``/apis/g/v/namespaces/{namespace}/plural/...``) or a served group's or group
        version's discovery (``/apis/g/``, ``/apis/g/v/``)."""
        for (group, version), plurals in self.resources.items():
            prefix = f"/apis/{group}/{version}/" if group else f"/api/{version}/"
            if (group and path == f"/apis/{group}/") or path == prefix:
                return True
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if parts[0] == "watch":
                parts = parts[1:]
            if len(parts) >= 3 and parts[0] == "namespaces":
                parts = parts[2:]
            if parts and parts[0] in plurals:
                return True
        return False


# The core resources watchcache answers besides any configured one, and with which verbs:
# a namespace's GET (passed through, for kubectl's "namespace not found" message). So
# ``/api`` lists v1, as kube-apiserver's does, and ``/api/v1`` says exactly what is served.
CORE_V1: Mapping[str, tuple[str, ...]] = {"namespaces": ("get",)}


# ---- filters (pure) ------------------------------------------------------------------------
def filter_discovery(doc: dict[str, Any], served: Served) -> dict[str, Any]:
    """Any discovery document (aggregated or not, /api, /apis, a group, a group version),
    keeping only what is served; a document of another kind is returned as it is. No
    server address of the API server's is kept (see ``with_server_address``)."""
    kind = doc.get("kind")
    if kind == "APIGroupDiscoveryList":
        items = []
        for item in doc.get("items") or []:
            group = (item.get("metadata") or {}).get("name", "")
            versions = []
            for version in item.get("versions") or []:
                gv = (group, version.get("version", ""))
                plurals = served.resources.get(gv, frozenset())
                core = CORE_V1 if gv == ("", "v1") else {}
                resources = [
                    r if r["resource"] in plurals else _core_resource(r, "resource", "subresources")
                    for r in version.get("resources") or []
                    if r["resource"] in plurals or r["resource"] in core
                ]
                if resources:
                    versions.append({**version, "resources": resources})
            if versions:
                items.append({**item, "versions": versions})
        return {**doc, "items": items}
    if kind == "APIGroupList":
        groups = [_filter_group(g, served) for g in doc.get("groups") or []]
        return {**doc, "groups": [g for g in groups if g["versions"]]}
    if kind == "APIGroup":
        return _filter_group(doc, served)
    if kind == "APIResourceList":
        group, _, version = doc.get("groupVersion", "").rpartition("/")
        plurals = served.resources.get((group, version), frozenset())
        core = CORE_V1 if (group, version) == ("", "v1") else {}
        resources = [
            r if r["name"].split("/")[0] in plurals else _core_resource(r, "name")
            for r in doc.get("resources") or []
            if r["name"].split("/")[0] in plurals or r["name"] in core
        ]
        return {**doc, "resources": resources}
    if kind == "APIVersions":
        versions = [
            v for v in doc.get("versions") or [] if ("", v) in served.resources or v == "v1"
        ]
        return {**doc, "versions": versions, "serverAddressByClientCIDRs": []}
    return doc


def _core_resource(resource: dict[str, Any], name_key: str, *drop: str) -> dict[str, Any]:
    """A core resource of CORE_V1 with only the verbs watchcache answers (and none of its
    subresources: none is served)."""
    verbs = CORE_V1.get(resource.get(name_key, ""), ())
    out = {k: v for k, v in resource.items() if k not in drop}
    out["verbs"] = [v for v in resource.get("verbs") or [] if v in verbs]
    return out


def with_server_address(body: bytes, address: str | None) -> bytes:
    """An ``APIVersions`` body (``/api``) naming watchcache's own address, as the client
    reached it, for every client network (or none when it is unknown); other bodies as
    they are. Never the API server's: that is filtered out when the document is kept."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict) or doc.get("kind") != "APIVersions":
        return body
    own = [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}] if address else []
    return encode({**doc, "serverAddressByClientCIDRs": own})


def encode(obj: object) -> bytes:
    """A document as the API server writes it: Go's escaping, a final newline."""
    return go_escape(orjson.dumps(obj)) + b"\n"


def _filter_group(group: dict[str, Any], served: Served) -> dict[str, Any]:
    name = group.get("name", "")
    keep = served.versions(name)
    versions = [v for v in group.get("versions") or [] if v.get("version") in keep]
    out = {k: v for k, v in group.items() if k != "serverAddressByClientCIDRs"}
    out["versions"] = versions
    preferred = group.get("preferredVersion") or {}
    if versions and preferred.get("version") not in keep:
        out["preferredVersion"] = versions[0]
    return out


# Where OpenAPI documents keep what ``$ref`` points at (v2 at the top, v3 under components).
_V2_CONTAINERS = ("definitions", "parameters", "responses")
_V3_CONTAINERS = ("schemas", "parameters", "responses", "requestBodies", "headers", "examples")


def filter_openapi(doc: dict[str, Any], served: Served) -> dict[str, Any]:
    """An OpenAPI v2 or v3 document with only the served paths and what they refer to."""
    paths = {p: v for p, v in (doc.get("paths") or {}).items() if served.has_path(p)}
    pointers = _references(doc, paths)
    out = {**doc, "paths": paths}
    for name in _V2_CONTAINERS:
        if isinstance(doc.get(name), dict):
            out[name] = {k: v for k, v in doc[name].items() if f"#/{name}/{k}" in pointers}
    components = doc.get("components")
    if isinstance(components, dict):
        out["components"] = {
            section: (
                {k: v for k, v in entries.items() if f"#/components/{section}/{k}" in pointers}
                if section in _V3_CONTAINERS and isinstance(entries, dict)
                else entries
            )
            for section, entries in components.items()
        }
    return out


def _references(doc: Mapping[str, Any], roots: object) -> set[str]:
    """Every local ``$ref`` reachable from ``roots``, following references transitively."""
    seen: set[str] = set()
    stack: list[object] = [roots]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and ref not in seen:
                seen.add(ref)
                target = _resolve(doc, ref)
                if target is not None:
                    stack.append(target)
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return seen


def _resolve(doc: Mapping[str, Any], ref: str) -> object:
    node: object = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or token not in node:
            return None
        node = node[token]
    return node


def etag_of(body: bytes) -> str:
    """The API server's ETag for a discovery or OpenAPI document: SHA-512, upper-case hex."""
    return hashlib.sha512(body).hexdigest().upper()


# ---- the documents -------------------------------------------------------------------------
@dataclass(slots=True)
class Document:
    """One answer, ready to send; ``gzipped`` is filled the first time a client takes gzip."""

    code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    gzipped: bytes | None = None

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")

    def keep_gzip(self, zipped: bytes) -> None:
        self.gzipped = zipped


_KEEP_HEADERS = ("Content-Type", "Cache-Control", "Vary", "Last-Modified", "Expires")


class Discovery:
    """Fetches, filters and keeps (for ``ttl`` seconds) the documents clients discover with."""

    def __init__(
        self,
        upstream: Upstream,
        specs: Iterable[ResourceSpec],
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.specs = [s for s in specs if s.served]
        self.served = Served.of(self.specs)
        self._cache: TTLCache[object, Any] = TTLCache(maxsize=128, ttl=ttl, timer=clock)
        self._pending: dict[object, asyncio.Future[Any]] = {}

    async def _once(self, key: object, make: Callable[[], Awaitable[_T]]) -> _T:
        """The cached value for ``key``, or the one fetch every concurrent caller waits on."""
        # One cache for values of several types: a key's value is what its ``make`` makes.
        if key in self._cache:
            return cast(_T, self._cache[key])
        pending = cast("asyncio.Future[_T] | None", self._pending.get(key))
        if pending is None:

            async def fill() -> _T:
                value = await make()
                if not isinstance(value, Document) or value.code < 400:
                    self._cache[key] = value
                return value

            pending = asyncio.ensure_future(fill())
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _get(self, path: str, accept: str) -> tuple[Document, Any]:
        """The upstream answer to a GET, and its JSON when it is a 200."""
        try:
            resp = await self.upstream.fetch("GET", path, headers={"Accept": accept})
        except UpstreamError as exc:
            raise StatusError(503, f"the Kubernetes API server is unavailable: {exc}") from exc
        headers = {n: resp.headers[n] for n in (*_KEEP_HEADERS, "ETag") if n in resp.headers}
        doc = Document(resp.code, resp.body, headers)
        if resp.code != 200:
            return doc, None
        try:
            return doc, orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return doc, None

    @staticmethod
    def _filtered(
        upstream: Document, obj: object, *, etag: bool, discovery: bool = False, v2: bool = False
    ) -> Document:
        """``obj`` as the body, with upstream's headers and its own ETag when ``etag``,
        written as the API server writes that document: discovery with Go's escaping and a
        final newline; OpenAPI without the newline, v3 escaped, v2 not (its own encoder)."""
        compact = orjson.dumps(obj)
        body = compact if v2 else go_escape(compact)
        headers = {n: v for n, v in upstream.headers.items() if n != "ETag"}
        if etag:  # of the body without a newline, as the API server hashes it
            headers["ETag"] = f'"{etag_of(body)}"'
        return Document(200, body + b"\n" if discovery else body, headers)

    async def version(self) -> Document:
        async def make() -> Document:
            doc, _ = await self._get("/version", "application/json")
            return doc

        return await self._once("/version", make)

    async def discovery(self, path: str, accept: str) -> Document:
        """``/api``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>`` (or ``/api/v1``),
        in whatever form the Accept header asks and the API server gives (aggregated v2,
        v2beta1, or the unaggregated documents), filtered."""

        async def make() -> Document:
            doc, obj = await self._get(path, accept or "application/json")
            if not isinstance(obj, dict):
                return doc
            # The API server tags aggregated discovery only; so does watchcache.
            filtered = filter_discovery(obj, self.served)
            return self._filtered(doc, filtered, etag="ETag" in doc.headers, discovery=True)

        return await self._once(("discovery", path, accept), make)

    async def openapi_v2(self) -> Document:
        async def make() -> Document:
            doc, obj = await self._get("/openapi/v2", "application/json")
            if not isinstance(obj, dict):
                return doc
            return self._filtered(doc, filter_openapi(obj, self.served), etag=True, v2=True)

        return await self._once("/openapi/v2", make)

    async def openapi_v3(self, gv_path: str) -> Document | None:
        """The OpenAPI v3 document of one served group version (``apis/ray.io/v1``)."""
        if gv_path not in self.served.openapi_v3_paths:
            return None

        async def make() -> Document:
            doc, obj = await self._get(f"/openapi/v3/{gv_path}", "application/json")
            if not isinstance(obj, dict):
                return doc
            return self._filtered(doc, filter_openapi(obj, self.served), etag=True)

        return await self._once(("/openapi/v3", gv_path), make)

    async def openapi_v3_index(self) -> Document:
        """``/openapi/v3``: the served group versions only, each URL carrying the hash of the
        filtered document watchcache serves (not the API server's)."""

        async def make() -> Document:
            doc, obj = await self._get("/openapi/v3", "application/json")
            if not isinstance(obj, dict):
                return doc
            paths: dict[str, Any] = {}
            for gv_path in self.served.openapi_v3_paths:
                if gv_path not in (obj.get("paths") or {}):
                    continue
                gv_doc = await self.openapi_v3(gv_path)
                if gv_doc is None or gv_doc.code != 200 or not gv_doc.etag:
                    continue
                url = f"/openapi/v3/{quote(gv_path)}?hash={gv_doc.etag.strip(chr(34))}"
                paths[gv_path] = {"serverRelativeURL": url}
            return self._filtered(doc, {**obj, "paths": paths}, etag=True)

        return await self._once("/openapi/v3", make)

    async def table_spec(self, spec: ResourceSpec) -> TableSpec | None:
        """The compiled printer columns of a served custom resource; None when they cannot
        be had (not a CRD, no permission to read CRDs, JSONPath beyond what tables.py
        evaluates): its Table requests then pass through."""
        if not spec.group:
            return None

        async def make() -> TableSpec | None:
            name = f"{spec.plural}.{spec.group}"
            path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            try:
                doc, crd = await self._get(path, "application/json")
            except StatusError:
                return None
            if not isinstance(crd, dict):
                log.info("printer columns of %s unavailable (HTTP %d)", name, doc.code)
                return None
            try:
                return TableSpec.from_crd(crd, spec.version)
            except (Unsupported, KeyError, TypeError, ValueError) as exc:
                log.info("printer columns of %s not rendered here: %r", name, exc)
                return None

        return await self._once(("columns", spec), make)
