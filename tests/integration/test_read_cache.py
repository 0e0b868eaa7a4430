"""The cache beyond the differential corpus (issue 3): it follows changes made behind its back,
filters on any scalar field, answers polls with 304, compresses, survives a restart of
kube-apiserver, and reports ready only once it holds everything.

Changes are made directly on kube-apiserver, never through the proxy, so that only the watch
can bring them to the cache; every wait for the cache is a bounded poll.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import differential
import pytest
from differential import Case
from kubeio import kube_json
from support import population
from support.controlplane import ControlPlane
from watchclient import WatchStream

if TYPE_CHECKING:
    from conftest import Proxy

API = "/apis/ray.io/v1"
NAMESPACES = ("wc-cache-a", "wc-cache-b")
PLAN = population.plan(120, NAMESPACES, seed=31)
CRUD_NS, ETAG_NS, OTHER_NS, RESTART_NS, PAGE_NS = (
    "wc-cache-crud",
    "wc-cache-etag",
    "wc-cache-etag-other",
    "wc-cache-restart",
    "wc-cache-page",
)
QUIET_NS, BUSY_NS = "wc-cache-quiet", "wc-cache-busy"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def cache_population(controlplane: ControlPlane, cached: Proxy) -> Iterator[list[dict[str, Any]]]:
    """120 objects in two namespaces, held by the cached proxy before any test starts."""
    stored = population.populate(
        controlplane.request, [population.build(p, controlplane.samples_dir) for p in PLAN]
    )
    population.ensure_namespaces(
        controlplane.request, (CRUD_NS, ETAG_NS, OTHER_NS, RESTART_NS, PAGE_NS)
    )
    differential.wait_for_same_state(differential.proxy(cached), differential.kube(controlplane))
    yield stored
    population.delete_all(
        controlplane.request,
        (*NAMESPACES, CRUD_NS, ETAG_NS, OTHER_NS, RESTART_NS, PAGE_NS, QUIET_NS, BUSY_NS),
    )


def ns_path(plural: str, ns: str) -> str:
    return f"{API}/namespaces/{ns}/{plural}"


def header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def cluster(samples: Any, name: str, ns: str, labels: dict[str, str], **kw: Any) -> dict:
    return population.raycluster(name, ns, labels, samples, **kw)


# ---- (a) changes made directly on kube-apiserver ---------------------------------------------


def test_cache_follows_create_label_and_status_updates_and_delete_made_on_kube_apiserver(
    cached: Proxy, controlplane: ControlPlane, cache_population: list[dict[str, Any]]
) -> None:
    fetch = differential.proxy(cached)
    obj = cluster(controlplane.samples_dir, "crud-probe", CRUD_NS, {"team": "ml"}, state=None)
    path = population.object_path(obj)
    by_team = ns_path("rayclusters", CRUD_NS) + "?labelSelector="

    def listed(selector: str) -> list[str]:
        got = fetch(by_team + urllib.parse.quote(selector))
        assert got.code == 200, got.raw[:300]
        return [item["metadata"]["name"] for item in got.body["items"]]

    def seen(rv: str) -> Callable[[], bool]:
        def probe() -> bool:
            got = fetch(path)
            return got.code == 200 and got.body["metadata"]["resourceVersion"] == rv

        return probe

    created = population.create(controlplane.request, obj)
    differential.wait_until(seen(created["metadata"]["resourceVersion"]), what="the create")
    assert fetch(path).body == kube_json(controlplane, "GET", path)
    assert listed("team=ml") == ["crud-probe"]

    relabelled = kube_json(
        controlplane,
        "PATCH",
        path,
        {"metadata": {"labels": {"team": "data", "env": "prod"}}},
        content_type=MERGE,
    )
    differential.wait_until(seen(relabelled["metadata"]["resourceVersion"]), what="the labels")
    assert listed("team=ml") == []
    assert listed("team=data,env=prod") == ["crud-probe"]

    status = cluster(controlplane.samples_dir, "crud-probe", CRUD_NS, {}, state="ready")["status"]
    updated = kube_json(
        controlplane, "PATCH", path + "/status", {"status": status}, content_type=MERGE
    )
    differential.wait_until(seen(updated["metadata"]["resourceVersion"]), what="the status")
    got = fetch(path + "/status")
    assert got.code == 200 and got.body["status"]["state"] == "ready"
    assert got.body == kube_json(controlplane, "GET", path + "/status")

    kube_json(controlplane, "DELETE", path)
    differential.wait_until(lambda: fetch(path).code == 404, what="the delete")
    gone = fetch(path)
    assert gone.body["kind"] == "Status" and gone.body["reason"] == "NotFound"
    assert listed("team=data") == []


# ---- (b) extended field selectors: any scalar path --------------------------------------------

RC_WITH_STATUS = next(p for p in PLAN if p.kind == "RayCluster" and p.state is not None)

EXTENDED: dict[str, tuple[str, str | None, str, str | None]] = {
    # id: (resource, namespace or None for all, fieldSelector, labelSelector)
    "cluster-state-ready": ("rayclusters", None, "status.state=ready", None),
    "cluster-state-double-equals": ("rayclusters", None, "status.state==suspended", None),
    "cluster-state-not-ready-includes-no-status": (
        "rayclusters",
        None,
        "status.state!=ready",
        None,
    ),
    "cluster-suspended-boolean": ("rayclusters", None, "spec.suspend=true", None),
    "cluster-not-suspended": ("rayclusters", None, "spec.suspend!=true", None),
    "cluster-integer": ("rayclusters", None, "status.desiredWorkerReplicas=2", None),
    "cluster-nested-path": (
        "rayclusters",
        None,
        f"status.head.serviceName={RC_WITH_STATUS.name}-head-svc",
        None,
    ),
    "cluster-state-and-namespace": (
        "rayclusters",
        None,
        f"status.state=ready,metadata.namespace={NAMESPACES[1]}",
        None,
    ),
    "cluster-state-namespaced-list": ("rayclusters", NAMESPACES[0], "status.state!=failed", None),
    "cluster-state-and-labels": ("rayclusters", None, "status.state=ready", "team in (ml,data)"),
    "job-status": ("rayjobs", None, "status.jobStatus=SUCCEEDED", None),
    "job-suspended": ("rayjobs", None, "spec.suspend=true", None),
    "job-deployment-not-running": (
        "rayjobs",
        NAMESPACES[0],
        "status.jobDeploymentStatus!=Running",
        None,
    ),
    "service-status": ("rayservices", None, "status.serviceStatus=Running", None),
    "service-integer": ("rayservices", None, "status.numServeEndpoints=0", None),
}


def field_string(obj: Any, path: str) -> str:
    """What the selector compares: a scalar as Kubernetes prints it; absent (or not a scalar)
    compares as the empty string, as a Kubernetes field set does."""
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, str | int):
        return str(obj)
    return ""


def field_matches(obj: dict[str, Any], selector: str) -> bool:
    for term in selector.split(","):
        negated = "!=" in term
        path, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        if (field_string(obj, path) == value) == negated:
            return False
    return True


@pytest.mark.parametrize(("resource", "ns", "fields", "labels"), EXTENDED.values(), ids=EXTENDED)
def test_extended_field_selector_returns_what_filtering_a_direct_list_gives(
    resource: str,
    ns: str | None,
    fields: str,
    labels: str | None,
    cached: Proxy,
    controlplane: ControlPlane,
    cache_population: list[dict[str, Any]],
) -> None:
    base = ns_path(resource, ns) if ns else f"{API}/{resource}"
    query = {"labelSelector": labels} if labels else {}
    direct = differential.kube(controlplane)(f"{base}?{urllib.parse.urlencode(query)}")
    assert direct.code == 200
    expected = [differential.key(o) for o in direct.body["items"] if field_matches(o, fields)]
    assert expected, "the population should give this selector something to find"

    got = differential.proxy(cached)(
        f"{base}?{urllib.parse.urlencode({**query, 'fieldSelector': fields})}"
    )
    assert got.code == 200, got.raw[:500]
    assert got.body["kind"] == direct.body["kind"]
    assert got.item_keys() == expected


def test_extended_field_selector_pages_concatenate_to_the_whole_answer(
    cached: Proxy, controlplane: ControlPlane, cache_population: list[dict[str, Any]]
) -> None:
    fetch = differential.proxy(cached)
    whole = fetch(f"{API}/rayclusters?fieldSelector=status.state%3Dready")
    pages = differential.walk(
        fetch, f"{API}/rayclusters?fieldSelector=status.state%3Dready&limit=5"
    )
    assert whole.code == 200 and all(p.code == 200 for p in pages)
    assert len(pages) > 1
    assert [k for p in pages for k in p.item_keys()] == whole.item_keys()


# ---- (c) ETag and If-None-Match ---------------------------------------------------------------


def wait_for_list(cached: Proxy, controlplane: ControlPlane, path: str) -> None:
    want = differential.kube(controlplane)(path).item_keys()
    differential.wait_until(
        lambda: differential.proxy(cached)(path).item_keys() == want,
        what=f"the cache to list {path}",
    )


Response = tuple[int, dict[str, str], bytes]


def until_modified(send: Callable[[], Response], what: str) -> Response:
    """Repeats a conditional request until it is no longer 304, and returns that answer."""
    last: list[Response] = []

    def probe() -> bool:
        last[:] = [send()]
        return last[0][0] != 304

    differential.wait_until(probe, what=what)
    return last[0]


def test_list_etag_gives_304_until_something_in_that_list_changes(
    cached: Proxy, controlplane: ControlPlane, cache_population: list[dict[str, Any]]
) -> None:
    samples = controlplane.samples_dir
    for n in range(3):
        population.create(controlplane.request, cluster(samples, f"etag-{n}", ETAG_NS, {}))
    population.create(controlplane.request, cluster(samples, "etag-other-0", OTHER_NS, {}))
    path = ns_path("rayclusters", ETAG_NS)
    other = ns_path("rayclusters", OTHER_NS)
    wait_for_list(cached, controlplane, path)
    wait_for_list(cached, controlplane, other)

    code, headers, body = cached.request("GET", path)
    etag = header(headers, "ETag")
    assert code == 200 and etag, headers

    def poll() -> tuple[int, dict[str, str], bytes]:
        return cached.request("GET", path, headers={"If-None-Match": etag})

    code, _, body = poll()
    assert (code, body) == (304, b"")

    # A change elsewhere (another namespace) leaves this list, and its ETag, as they were.
    population.create(controlplane.request, cluster(samples, "etag-other-1", OTHER_NS, {}))
    wait_for_list(cached, controlplane, other)
    assert poll()[0] == 304

    # The same ETag on another request (a selector) is not a match.
    code, _, _ = cached.request(
        "GET", path + "?labelSelector=team%3Dml", headers={"If-None-Match": etag}
    )
    assert code == 200

    # A change in the list: 200, the new content, a new ETag.
    changed = kube_json(
        controlplane,
        "PATCH",
        f"{path}/etag-1",
        {"metadata": {"labels": {"touched": "yes"}}},
        content_type=MERGE,
    )
    code, headers, body = until_modified(poll, "a 200 after the change")
    assert code == 200
    new_etag = header(headers, "ETag")
    assert new_etag and new_etag != etag
    rvs = {
        i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in json.loads(body)["items"]
    }
    assert rvs["etag-1"] == changed["metadata"]["resourceVersion"]
    etag = new_etag
    assert poll()[0] == 304

    # A deletion changes the list too, though no remaining item has a newer resourceVersion.
    kube_json(controlplane, "DELETE", f"{path}/etag-2")
    code, headers, body = until_modified(poll, "a 200 after the delete")
    assert code == 200
    assert header(headers, "ETag") not in (None, etag)
    assert [i["metadata"]["name"] for i in json.loads(body)["items"]] == ["etag-0", "etag-1"]


def test_list_answers_forbid_shared_caches_as_kube_apiserver_does(
    cached: Proxy, cache_population: list[dict[str, Any]]
) -> None:
    for path in (
        ns_path("rayclusters", NAMESPACES[0]),
        population.object_path(cache_population[0]),
    ):
        _, headers, _ = cached.request("GET", path)
        assert header(headers, "Cache-Control") == "no-cache, private", (path, headers)


def test_a_page_reread_after_an_insert_is_200_with_the_new_remaining_count(
    cached: Proxy, controlplane: ControlPlane, cache_population: list[dict[str, Any]]
) -> None:
    samples = controlplane.samples_dir
    path = ns_path("rayclusters", PAGE_NS)
    for n in range(4):
        population.create(controlplane.request, cluster(samples, f"page-{n}", PAGE_NS, {}))
    wait_for_list(cached, controlplane, path)
    first = path + "?limit=2"
    code, headers, body = cached.request("GET", first)
    etag = header(headers, "ETag")
    assert code == 200 and etag
    assert json.loads(body)["metadata"]["remainingItemCount"] == 2
    assert cached.request("GET", first, headers={"If-None-Match": etag})[0] == 304

    population.create(controlplane.request, cluster(samples, "page-9", PAGE_NS, {}))
    code, headers, body = until_modified(
        lambda: cached.request("GET", first, headers={"If-None-Match": etag}),
        "a 200 for the first page after an insert",
    )
    meta = json.loads(body)["metadata"]
    assert code == 200 and meta["remainingItemCount"] == 3, meta
    # The token of the new first page walks the new list.
    cont = urllib.parse.quote(meta["continue"])
    code, _, body = cached.request("GET", f"{path}?limit=10&continue={cont}")
    assert code == 200
    assert [i["metadata"]["name"] for i in json.loads(body)["items"]] == [
        "page-2",
        "page-3",
        "page-9",
    ]


def test_a_quiet_namespace_polls_304_and_its_list_then_watch_never_gets_410(
    proxy_factory: Callable[..., Proxy], controlplane: ControlPlane
) -> None:
    """A short watch window (2 s) while another namespace changes for three times as long:
    the quiet namespace's list keeps its version (and ETag), and a watch from that version
    is served, although the window has long passed it."""
    samples = controlplane.samples_dir
    population.ensure_namespaces(controlplane.request, (QUIET_NS, BUSY_NS))
    population.create(controlplane.request, cluster(samples, "quiet-0", QUIET_NS, {}))
    population.create(controlplane.request, cluster(samples, "busy-0", BUSY_NS, {}))
    proxy = proxy_factory("--watch-history-seconds", "2")
    quiet, busy = ns_path("rayclusters", QUIET_NS), ns_path("rayclusters", BUSY_NS)
    wait_for_list(proxy, controlplane, quiet)
    code, headers, body = proxy.request("GET", quiet)
    etag, listed_rv = header(headers, "ETag"), json.loads(body)["metadata"]["resourceVersion"]
    assert code == 200 and etag

    polls: list[int] = []
    for round_ in range(12):  # the busy namespace changes every 0.5 s: 6 s, 3 windows
        kube_json(
            controlplane,
            "PATCH",
            f"{busy}/busy-0",
            {"metadata": {"annotations": {"round": str(round_)}}},
            content_type=MERGE,
        )
        code, headers, body = proxy.request("GET", quiet, headers={"If-None-Match": etag})
        polls.append(code)
        assert code == 304, (code, body[:300])
        watch = f"{quiet}?watch=true&resourceVersion={listed_rv}&timeoutSeconds=1"
        stream = WatchStream(proxy.base, watch)
        try:
            events = stream.read_to_end(timeout=30)
        finally:
            stream.close()
        assert events == [], events  # served, and nothing changed: no event, no 410
        time.sleep(0.5)
    # The window did move past the quiet namespace's version: where something changed
    # after it, a watch from it is too old.
    stream = WatchStream(proxy.base, f"{busy}?watch=true&resourceVersion={listed_rv}")
    try:
        event = stream.next(30)
    finally:
        stream.close()
    assert event is not None and event["type"] == "ERROR" and event["object"]["code"] == 410
    assert polls == [304] * 12


def test_get_etag_gives_304_until_the_object_changes(
    cached: Proxy, controlplane: ControlPlane, cache_population: list[dict[str, Any]]
) -> None:
    obj = cache_population[0]
    path = population.object_path(obj)
    code, headers, _ = cached.request("GET", path)
    etag = header(headers, "ETag")
    assert code == 200 and etag, headers
    code, _, body = cached.request("GET", path, headers={"If-None-Match": etag})
    assert (code, body) == (304, b"")

    kube_json(
        controlplane,
        "PATCH",
        path,
        {"metadata": {"annotations": {"watchcache.test/etag": "changed"}}},
        content_type=MERGE,
    )
    code, headers, body = until_modified(
        lambda: cached.request("GET", path, headers={"If-None-Match": etag}),
        "a 200 after the change",
    )
    assert code == 200
    assert header(headers, "ETag") not in (None, etag)
    assert json.loads(body)["metadata"]["annotations"]["watchcache.test/etag"] == "changed"


# ---- (d) gzip ---------------------------------------------------------------------------------


def test_large_list_is_gzipped_for_a_client_that_accepts_it(
    cached: Proxy, cache_population: list[dict[str, Any]]
) -> None:
    path = f"{API}/rayclusters"
    code, headers, plain = cached.request("GET", path)
    assert code == 200 and header(headers, "Content-Encoding") is None
    assert len(plain) > 128 * 1024, "the population should make this list large"

    code, headers, packed = cached.request("GET", path, headers={"Accept-Encoding": "gzip"})
    assert code == 200
    assert header(headers, "Content-Encoding") == "gzip"
    assert len(packed) < len(plain)
    unpacked, whole = json.loads(gzip.decompress(packed)), json.loads(plain)
    assert unpacked["kind"] == whole["kind"] == "RayClusterList"
    assert unpacked["items"] == whole["items"]


# ---- (f) readiness ----------------------------------------------------------------------------


def test_readyz_is_200_only_once_the_cache_holds_every_object(
    proxy_factory: Callable[..., Proxy],
    controlplane: ControlPlane,
    cache_population: list[dict[str, Any]],
) -> None:
    fresh = proxy_factory()  # returns once /readyz is 200
    assert fresh.request("GET", "/readyz")[0] == 200
    # No polling: ready means synced, so the very first reads are complete.
    kube = differential.state(differential.kube(controlplane))
    assert kube is not None
    assert not (
        why := differential.state_diff(kube, differential.state(differential.proxy(fresh)))
    ), why


# ---- (e) the upstream watch cut: kube-apiserver restarted -------------------------------------


def test_cache_recovers_after_kube_apiserver_restarts_and_still_answers_as_kube_does(
    proxy_factory: Callable[..., Proxy],
    cached: Proxy,
    controlplane: ControlPlane,
    cache_population: list[dict[str, Any]],
) -> None:
    samples = controlplane.samples_dir
    before = [
        population.create(controlplane.request, cluster(samples, f"restart-{n}", RESTART_NS, {}))
        for n in range(4)
    ]
    dedicated = proxy_factory()
    target, reference = differential.proxy(dedicated), differential.kube(controlplane)
    differential.wait_for_same_state(target, reference)

    controlplane.restart_apiserver()

    # Changes the cache can only learn of through a new watch (or a re-list).
    population.create(controlplane.request, cluster(samples, "restart-new", RESTART_NS, {"x": "1"}))
    kube_json(
        controlplane,
        "PATCH",
        population.object_path(before[0]),
        {"metadata": {"labels": {"team": "after-restart"}}},
        content_type=MERGE,
    )
    status = cluster(samples, "restart-1", RESTART_NS, {}, state="failed")["status"]
    kube_json(
        controlplane,
        "PATCH",
        population.object_path(before[1]) + "/status",
        {"status": status},
        content_type=MERGE,
    )
    kube_json(controlplane, "DELETE", population.object_path(before[2]))
    job = population.rayjob("restart-job", RESTART_NS, {"team": "ml"}, samples)
    population.create(controlplane.request, job)

    differential.wait_for_same_state(target, reference)
    differential.wait_for_same_state(differential.proxy(cached), reference)

    now = differential.state(reference)
    assert now is not None
    newest = max(int(k[2]) for keys in now.values() for k in keys)
    for case in (
        Case(f"{API}/rayclusters"),
        Case(ns_path("rayclusters", RESTART_NS)),
        Case(f"{API}/rayjobs?labelSelector=team%3Dml"),
        Case(f"{API}/rayservices?limit=4", walk=True),
        Case(f"{API}/rayclusters?resourceVersion={{rv}}&resourceVersionMatch=Exact"),
        Case(f"{API}/rayclusters?resourceVersion={{newest}}"),
        Case(population.object_path(before[1]) + "/status"),
        Case(population.object_path(before[2])),
    ):
        differential.run_case(case, target, reference, newest=newest)
