"""The Reflector's loop over an in-memory transport: paging, resuming, re-listing on 410, and
ending a watch that has gone silent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from watchcache.cache.reflector import Backoff, Reflector
from watchcache.cache.store import Relisted, Store
from watchcache.config import RAY_RESOURCES
from watchcache.upstream.client import LineSink, Response


def obj(name: str, rv: int) -> dict[str, Any]:
    meta = {"namespace": "ns", "name": name, "resourceVersion": str(rv)}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta}


# In a watch's events: stop sending, and keep the connection open (a stalled watch).
STALL = "stall"
# As a whole watch: no answer at all, not even a head.
HANG = "hang"


@dataclass
class FakeUpstream:
    """Answers LISTs from ``pages`` and WATCHes from ``watches``, recording the targets."""

    pages: list[dict[str, Any] | str]
    watches: list[list[dict[str, Any] | str] | int | str]
    targets: list[str] = field(default_factory=list)
    on_send: Callable[[], None] | None = None

    async def fetch(self, method: str, target: str, **_: Any) -> Response:
        self.targets.append(target)
        page = self.pages.pop(0)
        if page == HANG:
            await asyncio.Event().wait()
        return Response(200, {}, orjson.dumps(page))  # type: ignore[arg-type]

    def line_sink(self, on_line: Any, on_head: Any = None) -> LineSink:
        return LineSink(on_line, on_head)

    async def send(self, method: str, target: str, sink: Any, **_: Any) -> None:
        self.targets.append(target)
        if self.on_send is not None:
            self.on_send()
        if not self.watches:
            raise asyncio.CancelledError  # the test is over
        events = self.watches.pop(0)
        if events == HANG:
            await asyncio.Event().wait()
        if isinstance(events, int):
            sink.head(events, "", {})
            return
        sink.head(200, "OK", {})
        for event in events:
            if event == STALL:
                await asyncio.Event().wait()
            result = sink.data(orjson.dumps(event) + b"\n")
            if result is not None:
                await result
        sink.end()


def run(reflector: Reflector) -> None:
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(reflector.run())


async def no_sleep(_: float) -> None:
    return None


def test_pages_are_listed_then_watched_from_the_lists_version_and_resumed() -> None:
    upstream = FakeUpstream(
        pages=[
            {"items": [obj("a", 5)], "metadata": {"continue": "t1"}},
            {"items": [obj("b", 6)], "metadata": {"resourceVersion": "10"}},
        ],
        watches=[
            [{"type": "ADDED", "object": obj("c", 11)}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}],
        ],
    )
    store = Store()
    reflector = Reflector(RAY_RESOURCES[0], upstream, store, sleep=no_sleep)  # type: ignore[arg-type]
    run(reflector)
    assert [e.name for e in store.entries()] == ["a", "b", "c"]
    assert store.rv == 15
    assert "continue=t1" in upstream.targets[1]
    assert "resourceVersion=10" in upstream.targets[2]
    assert "resourceVersion=11" in upstream.targets[3]  # resumed, not listed again
    assert reflector.lists == 1


def test_a_410_error_event_leads_to_a_new_list_that_replaces_the_state() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    upstream = FakeUpstream(
        pages=[
            {"items": [obj("a", 5), obj("b", 6)], "metadata": {"resourceVersion": "10"}},
            {"items": [obj("a", 5), obj("c", 30)], "metadata": {"resourceVersion": "40"}},
        ],
        watches=[[gone]],
    )
    store = Store()
    seen: list[object] = []
    store.subscribe(seen.append)
    reflector = Reflector(RAY_RESOURCES[0], upstream, store, sleep=no_sleep)  # type: ignore[arg-type]
    run(reflector)
    assert reflector.lists == 2
    assert seen[-1] == Relisted(40, frozenset({"ns"}))
    assert [e.name for e in store.entries()] == ["a", "c"]
    assert store.rv == 40


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial=1, maximum=4, jitter=0, rand=lambda: 0.5)
    assert [backoff.delay() for _ in range(4)] == [1, 2, 4, 4]
    backoff.reset()
    assert backoff.delay() == 1


def test_upstream_errors_are_retried_after_a_backoff() -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    upstream = FakeUpstream(
        pages=[{"items": [], "metadata": {"resourceVersion": "3"}}], watches=[500, 500]
    )
    backoff = Backoff(initial=1, jitter=0)
    reflector = Reflector(
        RAY_RESOURCES[0],
        upstream,
        Store(),
        sleep=sleep,
        backoff=backoff,  # type: ignore[arg-type]
    )
    run(reflector)
    assert sleeps == [1, 2]


def added(name: str, rv: int) -> dict[str, Any]:
    return {"type": "ADDED", "object": obj(name, rv)}


def quiet_reflector(upstream: FakeUpstream, store: Store, **kw: Any) -> Reflector:
    return Reflector(RAY_RESOURCES[0], upstream, store, silence=0.05, **kw)  # type: ignore[arg-type]


def test_a_watch_silent_past_the_bound_is_ended_and_resumed_at_once_from_the_last_version() -> None:
    states: list[str | None] = []
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    upstream = FakeUpstream(
        pages=[{"items": [], "metadata": {"resourceVersion": "10"}}],
        watches=[[added("a", 11), STALL], [added("b", 12)]],
        on_send=lambda: states.append(reflector.behind),
    )
    store = Store()
    reflector = quiet_reflector(upstream, store, sleep=sleep)
    run(reflector)
    assert reflector.silent_watches == 1
    assert "resourceVersion=11" in upstream.targets[2]
    assert [e.name for e in store.entries()] == ["a", "b"]
    assert (states[1] or "").startswith("restarted after silence: no byte")
    assert sleeps == []  # it had been answered: no backoff


def test_a_watch_that_never_answers_counts_as_silent_from_its_request() -> None:
    upstream = FakeUpstream(
        pages=[{"items": [], "metadata": {"resourceVersion": "10"}}],
        watches=[HANG, HANG, [added("a", 11)]],
    )
    store = Store()
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    reflector = quiet_reflector(upstream, store, sleep=sleep, backoff=Backoff(jitter=0))
    run(reflector)
    assert reflector.silent_watches == 2
    assert sleeps == [0.2, 0.4]  # never answered: backed off like a failure
    assert all("resourceVersion=10" in t for t in upstream.targets[1:4])
    assert [e.name for e in store.entries()] == ["a"]


def test_the_cache_is_behind_while_listing_and_restarting_and_current_once_watching() -> None:
    states: list[str | None] = []
    upstream = FakeUpstream(
        pages=[{"items": [], "metadata": {"resourceVersion": "3"}}],
        watches=[[added("a", 4)], 500, [added("b", 5)]],
        on_send=lambda: states.append(reflector.behind),
    )
    reflector = quiet_reflector(upstream, Store(), sleep=no_sleep)
    assert reflector.behind == "listing"
    run(reflector)
    # At each WATCH request: just listed; the first watch ended normally (not behind);
    # the 500 left the cache behind until the next watch was established.
    assert states[0] == "listing"
    assert states[1] is None
    assert (states[2] or "").startswith("upstream failed: WATCH")
    assert states[3] is None


def test_the_silence_shown_spans_a_whole_stalled_watch() -> None:
    silences: list[float] = []
    upstream = FakeUpstream(
        pages=[{"items": [], "metadata": {"resourceVersion": "3"}}],
        watches=[HANG, [added("a", 4)]],
        on_send=lambda: silences.append(reflector.silent_for()),
    )
    reflector = Reflector(RAY_RESOURCES[0], upstream, Store(), sleep=no_sleep, silence=0.2)  # type: ignore[arg-type]
    run(reflector)
    assert silences[1] >= 0.2  # the hung watch sent nothing from its request to its end
    assert silences[2] < 0.2  # the next one did


def test_a_list_page_that_never_comes_is_abandoned_after_the_bound_and_listed_again() -> None:
    upstream = FakeUpstream(
        pages=[HANG, {"items": [obj("a", 5)], "metadata": {"resourceVersion": "5"}}],
        watches=[[added("b", 6)]],
    )
    store = Store()
    reflector = quiet_reflector(upstream, store, sleep=no_sleep)
    run(reflector)
    assert reflector.lists == 1
    assert reflector.silent_watches == 1
    assert [e.name for e in store.entries()] == ["a", "b"]
