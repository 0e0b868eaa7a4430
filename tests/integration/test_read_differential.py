"""The differential test: the cache answers reads exactly as kube-apiserver does (issue 3).

A population of ~300 RayClusters, RayJobs and RayServices (four namespaces, varied labels,
most with a status) is created directly on kube-apiserver; once the cached proxy lists the
same objects, each request of the corpus goes to both and the answers are compared by
``differential.run_case``. Extended field selectors (which kube rejects) are tested on their
own in test_read_cache.py.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import differential
import pytest
from differential import Case
from support import population
from support.controlplane import ControlPlane

if TYPE_CHECKING:
    from conftest import Proxy

# "wc-diff-a-1" sorts before "wc-diff-a" in kube's all-namespaces order, which is that of the
# storage keys "<namespace>/<name>" ('-' < '/'), not of (namespace, name) pairs.
NAMESPACES = ("wc-diff-a", "wc-diff-a-1", "wc-diff-b", "wc-diff-c")
PLAN = population.plan(300, NAMESPACES, seed=20250601)
API = "/apis/ray.io/v1"


@dataclass(frozen=True)
class Population:
    namespaces: tuple[str, ...]
    newest: int  # the resourceVersion of the last write: both sides have reached it


@pytest.fixture(scope="module")
def diff_population(controlplane: ControlPlane, cached: Proxy) -> Iterator[Population]:
    stored = population.populate(
        controlplane.request, [population.build(p, controlplane.samples_dir) for p in PLAN]
    )
    newest = max(int(o["metadata"]["resourceVersion"]) for o in stored)
    differential.wait_for_same_state(differential.proxy(cached), differential.kube(controlplane))
    yield Population(NAMESPACES, newest)
    population.delete_all(controlplane.request, NAMESPACES)


# ---- the corpus ----------------------------------------------------------------------------


def q(**params: str | int) -> str:
    return "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="{}")


def ns_path(plural: str, ns: str = NAMESPACES[0]) -> str:
    return f"{API}/namespaces/{ns}/{plural}"


def all_path(plural: str) -> str:
    return f"{API}/{plural}"


def pick(kind: str, *, ns: str | None = None, status: bool = True) -> population.ObjectPlan:
    return next(
        p
        for p in PLAN
        if p.kind == kind and (ns is None or p.namespace == ns) and (p.state is not None) == status
    )


def object_path(p: population.ObjectPlan) -> str:
    return f"{ns_path(population.PLURALS[p.kind], p.namespace)}/{p.name}"


RC_A = pick("RayCluster", ns=NAMESPACES[0])
RC_B = pick("RayCluster", ns=NAMESPACES[1])

# A continue token in kube-apiserver's own format, pointing at a key it did not hand out.
FORGED = base64.b64encode(
    json.dumps({"v": "meta.k8s.io/v1", "rv": 5, "start": "wc-diff-b/\u0000"}).encode()
).decode()

LABEL_SELECTORS = (
    "team=ml",
    "team==ml",
    "team!=ml",
    "team in (ml,data)",
    "team notin (ml,data)",
    "team",
    "!team",
    "env=prod,tier=gold",
    "team in (ml),env!=dev,!tier",
    " team = ml , env != prod ",
    "team in ( ml , research )",
    "team in (ml,)",
    "team=nobody",
    "team=",
    "team in ()",
    "ray.io/priority=5",
    "ray.io/priority",
    "!ray.io/priority",
    "ray.io/priority in (0,10)",
    "ray.io/priority notin (0,10),team",
    "ray.io/priority>2",
    "ray.io/priority<2",
    "app.kubernetes.io/managed-by=helm",
    "app.kubernetes.io/managed-by notin (helm),env in (prod,staging)",
)
BAD_LABEL_SELECTORS = (
    "team in (ml",
    "team in ml",
    "team=a b",
    "=ml",
    "Team Space=x",
    "team>ml",
    "!team=x",
    "!",
    "team=ml,",
    ",",
    "team=-ml",
    "a" * 64 + "=x",
    "x=" + "a" * 64,
    "-bad.io/x=1",
    # Empty keys, in every operator's position.
    "==ml",
    "!=ml",
    "in (ml)",
    "notin (ml)",
    " =ml",
    "team=ml,=x",
)
BAD_FIELD_SELECTORS = (
    "metadata.name",
    "foo",
    "metadata.name=x=y",
    "metadata.name=\\x",
    "metadata.name=x,status.state",
    # An empty path names no field: 400 "field label not supported: ", extensions or not.
    "=rc-03",
    "==rc-03",
    "!=rc-03",
    " =rc-03",
    "metadata.name=x,=rc-03",
)
# Field labels kube-apiserver refuses on custom resources (400 "field label not supported")
# and the cache serves, since it extends field selectors to any scalar path (README, "What
# it serves"): the one place where the two are meant to differ. Each with a kube request
# giving the same items, where one exists.
EXTENDED_FIELD_LABELS: dict[str, str | None] = {
    "status.state=ready": None,
    "spec.suspend=true": None,
    "metadata.uid=x": "labelSelector=team%3Dnobody",
    "metadata.labels.team=ml": "labelSelector=team%3Dml",
    "metadata.name=x,status.state=y": "labelSelector=team%3Dnobody",
}


def corpus() -> Iterator[object]:
    def case(id: str, path: str, walk: bool = False) -> object:
        return pytest.param(Case(path, walk=walk), id=id)

    # Plain lists and gets, every resource.
    for plural in differential.RESOURCES:
        yield case(f"{plural}-all-namespaces", all_path(plural))
        for ns in NAMESPACES[:2]:
            yield case(f"{plural}-in-{ns}", ns_path(plural, ns))
        yield case(f"{plural}-walk-limit-7", all_path(plural) + q(limit=7), walk=True)
        yield case(f"{plural}-walk-limit-4-in-ns", ns_path(plural) + q(limit=4), walk=True)
        yield case(f"{plural}-team-ml", all_path(plural) + q(labelSelector="team=ml"))
    yield case("list-in-missing-namespace", ns_path("rayclusters", "wc-diff-none"))
    for kind in population.PLURALS:
        with_status, without = pick(kind), pick(kind, status=False)
        yield case(f"get-{kind}", object_path(with_status))
        yield case(f"get-{kind}-status", object_path(with_status) + "/status")
        yield case(f"get-{kind}-no-status", object_path(without))
        yield case(f"get-{kind}-no-status-status", object_path(without) + "/status")
    yield case("get-rv-0", object_path(RC_A) + q(resourceVersion=0))
    yield case("get-rv-newest", object_path(RC_A) + q(resourceVersion="{newest}"))
    yield case("get-missing", ns_path("rayclusters") + "/nope")
    yield case("get-missing-status", ns_path("rayclusters") + "/nope/status")
    yield case("get-missing-namespace", ns_path("rayclusters", "wc-diff-none") + "/x")
    yield case("get-uppercase-name", ns_path("rayclusters") + "/UPPER")
    yield case("get-other-namespace", ns_path("rayclusters", RC_B.namespace) + f"/{RC_A.name}")

    # Label selectors: every form, all namespaces and namespaced.
    for n, sel in enumerate(LABEL_SELECTORS):
        yield case(f"label-{n:02d}[{sel.strip()}]", all_path("rayclusters") + q(labelSelector=sel))
        yield case(f"label-{n:02d}-ns[{sel.strip()}]", ns_path("rayjobs") + q(labelSelector=sel))
    yield case(
        "label-walk-limit-5",
        all_path("rayclusters") + q(labelSelector="team in (ml,data)", limit=5),
        walk=True,
    )

    # Field selectors on name and namespace, with and without label selectors.
    rc, ns_a, ns_b = "rayclusters", RC_A.namespace, NAMESPACES[1]
    for op in ("=", "==", "!="):
        yield case(
            f"field-name{op}", all_path(rc) + q(fieldSelector=f"metadata.name{op}{RC_A.name}")
        )
        yield case(
            f"field-namespace{op}", all_path(rc) + q(fieldSelector=f"metadata.namespace{op}{ns_b}")
        )
        yield case(
            f"field-name{op}-ns", ns_path(rc) + q(fieldSelector=f"metadata.name{op}{RC_A.name}")
        )
    fields = {
        "name-and-namespace": f"metadata.namespace={RC_B.namespace},metadata.name={RC_B.name}",
        "name-not-its-namespace": f"metadata.name={RC_A.name},metadata.namespace!={ns_a}",
        "two-namespaces-excluded": f"metadata.namespace!={ns_a},metadata.namespace!={ns_b}",
        "escaped-comma": "metadata.name=a\\,b",
        "empty": "",
        "empty-term": "=",
    }
    for name, sel in fields.items():
        yield case(f"field-{name}", all_path(rc) + q(fieldSelector=sel))
    yield case(
        "field-other-namespace-on-ns-list",
        ns_path(rc) + q(fieldSelector=f"metadata.namespace={ns_b}"),
    )
    yield case(
        "field-and-label",
        all_path("rayjobs")
        + q(fieldSelector=f"metadata.namespace!={ns_a}", labelSelector="team in (ml,data)"),
    )
    yield case(
        "field-walk-limit-6",
        all_path("rayservices") + q(fieldSelector=f"metadata.namespace!={ns_b}", limit=6),
        walk=True,
    )

    # Pagination edges.
    yield case("limit-0", all_path(rc) + q(limit=0))
    yield case("limit-negative", all_path(rc) + q(limit=-1))
    yield case("limit-above-count", all_path(rc) + q(limit=10000))
    yield case("limit-1-walk-ns", ns_path("rayservices") + q(limit=1), walk=True)

    # Every resourceVersion form.
    for where, path in (("all", all_path(rc)), ("ns", ns_path(rc))):
        yield case(f"rv-0-{where}", path + q(resourceVersion=0))
        yield case(f"rv-0-limit-{where}", path + q(resourceVersion=0, limit=5))
        yield case(f"rv-previous-{where}", path + q(resourceVersion="{rv}"))
        yield case(
            f"rv-previous-not-older-than-{where}",
            path + q(resourceVersion="{rv}", resourceVersionMatch="NotOlderThan"),
        )
        yield case(
            f"rv-previous-exact-{where}",
            path + q(resourceVersion="{rv}", resourceVersionMatch="Exact"),
        )
        yield case(
            f"rv-previous-exact-walk-limit-6-{where}",
            path + q(resourceVersion="{rv}", resourceVersionMatch="Exact", limit=6),
            walk=True,
        )
        yield case(
            f"rv-previous-limit-walk-{where}", path + q(resourceVersion="{rv}", limit=6), walk=True
        )
    yield case(
        "rv-newest-not-older-than",
        all_path("rayjobs") + q(resourceVersion="{newest}", resourceVersionMatch="NotOlderThan"),
    )
    yield case(
        "rv-1-not-older-than",
        all_path("rayjobs") + q(resourceVersion=1, resourceVersionMatch="NotOlderThan"),
    )
    yield case(
        "rv-newest-with-selector",
        all_path(rc) + q(resourceVersion="{newest}", labelSelector="team=ml"),
    )
    # kube-apiserver waits ~3 s for a version it has not reached, then 504 Timeout.
    yield case("rv-too-large", ns_path(rc) + q(resourceVersion=999999999))

    # Malformed input.
    for n, sel in enumerate(BAD_LABEL_SELECTORS):
        yield case(f"bad-label-{n:02d}[{sel[:20]}]", ns_path(rc) + q(labelSelector=sel))
    for n, sel in enumerate(BAD_FIELD_SELECTORS):
        yield case(f"bad-field-{n:02d}[{sel}]", all_path(rc) + q(fieldSelector=sel))
    yield case("bad-limit", all_path(rc) + q(limit="abc"))
    yield case("bad-rv-text", all_path(rc) + q(resourceVersion="abc"))
    yield case("bad-rv-negative", all_path(rc) + q(resourceVersion=-5))
    yield case("rv-match-without-rv", all_path(rc) + q(resourceVersionMatch="NotOlderThan"))
    yield case("rv-match-exact-without-rv", all_path(rc) + q(resourceVersionMatch="Exact"))
    yield case(
        "rv-match-exact-rv-0", all_path(rc) + q(resourceVersion=0, resourceVersionMatch="Exact")
    )
    yield case(
        "rv-match-bogus", all_path(rc) + q(resourceVersion="{rv}", resourceVersionMatch="Bogus")
    )
    yield case("continue-garbage", all_path(rc) + q(limit=5, **{"continue": "garbage"}))
    yield case("continue-forged", all_path(rc) + q(limit=5, **{"continue": FORGED}))
    yield case("continue-tampered", all_path(rc) + "?limit=5&continue={continue}AAAA")
    yield case(
        "continue-with-rv", all_path(rc) + "?limit=5&continue={continue}&resourceVersion={rv}"
    )
    yield case(
        "continue-with-rv-0", all_path(rc) + "?limit=5&continue={continue}&resourceVersion=0"
    )
    yield case("continue-without-limit", all_path(rc) + "?continue={continue}")


@pytest.mark.parametrize("case", list(corpus()))
def test_cached_read_answers_as_kube_apiserver_does(
    case: Case, diff_population: Population, cached: Proxy, controlplane: ControlPlane
) -> None:
    differential.run_case(
        case,
        differential.proxy(cached),
        differential.kube(controlplane),
        newest=diff_population.newest,
    )


@pytest.mark.parametrize(
    ("selector", "same_as"), EXTENDED_FIELD_LABELS.items(), ids=list(EXTENDED_FIELD_LABELS)
)
def test_field_labels_kube_rejects_are_answered_by_the_cache_as_its_extension(
    selector: str,
    same_as: str | None,
    diff_population: Population,
    cached: Proxy,
    controlplane: ControlPlane,
) -> None:
    kube, target = differential.kube(controlplane), differential.proxy(cached)
    path = all_path("rayclusters") + q(fieldSelector=selector)
    refused = kube(path)
    assert (refused.code, refused.body["reason"]) == (400, "BadRequest")
    assert refused.body["message"].startswith("field label not supported: ")
    got = target(path)
    assert got.code == 200 and got.body["kind"] == "RayClusterList", got.raw[:300]
    if same_as is not None:
        assert got.item_keys() == kube(f"{all_path('rayclusters')}?{same_as}").item_keys()
