"""GET and LIST of a cached resource, answered from its Store with no upstream call.

A list body is assembled from stored bytes: a prefix, the matching items' JSON joined with
commas, a suffix. A list of the live state carries the version of its scope's last change
(Store.list_rv), so its body is the same for as long as its namespace is quiet, however the
rest of the store changes. Rendered bodies (and their gzip form) are kept, in one byte budget
for the server, by what shapes the body (never by other query parameters) and are valid while
that version holds; so a dashboard polling an unchanged list costs a dictionary lookup. An
ETag covers the whole body (items, version, continue token, remaining count): a 304 always
means the client's copy is exactly the current answer. Requests the
cache cannot answer to the letter (a resourceVersion it has not reached, an Exact version it
no longer holds, another server's continue token) are passed through to the API server,
which then answers exactly as it would have.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from watchcache.cache.hub import Watcher
from watchcache.cache.resource import CachedResource, Rendered, RenderKey
from watchcache.cache.store import Entry, Key, Snapshot, key_range, matches
from watchcache.http.conditional import encoded, etag_matches
from watchcache.http.proxy import PassThroughHandler
from watchcache.http.table import FORWARD, TableRequest, list_meta, send_table, table_for
from watchcache.http.watch import serve_watch
from watchcache.kube.listoptions import (
    ListOptions,
    continue_expired,
    parse_get_options,
    parse_list_options,
    resource_version_int,
)
from watchcache.kube.negotiation import wants_pretty
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.status import StatusError, not_found, too_many_requests
from watchcache.kube.validation import check_read_target
from watchcache.kube.wire import go_escape, go_indent, list_body

if TYPE_CHECKING:
    from watchcache.http.context import Context

log = logging.getLogger(__name__)

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


class ResourceHandler(PassThroughHandler):
    """Reads of one cached resource; every other method passes through."""

    table: TableRequest | None = None  # set per read: the Table it asked for, if any

    def initialize(self, runtime: Context, resource: CachedResource) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.resource = resource
        self.resource_spec = resource.spec

    async def endpoint(self, *args: str | None, **kwargs: str | None) -> None:
        if self.request.method == "GET":
            await self.read(*args, **kwargs)
        else:
            await super().endpoint(*args, **kwargs)

    def prepare(self) -> None:
        self.watcher: Watcher | None = None
        super().prepare()

    def on_connection_close(self) -> None:
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.end()
        super().on_connection_close()

    async def _forward(self) -> None:
        """Pass this GET through to the API server after all, within the cache's own
        selectors (the Ray-events limit must hold upstream too)."""
        spec = self.resource.spec
        if spec.label_selector or spec.field_selector:
            query = dict(self.query)
            for param, own in (
                ("labelSelector", spec.label_selector),
                ("fieldSelector", spec.field_selector),
            ):
                if own:
                    theirs = (query.get(param) or [""])[0]
                    query[param] = [f"{own},{theirs}" if theirs else own]
            self.set_target(self.request.path, query)
        await self.forward()

    # ---- writes: read-your-writes ----------------------------------------------------------
    def hold_for_cache(self) -> bool:
        return True

    async def wait_for_cache(self, code: int, body: bytes) -> None:
        """Holds a write's answer until the cache shows it, bounded by ``write_wait``.

        Judged per written object against the feed of its namespace, never against the
        store's version: with a feed per namespace that is the slowest feed's, which a quiet
        namespace holds back until its next bookmark.
        """
        if "dryRun" in self.query:
            return
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        res, store = self.resource, self.resource.store
        deleting = self.request.method == "DELETE"
        if obj.get("kind") == res.spec.list_kind:  # a delete-collection's deleted objects
            targets = [_target(item, deleting) for item in obj.get("items") or []]
        elif obj.get("kind") == res.spec.kind:
            targets = [_target(obj, deleting)]
        elif deleting and self.path_kwargs.get("name"):  # a Status: deleted outright
            targets = [(self.path_kwargs.get("namespace") or "", self.path_kwargs["name"], None)]
        else:
            return
        # Writes to namespaces no feed holds have nothing to wait for.
        targets = [t for t in targets if store.feed_rv(t[0]) is not None]

        def shown(target: tuple[str, str, int | None]) -> bool:
            ns, name, rv = target
            if rv is None:  # deleted outright: seen once gone
                return store.get(ns, name) is None
            return (store.feed_rv(ns) or 0) >= rv

        deadline = time.monotonic() + res.write_wait
        while not all(shown(t) for t in targets):
            left = deadline - time.monotonic()
            if left <= 0:
                res.write_wait_timeouts += 1
                log.warning(
                    "%s %s: the cache did not show the write within %.1fs; answering anyway",
                    self.request.method,
                    self.request.path,
                    res.write_wait,
                )
                return
            # Any change may be the one awaited; a waiter re-checks on each (a few at most).
            changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(_event: object, changed: asyncio.Future[None] = changed) -> None:
                if not changed.done():
                    changed.set_result(None)

            unsubscribe = store.subscribe(wake)
            try:
                await asyncio.wait_for(changed, left)
            except TimeoutError:
                pass
            finally:
                unsubscribe()

    async def read(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> None:
        query = self.query
        if name is None:
            opts = parse_list_options(
                query, allowed_field=self._allowed_field, own_token=self.resource.codec.ours
            )
            check_read_target(self.resource.spec, namespace, None)
        else:
            check_read_target(self.resource.spec, namespace, name)
            rv_text = parse_get_options(query)
        res = self.resource
        if not res.store.synced and not await res.store.wait_synced(res.sync_wait):
            raise too_many_requests(
                f"the cache of {res.spec.plural}.{res.spec.group} is initializing", 1
            )
        table = await table_for(self, query)  # None: plain JSON
        if table == FORWARD or (table is not None and name is None and opts.watch):
            await self._forward()  # a form the cache does not render; Table watches
            return
        self.table = table
        if name is None and opts.watch:
            await serve_watch(self, res, namespace, opts)
        elif name is None:
            await self._list(namespace, opts)
        else:
            await self._get(namespace or "", name, rv_text)

    def _allowed_field(self, path: str) -> bool:
        return self.resource.extended_fields or path in ALLOWED_FIELDS

    # ---- get -------------------------------------------------------------------------------
    async def _get(self, namespace: str, name: str, rv_text: str | None) -> None:
        store = self.resource.store
        if rv_text not in (None, "", "0"):
            rv = resource_version_int(rv_text)
            if not await store.wait_for(rv, self.resource.rv_wait):
                await self._forward()
                return
        entry = store.get(namespace, name)
        if entry is None:
            raise not_found(self.resource.spec.group, self.resource.spec.plural, name)
        if self.table is not None:
            send_table(self, self.table, [entry.raw], list_meta(entry.rv))
            return
        etag = self._form_tag(f'"{entry.rv}"')
        self.set_header("ETag", etag)
        if self._not_modified(etag):
            return
        self._send_json(go_escape(entry.raw) + b"\n")

    # ---- list ------------------------------------------------------------------------------
    async def _list(self, namespace: str | None, opts: ListOptions) -> None:
        """Picks the state a list is answered from, as the API server's cache does (see
        listoptions' docstring): the live store, a retained snapshot, or the API server."""
        res = self.resource
        store = res.store
        rv_text = opts.resource_version or ""
        limit = 0 if rv_text == "0" else opts.limit  # rv "0": the whole list, always
        start: Key | None = None
        snap: Snapshot | None = None
        if opts.continue_at is not None:
            await self._forward()  # the API server's own token: a walk it started
            return
        if opts.continue_token:
            decoded = res.codec.decode(opts.continue_token)
            snap = store.retained(decoded[0]) if decoded else None
            if snap is None:
                raise continue_expired()
            start = decoded[1]  # type: ignore[index]
        elif rv_text not in ("", "0"):
            wanted = resource_version_int(rv_text)
            exact = opts.resource_version_match == "Exact" or (
                opts.resource_version_match is None and limit > 0
            )
            if not await store.wait_for(wanted, res.rv_wait):
                await self._forward()  # upstream knows it, or gives the 504 itself
                return
            if exact:
                snap = self._state_at(wanted)
                if snap is None:
                    await self._forward()  # etcd still has it, or gives the 410
                    return
        if snap is None and not limit:
            # The live items, at the version of their scope's last change (or the one asked
            # for, at which they are the same). With a feed per namespace, an all-namespaces
            # list may be answered at the store's version while a feed lags: then the items
            # are not pinned by the version alone, and the render is also tied to the
            # store's generation.
            rv = store.list_rv(namespace)
            exact = namespace is not None or store.changed_rv <= store.rv
            if rv_text not in ("", "0"):
                rv = max(rv, resource_version_int(rv_text))
            self._send_list(
                namespace,
                lambda: store.select(namespace, opts.label_selector, opts.field_selector),
                rv,
                state=(rv, -1 if exact else store.generation),
            )
            return
        self._send_page(namespace, opts, snap or self._live_snapshot(), start, limit)

    def _live_snapshot(self) -> Snapshot:
        """The current items for a first page: retained at the version of the store's last
        change while nothing changed since, so that re-reading a quiet store's first page
        gives the same body (and token)."""
        store = self.resource.store
        changed = store.changed_rv
        return store.snapshot(as_rv=changed if changed <= store.rv else None)

    def _state_at(self, rv: int) -> Snapshot | None:
        """The items exactly at ``rv``: a retained snapshot, or the current state when
        nothing in the store changed after ``rv`` (the caller has waited for the store to
        reach ``rv``)."""
        store = self.resource.store
        snap = store.retained(rv)
        if snap is not None:
            return snap
        return store.snapshot(as_rv=rv) if store.changed_at(None) <= rv else None

    def _send_page(
        self,
        namespace: str | None,
        opts: ListOptions,
        snap: Snapshot,
        start: Key | None,
        limit: int,
    ) -> None:
        """One page of a retained snapshot, from just after ``start``. Like the API server's
        cache, "more" means unfiltered items remain, so a selective list may end on an
        empty page; remainingItemCount is given only for unfiltered lists."""
        keys, entries = snap.keys, snap.entries
        lo, hi = key_range(keys, namespace)
        if start is not None:
            lo = max(lo, bisect.bisect_right(keys, start))
        labels, fields = opts.label_selector, opts.field_selector
        remaining = None
        if labels.empty and fields.empty:
            end = min(hi, lo + limit) if limit else hi
            picked = list(entries[lo:end])
            more = end < hi
            if more:
                remaining = hi - end
        else:
            picked = []
            more = False
            for i in range(lo, hi):
                if matches(entries[i], labels, fields):
                    picked.append(entries[i])
                    if limit and len(picked) == limit:
                        more = i + 1 < hi
                        break
        token = self.resource.codec.encode(snap.rv, picked[-1].key) if more else None
        self._send_list(namespace, lambda: picked, snap.rv, token, remaining)

    def _send_list(
        self,
        namespace: str | None,
        select: Callable[[], list[Entry]],
        rv: int,
        token: str | None = None,
        remaining: int | None = None,
        *,
        state: tuple[int, int] | None = None,
    ) -> None:
        """Sends a list body. One of the live state (``state`` given: what it was rendered
        from) is rendered once and reused while that state holds; a page is rendered each
        time (its items come from a retained snapshot, cheap to join again)."""
        if self.table is not None:
            send_table(self, self.table, [e.raw for e in select()], list_meta(rv, token, remaining))
            return
        res = self.resource
        query = self.query
        key: RenderKey = (
            res.spec.group,
            res.spec.plural,
            namespace,
            *(tuple(query[p]) if p in query else None for p in BODY_PARAMS),
        )
        cached = res.renders.get(key) if state is not None else None
        if cached is not None and cached.state == state:
            etag = cached.etag
        else:
            entries = select()
            etag = _etag(repr(key).encode(), rv, token, remaining, entries)
            cached = None
        etag = self._form_tag(etag)
        self.set_header("ETag", etag)
        if self._not_modified(etag):
            return
        if cached is None:
            body = go_escape(list_body(res.spec, entries, rv, token, remaining))
            cached = Rendered(state or (rv, -2), etag, body)
            if state is not None and len(body) <= res.renders.maxsize // 4:
                res.renders[key] = cached  # bounded in bytes: a huge body is not kept
        self._send_json(cached.body, cached, key)

    # ---- responses -------------------------------------------------------------------------
    def _pretty(self) -> bool:
        headers = self.request.headers
        return wants_pretty(self.query, headers.get("User-Agent"), headers.get("Accept"))

    def _form_tag(self, etag: str) -> str:
        """The tag of the form this request gets: an indented body is other bytes than the
        compact one, so it has a tag of its own (a 304 means "the very bytes you hold")."""
        return etag[:-1] + '-pretty"' if self._pretty() else etag

    def _not_modified(self, etag: str) -> bool:
        if etag_matches(self.request.headers.get("If-None-Match"), etag):
            self.set_status(304)
            self.finish()
            return True
        return False

    def _send_json(
        self, body: bytes, rendered: Rendered | None = None, key: RenderKey | None = None
    ) -> None:
        """Sends a compact body as the API server writes it (escaped as Go escapes, with a
        final newline), or indented when the request asks (``pretty``, a human's user
        agent). The indented form is made per request from the compact one and never kept:
        the render cache holds compact bodies only."""
        if self._pretty():
            body, rendered, key = go_indent(body), None, None
        self.set_header("Content-Type", "application/json")

        def keep(zipped: bytes) -> None:
            assert rendered is not None
            rendered.gzipped = zipped
            renders = self.resource.renders
            if key is not None and renders.get(key) is rendered:
                renders[key] = rendered  # counted again, with its gzip form

        body, zipped = encoded(
            body,
            self.request.headers.get("Accept-Encoding"),
            kept=rendered.gzipped if rendered is not None else None,
            keep=keep if rendered is not None else None,
        )
        if zipped:
            self.set_header("Content-Encoding", "gzip")
            self.add_header("Vary", "Accept-Encoding")
        self.finish(body)


def _target(obj: dict[str, Any], deleting: bool) -> tuple[str, str, int | None]:
    """(namespace, name, version the cache must reach) of a written object; version None
    when the object must be gone: deleted outright, the answer carries its last state."""
    meta = obj.get("metadata") or {}
    rv: int | None = int(meta.get("resourceVersion") or 0)
    if deleting and not meta.get("deletionTimestamp"):
        rv = None
    return meta.get("namespace") or "", meta.get("name") or "", rv


def list_path_args(spec: ResourceSpec) -> list[tuple[str, dict[str, object]]]:
    """(pattern, fixed kwargs) of the routes one resource's reads answer on."""
    prefix = spec.api_prefix
    return [
        (rf"{prefix}/namespaces/(?P<namespace>[^/]+)/{spec.plural}/?", {}),
        (rf"{prefix}/{spec.plural}/?", {}),
        (
            rf"{prefix}/namespaces/(?P<namespace>[^/]+)/{spec.plural}/(?P<name>[^/]+)"
            r"(?:/(?P<subresource>status))?",
            {},
        ),
    ]


__all__ = ["CachedResource", "ResourceHandler", "StatusError"]
