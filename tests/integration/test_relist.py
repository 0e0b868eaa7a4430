"""An upstream re-list breaks the cache's history; no client may lose an event to it.

The re-list is forced as a long outage forces it in a real cluster: watchcache's
kube-apiserver goes down, a second kube-apiserver on the same etcd takes writes meanwhile,
then the first comes back with a watch cache that starts after those writes, so the
reflector's watch gets 410 and it lists again. Clients are followed as client-go follows a
watch (on 410, list again and watch from the list), and judged against kube-apiserver's own
list: every state they rebuild, from every version they were ever sent, must be exact.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import differential
import pytest
from kubeio import (
    Follower,
    KubeWriter,
    collection,
    is_expired,
    listed,
    proxy_watch,
    wait_cached,
    watch_path,
)
from support import population
from support.controlplane import ControlPlane
from watchclient import reached, replay, summary

if TYPE_CHECKING:
    from conftest import Proxy

NS, QUIET = "wc-relist", "wc-relist-quiet"
ML = "labelSelector=" + urllib.parse.quote("team=ml")


@pytest.fixture(scope="module", autouse=True)
def namespaces(controlplane: ControlPlane) -> Iterator[None]:
    population.ensure_namespaces(controlplane.request, (NS, QUIET))
    yield
    population.delete_all(controlplane.request, (NS, QUIET))


def upstream_lists(proxy: Proxy) -> int:
    code, _, body = proxy.request("GET", "/metrics")
    assert code == 200
    pattern = r'^watchcache_upstream_lists_total\{resource="rayclusters\.ray\.io"\} (\d+)$'
    return int(re.search(pattern, body.decode(), re.M).group(1))  # type: ignore[union-attr]


def kube_state(cp: ControlPlane, query: str = "") -> dict[str, int]:
    return listed(differential.kube(cp), collection(NS) + query)[1]


def resumed_state(proxy: Proxy, rv: int, state: dict[str, int], last: int) -> dict[str, int] | None:
    """The state a client holding ``state`` at ``rv`` rebuilds by watching from ``rv`` up to
    the change at ``last``; None when the cache answers 410 (the client must list again)."""
    stream = proxy_watch(proxy, watch_path(NS, f"resourceVersion={rv}"))
    try:
        state = dict(state)
        while True:
            event = stream.next(60)
            assert event is not None, (rv, stream.error)
            if is_expired(event):
                return None
            replay([event], state)
            if reached(last)(event):
                return state
    finally:
        stream.close()


def test_a_relist_restarts_history_so_no_client_loses_an_event(
    proxy_factory: Callable[..., Proxy], controlplane: ControlPlane
) -> None:
    cp, writer = controlplane, KubeWriter(controlplane)
    for i, team in enumerate(("ml", "data", "ml", "data", "ml", "ml")):
        writer.create(f"r-{i}", NS, {"team": team})
    writer.create("q-0", QUIET)
    proxy = proxy_factory()
    wait_cached(proxy, cp, collection(NS))
    wait_cached(proxy, cp, collection(QUIET))

    def follow(ns: str, query: str = "") -> Follower:
        rv, state = listed(differential.proxy(proxy), collection(ns) + "?" + query)
        watch = "&".join(q for q in (query, f"resourceVersion={rv}") if q)
        follower = Follower(
            proxy, collection(ns), proxy_watch(proxy, watch_path(ns, watch)), state, query
        )
        follower.states.append((rv, dict(state)))
        return follower

    everything, selective, quiet = follow(NS), follow(NS, ML), follow(QUIET)
    try:
        for i in range(3):
            writer.patch(NS, f"r-{i}", {"metadata": {"annotations": {"round": "1"}}})
        everything.until(lambda s: s == kube_state(cp))
        before = [rv for rv, _ in everything.states]
        lists = upstream_lists(proxy)

        with cp.apiserver_replaced():  # the cache's upstream is down; writes go elsewhere
            writer.patch(NS, "r-0", {"metadata": {"annotations": {"round": "2"}}})
            writer.delete(NS, "r-1")
            writer.patch(NS, "r-3", {"metadata": {"labels": {"team": "ml"}}})  # enters team=ml
            writer.delete(NS, "r-2")
            writer.create("r-6", NS, {"team": "ml"})
            writer.patch(NS, "r-4", {"metadata": {"labels": {"team": "data"}}})  # leaves it

        differential.wait_until(
            lambda: upstream_lists(proxy) > lists, what="watchcache to list again"
        )
        everything.until(lambda s: s == kube_state(cp))
        selective.until(lambda s: s == kube_state(cp, "?" + ML))
        # Both had seen history the re-list rewrote: ended with 410, they listed again.
        assert everything.expired and selective.expired
        relisted_at = min(rv for rv, _ in everything.states if rv > before[-1])

        # After the re-list, history goes on; creations, updates and deletions.
        writer.delete(NS, "r-0")
        writer.patch(NS, "r-3", {"metadata": {"annotations": {"round": "3"}}})
        writer.create("r-7", NS, {"team": "data"})
        last = writer.patch(NS, "r-6", {"status": {"state": "ready"}}, "/status")
        final = kube_state(cp)
        everything.until(lambda s: s == final)
        selective.until(lambda s: s == kube_state(cp, "?" + ML))

        # The quiet namespace missed nothing: its watcher kept its stream.
        q = writer.patch(QUIET, "q-0", {"metadata": {"annotations": {"after": "relist"}}})
        quiet.until(lambda s: s.get("q-0") == q)
        assert not quiet.expired

        # No two changes a client was sent share a version.
        for recorder in (everything, selective):
            versions = [summary(e)[2] for e in recorder.events]
            assert len(versions) == len(set(versions)), versions

        # A watch from before the re-list is refused as kube-apiserver refuses it.
        for rv in before:
            stream = proxy_watch(proxy, watch_path(NS, f"resourceVersion={rv}"))
            try:
                event = stream.next(30)
            finally:
                stream.close()
            assert event is not None and is_expired(event), (rv, event)
            message = event["object"]["message"]
            assert re.fullmatch(rf"too old resource version: {rv} \((\d+)\)", message), message
            assert event["object"]["reason"] == "Expired"

        # A client resuming from any version it was sent after the re-list rebuilds the
        # exact state; from one before it, it is told to list again.
        for rv, state in everything.states:
            got = state if rv >= last else resumed_state(proxy, rv, state, last)
            if rv < relisted_at:
                assert got is None, rv
            else:
                assert got == final, (rv, state, got)
    finally:
        for recorder in (everything, selective, quiet):
            recorder.close()
