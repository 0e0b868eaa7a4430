"""The endpoint of a cached resource: GET answered from its cache, anything else upstream.

``cache.reads`` decides (a page, a subscription, or delegate); this module turns its answer
into bytes. A list body is assembled from stored bytes: a prefix, the matching items' JSON
joined with commas, a suffix. A list of the live state carries the version of its scope's
last change (Store.list_rv), so its body is the same for as long as its namespace is quiet,
however the rest of the store changes. Rendered bodies (and their gzip form) are kept, in
one byte budget for the server, by what shapes the body (never by other query parameters)
and are valid while that state holds; so a dashboard polling an unchanged list costs a
dictionary lookup. An ETag covers the whole body (items, version, continue token, remaining
count): a 304 always means the client's copy is exactly the current answer.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import TYPE_CHECKING

from watchcache.cache import reads, writes
from watchcache.cache.reads import Delegate, Page
from watchcache.cache.resource import CachedResource, Rendered, RenderKey
from watchcache.cache.store import Entry
from watchcache.http.conditional import json_response
from watchcache.http.table import FORWARD, TableRequest, list_meta, table_for, table_response
from watchcache.http.watch import watch_response
from watchcache.http.websocket import handshake
from watchcache.kube.listoptions import ListOptions, parse_get_options, parse_list_options
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.validation import check_read_target
from watchcache.kube.wire import list_body
from watchcache.middleware.core import Request, Response

if TYPE_CHECKING:
    from watchcache.http.proxy import Forward
    from watchcache.upstream.discovery import Discovery

ALLOWED_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
# The query parameters that shape a list body; the render cache keys on them alone, so that
# junk parameters cannot fill it with copies.
BODY_PARAMS = (
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "resourceVersion",
    "resourceVersionMatch",
    "pretty",
)
# List queries remembered parsed, per resource (about 700 B each): enough for a dashboard
# that polls each of a namespace's 1,000 objects by name in turn. Emptied when full, so a
# rotation longer than this would find none of them.
PARSED_QUERIES = 4096


class ParsedQueries:
    """``parse_list_options`` remembered per query: a dashboard polls with the same one, and
    parsing its selectors again costs more than the rest of a cached answer. Queries with a
    continue token (each page's own) and refused ones are parsed every time; the memo is
    emptied when full, so junk queries cannot grow it."""

    __slots__ = ("endpoint", "parsed")

    def __init__(self, endpoint: ResourceEndpoint) -> None:
        self.endpoint = endpoint
        self.parsed: dict[tuple[tuple[str, ...], ...], ListOptions] = {}

    def __call__(self, query: dict[str, list[str]]) -> ListOptions:
        if "continue" in query:
            return self.parse(query)
        key = tuple((name, *values) for name, values in query.items())
        opts = self.parsed.get(key)
        if opts is None:
            opts = self.parse(query)
            if len(self.parsed) >= PARSED_QUERIES:
                self.parsed.clear()
            self.parsed[key] = opts
        return opts

    def parse(self, query: dict[str, list[str]]) -> ListOptions:
        endpoint = self.endpoint
        return parse_list_options(
            query, allowed_field=endpoint.allowed_field, own_token=endpoint.resource.codec.ours
        )


def _etag(
    salt: bytes, rv: int, token: str | None, remaining: int | None, entries: list[Entry]
) -> str:
    """A tag of everything in a list body: what shaped it (the salt: resource, namespace,
    the body's query parameters), its version, continue token and remaining count, and its
    items (an object's version identifies its bytes). Weak only because the gzip form of
    the same body shares it."""
    digest = hashlib.blake2b(salt, digest_size=12)
    digest.update(f"\x00{rv}\x00{token or ''}\x00{remaining}\x00".encode())
    digest.update(array("q", [e.rv for e in entries]).tobytes())
    return f'W/"{digest.hexdigest()}"'


class ResourceEndpoint:
    """GET and LIST (and watch) of one cached resource from its cache; every other method,
    and every read the cache delegates, goes to the API server. A successful write is held
    until the cache shows it (read-your-writes)."""

    def __init__(self, resource: CachedResource, forward: Forward, discovery: Discovery) -> None:
        self.resource = resource
        self.forward = forward
        self.discovery = discovery
        spec = resource.spec
        # Reads the cache delegates stay within its own selectors (the Ray-events limit).
        self.own = [
            (p, s)
            for p, s in (
                ("labelSelector", spec.label_selector),
                ("fieldSelector", spec.field_selector),
            )
            if s
        ]
        self.list_options = ParsedQueries(self)

    @property
    def spec(self) -> ResourceSpec:
        return self.resource.spec

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            return await self.forward(request, self.written)
        res = self.resource
        params = request.path_params
        namespace, name = params.get("namespace"), params.get("name")
        query = request.query
        if name is None:
            opts = self.list_options(query)
            check_read_target(res.spec, namespace, None)
        else:
            check_read_target(res.spec, namespace, name)
            rv_text = parse_get_options(query)
        await reads.synced(res)
        request.extra["cached"] = True  # until delegated (the audit log tells which)
        table = await table_for(request, res.spec, self.discovery)
        if table == FORWARD or (table is not None and name is None and opts.watch):
            return await self.delegate(request)  # a form the cache does not render
        if name is None and opts.watch:
            ws = handshake(request)  # None: plain HTTP; raises a refused upgrade
            sub = await reads.watch(res, namespace, opts)
            if isinstance(sub, Delegate):
                return await self.delegate(request)
            return watch_response(request, res, sub, opts, ws)
        if name is None:
            return await self.list(request, namespace, opts, table)
        entry = await reads.get(res, namespace or "", name, rv_text)
        if isinstance(entry, Delegate):
            return await self.delegate(request)
        if table is not None:
            return table_response(request, table, [entry.raw], list_meta(entry.rv))
        return json_response(request, entry.raw + b"\n", f'"{entry.rv}"')

    def allowed_field(self, path: str) -> bool:
        return self.resource.extended_fields or path in ALLOWED_FIELDS

    async def delegate(self, request: Request) -> Response:
        """This GET goes to the API server after all, within the cache's own selectors."""
        request.extra["cached"] = False
        for param, own in self.own:
            theirs = (request.query.get(param) or [""])[0]
            request.query[param] = [f"{own},{theirs}" if theirs else own]
        return await self.forward(request)

    async def list(
        self, request: Request, namespace: str | None, opts: ListOptions, table: TableRequest | None
    ) -> Response:
        """A list, from the page the cache gives: rendered once and reused while the state
        it was rendered from holds (a page of a snapshot is rendered each time: its items
        are cheap to join again)."""
        res = self.resource
        page = await reads.list_(res, namespace, opts)
        if isinstance(page, Delegate):
            return await self.delegate(request)
        if table is not None:
            raws = [e.raw for e in page.entries()]
            return table_response(
                request, table, raws, list_meta(page.rv, page.token, page.remaining)
            )
        query = request.query
        key: RenderKey = (
            res.spec.group,
            res.spec.plural,
            namespace,
            *(tuple(query[p]) if p in query else None for p in BODY_PARAMS),
        )
        state = page.state
        cached = res.renders.get(key) if state is not None else None
        if cached is None or cached.state != state:
            cached = self.render(key, page)
        return json_response(request, cached.body, cached.etag, cached)

    def render(self, key: RenderKey, page: Page) -> Rendered:
        res = self.resource
        entries = page.entries()
        etag = _etag(repr(key).encode(), page.rv, page.token, page.remaining, entries)
        body = list_body(res.spec, entries, page.rv, page.token, page.remaining)
        rendered = Rendered(page.state or (page.rv, -2), etag, body)
        renders = res.renders
        # Up to half the budget: the all-namespaces list of a large cluster (10,000
        # RayClusters make about 50 MB) is the body most worth keeping, since rendering it
        # costs two copies of it and their page faults at every request.
        if page.state is not None and len(body) <= renders.maxsize // 2:

            def kept(r: Rendered) -> None:
                if renders.get(key) is r:
                    if r.size > renders.maxsize:  # with its gzip form, more than the budget
                        del renders[key]
                    else:
                        renders[key] = r  # counted again, with its gzip form

            rendered.kept = kept
            renders[key] = rendered  # bounded in bytes: a huge body is not kept
        return rendered

    async def written(self, request: Request, code: int, answer: bytes) -> None:
        """A successful write's answer waits until the cache shows the write."""
        if "dryRun" in request.query:
            return
        params = request.path_params
        wanted = writes.targets(
            self.resource,
            request.method == "DELETE",
            params.get("namespace") or "",
            params.get("name") or "",
            answer,
        )
        if wanted:
            await writes.shown(self.resource, wanted, f"{request.method} {request.path}")


def resource_routes(spec: ResourceSpec) -> list[str]:
    """The path patterns one resource's endpoint answers on."""
    prefix = spec.api_prefix
    return [
        rf"{prefix}/namespaces/(?P<namespace>[^/]+)/{spec.plural}/?",
        rf"{prefix}/{spec.plural}/?",
        rf"{prefix}/namespaces/(?P<namespace>[^/]+)/{spec.plural}/(?P<name>[^/]+)"
        r"(?:/(?P<subresource>status))?",
    ]
