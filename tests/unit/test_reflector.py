"""The Reflector's loop over an in-memory transport: paging, resuming, re-listing on 410."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from watchcache.cache.reflector import Backoff, Reflector
from watchcache.cache.store import Relisted, Store
from watchcache.config import RAY_RESOURCES
from watchcache.upstream.client import Response


def obj(name: str, rv: int) -> dict[str, Any]:
    meta = {"namespace": "ns", "name": name, "resourceVersion": str(rv)}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta}


@dataclass
class FakeUpstream:
    """Answers LISTs from ``pages`` and WATCHes from ``watches``, recording the targets."""

    pages: list[dict[str, Any]]
    watches: list[list[dict[str, Any]] | int]
    targets: list[str] = field(default_factory=list)

    async def fetch(self, method: str, target: str, **_: Any) -> Response:
        self.targets.append(target)
        page = self.pages.pop(0)
        return Response(200, {}, orjson.dumps(page))  # type: ignore[arg-type]

    async def send(self, method: str, target: str, sink: Any, **_: Any) -> None:
        self.targets.append(target)
        if not self.watches:
            raise asyncio.CancelledError  # the test is over
        events = self.watches.pop(0)
        if isinstance(events, int):
            sink.head(events, "", {})
            return
        sink.head(200, "OK", {})
        for event in events:
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
