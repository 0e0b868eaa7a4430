"""The Hub's history and its watchers across an upstream re-list, without HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from watchcache.cache.hub import Filter, Hub, TooOld, Watcher
from watchcache.cache.store import Store
from watchcache.kube.selectors import parse_field_selector, parse_label_selector


def obj(ns: str, name: str, rv: int) -> dict:
    meta = {"namespace": ns, "name": name, "resourceVersion": str(rv)}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta}


def watch(hub: Hub, namespace: str | None) -> Watcher:
    watcher = hub.watcher(Filter(namespace, parse_label_selector(""), parse_field_selector("")))
    hub.add(watcher)
    return watcher


def frames(watcher: Watcher) -> list[dict]:
    return [orjson.loads(f) for f in watcher.drain(1 << 30)]


@pytest.fixture
def hub() -> Hub:
    store = Store()
    store.replace([obj("a", "x", 3), obj("b", "y", 4)], 10)
    hub = Hub(store)
    store.apply("MODIFIED", obj("a", "x", 11))
    store.apply("ADDED", obj("b", "z", 12))
    return hub


def test_history_gives_each_event_after_a_version_once(hub: Hub) -> None:
    assert [w.rv for w in hub.since(10)] == [11, 12]
    assert [w.rv for w in hub.since(11, "b")] == [12]


def test_a_relist_ends_watchers_that_could_miss_a_change_with_410(hub: Hub) -> None:
    everywhere, in_a, in_b = watch(hub, None), watch(hub, "a"), watch(hub, "b")
    hub.store.replace(
        [obj("a", "x", 11), obj("b", "y", 4), obj("b", "z", 12), obj("a", "n", 15)], 20
    )
    for watcher in (everywhere, in_a):
        (error,) = frames(watcher)
        assert watcher.ended and error["type"] == "ERROR"
        assert error["object"]["code"] == 410 and error["object"]["reason"] == "Expired"
        assert error["object"]["message"].endswith("(20)")
    assert not in_b.ended  # nothing in b changed: its sequence is still exact
    hub.store.apply("MODIFIED", obj("b", "y", 21))
    assert [f["object"]["metadata"]["resourceVersion"] for f in frames(in_b)] == ["21"]


def test_after_a_relist_history_restarts_at_the_lists_version(hub: Hub) -> None:
    hub.store.replace([obj("a", "x", 11), obj("b", "z", 12)], 20)  # b/y gone, when unknown
    with pytest.raises(TooOld) as exc:
        hub.since(12)
    assert exc.value.oldest == 20
    assert hub.since(20) == []
    hub.store.apply("DELETED", obj("b", "z", 21))
    assert [(w.event.type, w.rv) for w in hub.since(20)] == [("DELETED", 21)]


def test_a_relist_that_changed_nothing_keeps_history_and_watchers(hub: Hub) -> None:
    watcher = watch(hub, None)
    hub.store.replace(list(hub.store.entries()), 30)
    assert not watcher.ended and [w.rv for w in hub.since(10)] == [11, 12]


def test_a_quiet_scope_is_served_from_a_version_older_than_the_window(hub: Hub) -> None:
    hub.limits.count = 1
    hub.store.apply("MODIFIED", obj("b", "z", 13))  # trims the window past 11 and 12
    with pytest.raises(TooOld):
        hub.since(11, "b")
    assert hub.since(11, "a") == []  # a last changed at 11: nothing to send
    with pytest.raises(TooOld):
        hub.since(10, "a")


def test_a_full_queue_ends_the_watcher_as_slow(hub: Hub) -> None:
    hub.queue_capacity = 2
    watcher = watch(hub, None)
    for rv in (13, 14, 15):
        hub.store.apply("MODIFIED", obj("a", "x", rv))
    assert watcher.ended and watcher.overflowed and hub.ended_slow == 1


def test_a_shutdown_closes_each_open_watcher_at_the_stores_version_after_its_events(
    hub: Hub,
) -> None:
    """close_all marks the version a last bookmark may carry: every event up to it is queued
    first, none after it; a watcher ended before (a 410) gets no such version."""
    live, expired = watch(hub, "b"), watch(hub, "a")
    hub.store.replace(
        [obj("a", "x", 11), obj("b", "y", 4), obj("b", "z", 12), obj("a", "n", 15)], 20
    )  # a changed: its watcher ends with 410
    hub.store.apply("MODIFIED", obj("b", "z", 21))
    hub.close_all()
    hub.store.apply("MODIFIED", obj("b", "z", 22))  # the cache stays fed; the watch does not
    assert expired.ended and expired.closing_rv is None
    assert live.ended and live.closing_rv == hub.store.rv - 1 == 21
    assert [f["object"]["metadata"]["resourceVersion"] for f in frames(live)] == ["21"]


def test_watchers_with_one_filter_share_its_frame_and_leave_it_one_by_one(hub: Hub) -> None:
    first, second, other = watch(hub, "a"), watch(hub, "a"), watch(hub, "b")
    hub.store.apply("MODIFIED", obj("a", "x", 21))
    one, two = frames(first), frames(second)
    assert one == two and one[0]["object"]["metadata"]["resourceVersion"] == "21"
    assert frames(other) == []
    hub.remove(first)
    hub.store.apply("MODIFIED", obj("a", "x", 22))
    assert frames(first) == [] and len(frames(second)) == 1
    hub.remove(second)
    hub.remove(other)
    hub.store.apply("MODIFIED", obj("a", "x", 23))
    assert not hub.watchers and not hub._groups  # nothing kept for filters no one uses


def rvs(frames: Sequence[bytes]) -> list[str]:
    return [orjson.loads(f)["object"]["metadata"]["resourceVersion"] for f in frames]


def test_the_events_of_one_loop_step_reach_an_idle_stream_in_one_write(hub: Hub) -> None:
    writes: list[list[str]] = []

    def direct(frames: Sequence[bytes]) -> bool:
        writes.append(rvs(frames))
        return True

    async def steps() -> None:
        watcher = watch(hub, "a")
        watcher.direct = direct
        for rv in (13, 14, 15):  # one upstream read: one step
            hub.store.apply("MODIFIED", obj("a", "x", rv))
        assert writes == []
        await asyncio.sleep(0)
        hub.store.apply("MODIFIED", obj("a", "x", 16))  # the next step
        await asyncio.sleep(0)
        assert writes == [["13", "14", "15"], ["16"]]
        assert not watcher.frames and watcher.queued_bytes == 0 and watcher.rv == 16

    asyncio.run(steps())


def test_a_batch_a_busy_stream_cannot_take_wakes_its_coroutine_with_it_queued(hub: Hub) -> None:
    async def steps() -> None:
        watcher = watch(hub, "a")
        watcher.direct = lambda frames: False  # a write still in flight
        waiting = asyncio.ensure_future(watcher.wait(None))
        await asyncio.sleep(0)  # the stream's coroutine, idle
        hub.store.apply("MODIFIED", obj("a", "x", 13))
        hub.store.apply("MODIFIED", obj("a", "x", 14))
        await asyncio.wait_for(waiting, 1)
        assert rvs(watcher.drain(1 << 20)) == ["13", "14"]

    asyncio.run(steps())
