"""The Store's own logic: ordering, the label index, re-list differences, snapshots, waits."""

from __future__ import annotations

import asyncio

import pytest

from watchcache.cache.store import NAMESPACE_VERSIONS, Event, Relisted, Store
from watchcache.kube.selectors import parse_field_selector, parse_label_selector


def obj(ns: str, name: str, rv: int, **labels: str) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"namespace": ns, "name": name, "resourceVersion": str(rv), "labels": labels},
        "status": {"state": "ready" if rv % 2 else "suspended"},
    }


def names(entries) -> list[tuple[str, str]]:
    return [(e.namespace, e.name) for e in entries]


def select(store: Store, ns: str | None = None, labels: str = "", fields: str = ""):
    return store.select(ns, parse_label_selector(labels), parse_field_selector(fields))


@pytest.fixture
def store() -> Store:
    s = Store()
    s.replace(
        [obj("b", "x", 5, app="a"), obj("a", "z", 3, app="b"), obj("a", "y", 4, app="a", t="1")],
        10,
    )
    return s


def test_list_order_is_namespace_then_name(store: Store) -> None:
    assert names(select(store)) == [("a", "y"), ("a", "z"), ("b", "x")]


def test_namespace_list_is_a_key_range(store: Store) -> None:
    assert names(select(store, "a")) == [("a", "y"), ("a", "z")]
    assert names(select(store, "c")) == []


def test_label_selector_uses_the_index_and_keeps_order(store: Store) -> None:
    assert names(select(store, labels="app=a")) == [("a", "y"), ("b", "x")]
    assert names(select(store, labels="app in (a,b),t")) == [("a", "y")]
    assert names(select(store, labels="app!=a")) == [("a", "z")]


def test_field_selectors_on_name_namespace_and_any_scalar_path(store: Store) -> None:
    assert names(select(store, fields="metadata.name=z")) == [("a", "z")]
    assert names(select(store, "b", fields="metadata.namespace=a")) == []
    assert names(select(store, fields="status.state=ready")) == [("a", "z"), ("b", "x")]


def test_label_change_moves_an_object_between_index_buckets(store: Store) -> None:
    store.apply("MODIFIED", obj("a", "z", 11, app="a"))
    assert names(select(store, labels="app=a")) == [("a", "y"), ("a", "z"), ("b", "x")]
    assert names(select(store, labels="app=b")) == []


def test_relist_replaces_the_state_and_reports_one_break_not_made_up_events(
    store: Store,
) -> None:
    seen: list[Event | Relisted] = []
    store.subscribe(seen.append)
    store.replace([obj("a", "y", 4, app="a"), obj("a", "z", 12), obj("c", "new", 11)], 20)
    assert seen == [Relisted(20, frozenset({"a", "b", "c"}))]
    assert names(select(store)) == [("a", "y"), ("a", "z"), ("c", "new")]
    assert store.rv == 20
    assert store.changed_at("b") == 20  # the deletion happened at some version up to 20


def test_relist_that_finds_nothing_changed_is_only_a_newer_version(store: Store) -> None:
    seen: list[Event | Relisted] = []
    store.subscribe(seen.append)
    store.replace(list(store.entries()), 30)
    assert seen == []
    assert (store.rv, store.changed_at(None), store.changed_at("a")) == (30, 10, 10)


def test_a_quiet_namespace_keeps_the_version_of_its_last_change(store: Store) -> None:
    store.apply("MODIFIED", obj("b", "x", 12))
    store.bookmark(40)
    assert store.list_rv("a") == 10  # unchanged since the first list
    assert store.list_rv("b") == 12
    assert store.list_rv(None) == 12
    assert store.list_rv("never-seen") == 10
    store.apply("DELETED", obj("a", "y", 41))
    assert store.list_rv("a") == 41


def test_versions_of_emptied_namespaces_are_swept_into_a_floor() -> None:
    s = Store()
    s.replace([], 1)
    for i in range(NAMESPACE_VERSIONS + 1):
        s.apply("ADDED", obj(f"ns{i}", "x", 2 * i + 2))
        s.apply("DELETED", obj(f"ns{i}", "x", 2 * i + 3))
    assert len(s._ns_changed) <= NAMESPACE_VERSIONS
    # A swept namespace answers with a version at which it is known to be unchanged.
    assert s.changed_at("ns0") >= 3
    assert s.changed_at("ns0") <= s.rv


def test_snapshot_is_unaffected_by_later_changes(store: Store) -> None:
    snap = store.snapshot()
    store.apply("DELETED", obj("a", "y", 11))
    assert [e.name for e in snap.entries] == ["y", "z", "x"]
    assert store.retained(10) is snap
    assert names(select(store)) == [("a", "z"), ("b", "x")]


def test_wait_for_returns_when_the_store_reaches_the_version(store: Store) -> None:
    async def scenario() -> tuple[bool, bool]:
        waiting = asyncio.ensure_future(store.wait_for(12, 5))
        await asyncio.sleep(0)
        store.bookmark(12)
        reached = await waiting
        timed_out = await store.wait_for(99, 0.01)
        return reached, timed_out

    assert asyncio.run(scenario()) == (True, False)


def test_store_version_is_the_lowest_of_its_feeds() -> None:
    s = Store(feeds=("a", "b"))
    s.replace([obj("a", "x", 3)], 10, feed="a")
    assert not s.synced
    s.replace([obj("b", "x", 4)], 7, feed="b")
    assert s.synced and s.rv == 7 and s.sync_rv == 10
    s.bookmark(15, feed="b")
    assert s.rv == 10


def test_order_is_the_storage_key_order_not_the_namespace_name_pair() -> None:
    s = Store()
    s.replace([obj("a", "x", 3), obj("a-1", "x", 4), obj("a", "y", 5)], 10)
    assert names(select(s)) == [("a-1", "x"), ("a", "x"), ("a", "y")]
    assert names(select(s, "a")) == [("a", "x"), ("a", "y")]


def test_name_selector_across_namespaces_uses_the_name_index(store: Store) -> None:
    store.apply("ADDED", obj("c", "x", 11, app="b"))
    assert names(select(store, fields="metadata.name=x")) == [("b", "x"), ("c", "x")]
    assert names(select(store, labels="app=b", fields="metadata.name=x")) == [("c", "x")]
    store.apply("DELETED", obj("b", "x", 12))
    assert names(select(store, fields="metadata.name=x")) == [("c", "x")]
