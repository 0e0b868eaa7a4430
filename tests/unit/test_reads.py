"""The cache's read decisions (page, subscription, or delegate), without HTTP."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from watchcache.cache import reads
from watchcache.cache.hub import Hub
from watchcache.cache.reads import Delegate, Page, Subscription
from watchcache.cache.resource import CachedResource, render_cache
from watchcache.cache.store import Store
from watchcache.cache.tokens import ContinueCodec
from watchcache.kube.listoptions import parse_list_options
from watchcache.kube.resources import RAY_RESOURCES
from watchcache.kube.status import StatusError

SPEC = RAY_RESOURCES[0]


def obj(ns: str, name: str, rv: int, **labels: str) -> dict:
    meta = {"namespace": ns, "name": name, "resourceVersion": str(rv), "labels": labels}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta}


@pytest.fixture
def res() -> CachedResource:
    store = Store()
    store.replace([obj("a", "x", 3, app="ray"), obj("a", "y", 4), obj("b", "z", 5)], 10)
    codec = ContinueCodec()
    resource = CachedResource(SPEC, store, Hub(store), codec, render_cache(1 << 20))
    resource.rv_wait = 0.01
    return resource


def options(query: str, res: CachedResource):  # type: ignore[no-untyped-def]
    parsed: dict[str, list[str]] = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")  # a value may hold "=" (a selector)
        parsed.setdefault(key, []).append(value)
    return parse_list_options(parsed, own_token=res.codec.ours)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def names(page: Page) -> list[str]:
    return [e.name for e in page.entries()]


def test_a_live_list_is_a_page_at_its_scopes_last_change(res: CachedResource) -> None:
    page = run(reads.list_(res, "a", options("", res)))
    assert isinstance(page, Page) and names(page) == ["x", "y"]
    assert page.state is not None and page.token is None


def test_a_selector_is_applied_when_the_page_is_rendered(res: CachedResource) -> None:
    page = run(reads.list_(res, None, options("labelSelector=app==ray", res)))
    assert isinstance(page, Page)
    res.store.apply("ADDED", obj("b", "w", 11, app="ray"))
    assert names(page) == ["x", "w"]  # selected lazily: a render cache hit selects nothing


def test_pages_walk_a_retained_snapshot_with_our_token(res: CachedResource) -> None:
    first = run(reads.list_(res, None, options("limit=2", res)))
    assert isinstance(first, Page) and names(first) == ["x", "y"] and first.remaining == 1
    res.store.apply("ADDED", obj("a", "new", 11))  # after the snapshot: not in its pages
    rest = run(reads.list_(res, None, options(f"limit=2&continue={first.token}", res)))
    assert isinstance(rest, Page) and names(rest) == ["z"] and rest.token is None


def test_an_unknown_token_of_ours_is_410(res: CachedResource) -> None:
    token = ContinueCodec().encode(10, ("a", "x"))  # another server's key
    with pytest.raises(StatusError) as exc:
        run(reads.list_(res, None, options(f"limit=2&continue={token}", res)))
    assert exc.value.code == 410


def test_a_version_the_cache_has_not_reached_is_delegated(res: CachedResource) -> None:
    assert isinstance(run(reads.list_(res, None, options("resourceVersion=99", res))), Delegate)
    assert isinstance(run(reads.get(res, "a", "x", "99")), Delegate)


def test_an_exact_version_no_longer_held_is_delegated(res: CachedResource) -> None:
    res.store.apply("MODIFIED", obj("a", "x", 12))
    exact = options("resourceVersion=10&resourceVersionMatch=Exact", res)
    assert isinstance(run(reads.list_(res, None, exact)), Delegate)


def test_a_missing_object_is_404(res: CachedResource) -> None:
    with pytest.raises(StatusError) as exc:
        run(reads.get(res, "a", "nope", None))
    assert exc.value.code == 404


def test_a_watch_from_the_state_sends_it_then_follows_with_no_gap(res: CachedResource) -> None:
    sub = run(reads.watch(res, "a", options("watch=1", res)))
    assert isinstance(sub, Subscription) and sub.watcher is not None
    lines = b"".join(sub.initial).splitlines()
    assert [orjson.loads(f)["object"]["metadata"]["name"] for f in lines] == ["x", "y"]
    res.store.apply("MODIFIED", obj("a", "x", 11))  # after the subscribe step: an event
    (event,) = [orjson.loads(f) for f in sub.watcher.drain(1 << 20)]
    assert event["type"] == "MODIFIED" and event["object"]["metadata"]["resourceVersion"] == "11"


def test_a_watch_from_a_version_replays_the_history_after_it(res: CachedResource) -> None:
    res.store.apply("MODIFIED", obj("a", "x", 11))
    res.store.apply("MODIFIED", obj("b", "z", 12))
    sub = run(reads.watch(res, None, options("watch=1&resourceVersion=11", res)))
    assert isinstance(sub, Subscription)
    lines = b"".join(sub.initial).splitlines()
    assert [orjson.loads(f)["object"]["metadata"]["name"] for f in lines] == ["z"]


def test_a_watch_from_a_version_older_than_the_history_ends_with_410(res: CachedResource) -> None:
    res.store.apply("MODIFIED", obj("a", "x", 11))
    sub = run(reads.watch(res, None, options("watch=1&resourceVersion=2", res)))
    assert isinstance(sub, Subscription) and sub.watcher is None and sub.error is not None
    assert orjson.loads(sub.error)["object"]["code"] == 410


def started_without_suspending(coro):  # type: ignore[no-untyped-def]
    """The coroutine's result when it ran to its end at its first step, never awaiting."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("it waited")


def test_a_watch_from_a_version_the_cache_has_not_reached_starts_at_once_and_skips_up_to_it(
    res: CachedResource,
) -> None:
    res.rv_wait = 3600.0  # were it to wait for version 20, it would suspend
    sub = started_without_suspending(
        reads.watch(res, "a", options("watch=1&resourceVersion=20", res))
    )
    assert isinstance(sub, Subscription) and sub.watcher is not None
    assert list(sub.initial) == []
    res.store.apply("MODIFIED", obj("a", "x", 15))  # at or below 20: the client has it
    res.store.apply("MODIFIED", obj("a", "y", 21))
    (event,) = [orjson.loads(f) for f in sub.watcher.drain(1 << 20)]
    assert event["object"]["metadata"]["resourceVersion"] == "21"


def test_a_watch_from_the_state_at_a_version_not_reached_is_delegated(
    res: CachedResource,
) -> None:
    query = "watch=1&resourceVersion=20&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
    assert isinstance(run(reads.watch(res, "a", options(query, res))), Delegate)
