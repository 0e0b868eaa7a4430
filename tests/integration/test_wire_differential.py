"""The bytes of an answer, judged against kube-apiserver's (issue 10, "Wire differences").

test_read_differential.py compares what answers mean (and their last byte); this compares
the bytes themselves where they must be the same: a compact get is kube's byte for byte,
final newline included; an indented one (``?pretty=true``, ``Accept: ...;pretty=1``, a curl
user agent) too, and a pretty request never gets (nor leaves in the render cache) anything
but its own form. A list may differ from kube's only in its own resourceVersion. Ray events,
a built-in kind, keep their Go field order and carry no ``continue`` on their last page.
``/api`` is kube's but for the address: watchcache's own, never the API server's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import differential
import pytest
from differential import Answer
from support import population
from support.controlplane import ControlPlane

from watchcache.kube.wire import go_indent

if TYPE_CHECKING:
    from conftest import Proxy

NAMESPACE = "wc-wire"
PLAN = population.plan(12, (NAMESPACE,), seed=20261202)
API = "/apis/ray.io/v1"
CLUSTERS = f"{API}/namespaces/{NAMESPACE}/rayclusters"
EVENTS = f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events"
CLUSTER = next(p for p in PLAN if p.kind == "RayCluster")
# The ways of asking for an indented answer, and two compact ones (one declining with curl).
PRETTY: dict[str, tuple[str, dict[str, str]]] = {
    "query-true": ("?pretty=true", {}),
    "query-1": ("?pretty=1", {}),
    "curl-agent": ("", {"User-Agent": "curl/8.5.0"}),
    "browser-agent": ("", {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}),
    "accept-pretty-1": ("", {"Accept": "application/json;pretty=1"}),
}
COMPACT: dict[str, tuple[str, dict[str, str]]] = {
    "plain": ("", {}),
    "curl-with-pretty-false": ("?pretty=false", {"User-Agent": "curl/8.5.0"}),
}


@pytest.fixture(scope="module")
def wire_population(controlplane: ControlPlane, cached: Proxy) -> Iterator[None]:
    stored = population.populate(
        controlplane.request, [population.build(p, controlplane.samples_dir) for p in PLAN]
    )
    ray = next(o for o in stored if o["kind"] == "RayCluster")
    for n in range(3):  # Ray events (with an '&' Go escapes), as the operator writes them
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": f"wire-event-{n}", "namespace": NAMESPACE},
            "eventTime": "2026-12-02T00:00:00.000000Z",
            "reportingController": "ray.io/kuberay-operator",
            "reportingInstance": "kuberay-operator",
            "action": "Reconcile",
            "reason": "Created",
            "type": "Normal",
            "note": f"head & workers <{n}> created",
            "regarding": {
                "apiVersion": "ray.io/v1",
                "kind": "RayCluster",
                "name": ray["metadata"]["name"],
                "namespace": NAMESPACE,
                "uid": ray["metadata"]["uid"],
            },
        }
        code, body = controlplane.request("POST", EVENTS, event)
        assert code == 201, body[:300]
    differential.wait_for_same_state(differential.proxy(cached), differential.kube(controlplane))
    kube, target = differential.kube(controlplane), differential.proxy(cached)
    differential.wait_until(
        lambda: len(target(EVENTS).body["items"]) == len(kube(EVENTS).body["items"]) == 3,
        what="the cache to hold the Ray events",
    )
    yield
    population.delete_all(controlplane.request, (NAMESPACE,))


def both(
    cp: ControlPlane, proxy: Proxy, path: str, headers: dict[str, str]
) -> tuple[Answer, Answer]:
    """(kube's, the proxy's) answer to one GET with these headers, the proxy asked first."""
    got = differential.proxy(proxy, headers)(path)
    return differential.kube(cp, headers)(path), got


def same_but_list_rv(want: Answer, got: Answer) -> None:
    """The bytes are equal once the proxy's list resourceVersion is put in kube's place (the
    one place two servers may differ: each answers at its own version)."""
    assert got.code == want.code == 200, (want.raw[:300], got.raw[:300])
    mine, theirs = got.meta["resourceVersion"], want.meta["resourceVersion"]
    assert int(mine) <= int(theirs)
    # The list's own resourceVersion: the last one in a custom resource's list (keys sorted,
    # metadata last), the first in a built-in kind's (metadata before the items).
    spots = list(re.finditer(rb'("resourceVersion": ?")' + mine.encode() + rb'"', got.raw))
    typed = got.raw.lstrip(b"{\n ").startswith(b'"kind"')
    spot = spots[0] if typed else spots[-1]
    fixed = got.raw[: spot.start()] + spot.group(1) + theirs.encode() + b'"' + got.raw[spot.end() :]
    assert fixed == want.raw, first_difference(want.raw, fixed)


def first_difference(want: bytes, got: bytes) -> str:
    n = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    n = min(len(want), len(got)) if n is None else n
    return f"bytes differ at {n}: kube {want[n - 60 : n + 60]!r}\n  proxy {got[n - 60 : n + 60]!r}"


# ---- gets and Status errors: byte for byte --------------------------------------------------
@pytest.mark.parametrize("form", [*PRETTY, *COMPACT])
def test_a_get_is_kubes_answer_byte_for_byte_compact_or_indented(
    form: str, wire_population: None, controlplane: ControlPlane, cached: Proxy
) -> None:
    query, headers = {**PRETTY, **COMPACT}[form]
    path = f"{CLUSTERS}/{CLUSTER.name}{query}"
    want, got = both(controlplane, cached, path, headers)
    assert (want.code, got.code) == (200, 200)
    assert want.raw.endswith(b"\n") == (form in COMPACT)  # kube: compact ends with a newline
    assert got.raw == want.raw, first_difference(want.raw, got.raw)


@pytest.mark.parametrize("form", [*PRETTY, *COMPACT])
def test_a_status_error_is_kubes_byte_for_byte_compact_or_indented(
    form: str, wire_population: None, controlplane: ControlPlane, cached: Proxy
) -> None:
    query, headers = {**PRETTY, **COMPACT}[form]
    for path in (f"{CLUSTERS}/nope{query}", f"{CLUSTERS}{query or '?'}&fieldSelector=%3Drc-03"):
        want, got = both(controlplane, cached, path, headers)
        assert got.code == want.code and want.code in (400, 404)
        assert got.raw == want.raw, first_difference(want.raw, got.raw)


# ---- lists ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", [*PRETTY, *COMPACT])
@pytest.mark.parametrize(
    "collection", [CLUSTERS, CLUSTERS + "?labelSelector=team%3Dnobody", EVENTS]
)
def test_a_list_is_kubes_but_for_its_resource_version(
    form: str, collection: str, wire_population: None, controlplane: ControlPlane, cached: Proxy
) -> None:
    query, headers = {**PRETTY, **COMPACT}[form]
    if query and "?" in collection:
        query = "&" + query[1:]
    want, got = both(controlplane, cached, collection + query, headers)
    same_but_list_rv(want, got)


def test_the_last_page_carries_continue_empty_for_custom_resources_only(
    wire_population: None, controlplane: ControlPlane, cached: Proxy
) -> None:
    for path in (CLUSTERS, CLUSTERS + "?resourceVersion=0", CLUSTERS + "?limit=500"):
        want, got = both(controlplane, cached, path, {})
        assert want.meta["continue"] == got.meta["continue"] == "", path
    for path in (EVENTS, EVENTS + "?resourceVersion=0"):
        want, got = both(controlplane, cached, path, {})
        assert "continue" not in want.meta and "continue" not in got.meta, path
    # A next page: each has its own token, both non-empty.
    want, got = both(controlplane, cached, EVENTS + "?limit=1", {})
    assert want.meta["continue"] and got.meta["continue"]


def test_pretty_answers_neither_come_from_nor_poison_the_compact_render_cache(
    wire_population: None, cached: Proxy
) -> None:
    plain, curl = differential.proxy(cached), differential.proxy(cached, PRETTY["curl-agent"][1])
    for _ in range(2):  # each twice: the second would be the cached body
        compact, pretty = plain(CLUSTERS), curl(CLUSTERS)
        assert compact.raw.endswith(b"}\n") and b"\n  " not in compact.raw
        assert pretty.raw.startswith(b'{\n  "apiVersion"') and not pretty.raw.endswith(b"\n")
        assert pretty.body == compact.body


@pytest.mark.parametrize("path", [CLUSTERS, f"{CLUSTERS}/{CLUSTER.name}"])
def test_an_indented_answer_has_its_own_etag_so_a_304_is_always_the_bytes_held(
    path: str, wire_population: None, cached: Proxy
) -> None:
    curl = {"User-Agent": "curl/8.5.0"}
    _, compact_headers, _ = cached.request("GET", path)
    code, pretty_headers, body = cached.request("GET", path, headers=curl)
    assert code == 200 and compact_headers["Etag"] != pretty_headers["Etag"]
    held = {**curl, "If-None-Match": compact_headers["Etag"]}
    code, _, again = cached.request("GET", path, headers=held)
    assert (code, again) == (200, body)  # the compact form's tag does not match this one
    held["If-None-Match"] = pretty_headers["Etag"]
    assert cached.request("GET", path, headers=held)[0] == 304


# ---- discovery ----------------------------------------------------------------------------
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        *((p, "application/json") for p in ("/api", "/apis", "/apis/ray.io", "/apis/ray.io/v1")),
        ("/api", AGGREGATED),  # aggregated discovery: only at the roots
        ("/apis", AGGREGATED),
    ],
)
def test_discovery_is_written_as_kube_writes_it_compact_or_indented(
    path: str, accept: str, controlplane: ControlPlane, cached: Proxy
) -> None:
    """The documents differ (watchcache's are cut to what it serves); the layout may not."""
    for fetch in (differential.kube, differential.proxy):
        side = controlplane if fetch is differential.kube else cached
        compact = fetch(side, {"Accept": accept})(path)  # type: ignore[arg-type]
        pretty = fetch(side, {"Accept": accept, "User-Agent": "curl/8.5.0"})(path)  # type: ignore[arg-type]
        assert compact.code == pretty.code == 200, (fetch, compact.raw[:200])
        assert compact.raw.endswith(b"}\n"), (fetch, compact.raw[-50:])
        assert pretty.raw == go_indent(compact.raw), (fetch, pretty.raw[:200])


@pytest.mark.parametrize("path", ["/openapi/v2", "/openapi/v3/apis/ray.io/v1"])
def test_openapi_is_written_as_kube_writes_it(
    path: str, controlplane: ControlPlane, cached: Proxy
) -> None:
    """No final newline, never indented; v3 escapes as Go's encoder does, v2 does not."""
    for headers in ({}, {"User-Agent": "curl/8.5.0"}):
        want, got = both(controlplane, cached, path, headers)
        assert got.code == want.code == 200
        assert got.raw[-1:] == want.raw[-1:] == b"}" and got.raw[:2] == want.raw[:2] == b'{"'
        for escaped in (b"\\u003c", b"\\u0026"):
            assert (escaped in got.raw) == (escaped in want.raw), (path, escaped)
    if path.endswith("ray.io/v1"):  # every path of it is served: the very document
        assert got.raw == want.raw, first_difference(want.raw, got.raw)


# ---- /api ---------------------------------------------------------------------------------
def _address(doc: dict[str, Any]) -> list[str]:
    return [a["serverAddress"] for a in doc["serverAddressByClientCIDRs"]]


@pytest.mark.parametrize("form", ["plain", "query-true"])
def test_api_is_kubes_with_watchcaches_own_address(
    form: str, controlplane: ControlPlane, cached: Proxy
) -> None:
    query, headers = {**PRETTY, **COMPACT}[form]
    want, got = both(controlplane, cached, "/api" + query, headers)
    assert got.code == want.code == 200
    assert got.body["versions"] == want.body["versions"] == ["v1"]
    kube_address = controlplane.server.split("://", 1)[1]
    assert kube_address not in got.raw.decode()
    own = cached.base.split("://", 1)[1]
    assert _address(got.body) == [own]
    # The same document, the same layout, once the addresses are swapped.
    assert got.raw == want.raw.replace(
        json.dumps(_address(want.body)[0]).encode(), f'"{own}"'.encode()
    )


def test_api_v1_lists_only_the_namespace_get_watchcache_answers(
    controlplane: ControlPlane, cached: Proxy
) -> None:
    got = differential.proxy(cached)("/api/v1")
    want = differential.kube(controlplane)("/api/v1")
    namespaces = next(r for r in want.body["resources"] if r["name"] == "namespaces")
    assert got.code == 200 and got.raw.endswith(b"\n")
    assert got.body == {**want.body, "resources": [{**namespaces, "verbs": ["get"]}]}


def test_watch_events_escape_as_kubes_encoder_does(
    wire_population: None, controlplane: ControlPlane, cached: Proxy
) -> None:
    """A watch event's object is written as a get's: '&', '<' and '>' escaped as Go's
    encoder escapes them (the Ray events' notes carry them)."""
    path = f"{EVENTS}?watch=true&resourceVersion=0&timeoutSeconds=1"
    want, got = both(controlplane, cached, path, {})

    def frames(answer: Answer) -> dict[bytes, bytes]:
        lines = [line for line in answer.raw.splitlines() if line.startswith(b'{"type":"ADDED"')]
        return {re.search(rb'"name":"(wire-event-\d)"', line).group(1): line for line in lines}  # type: ignore[union-attr]

    theirs, mine = frames(want), frames(got)
    assert set(theirs) == {b"wire-event-0", b"wire-event-1", b"wire-event-2"}
    assert mine == theirs
    assert all(b"\\u0026" in line and b"\\u003c" in line for line in mine.values())
