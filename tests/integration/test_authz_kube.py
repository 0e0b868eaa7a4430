"""Authorization against the real kube-apiserver (RBAC on): for users with different rights,
the attributes watchcache computes for a request plus the SubjectAccessReview decision must
agree with what kube-apiserver answers when the same user sends that request directly:
403 or not, and a 403's body byte for byte. Then impersonation (a client's Impersonate-*
headers, and the headers watchcache itself sends for a write), and grants revoked or given
taking effect as the decision cache's TTLs say."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from conftest import LIMITED
from differential import wait_until
from support.controlplane import ControlPlane

from watchcache.auth.authz import SubjectAccessReviewAuthorizer, check
from watchcache.auth.impersonation import Impersonation, impersonation_headers
from watchcache.auth.user import ANONYMOUS_USER, UserInfo
from watchcache.kube.attributes import Attributes, request_attributes
from watchcache.kube.status import StatusError
from watchcache.upstream.client import Upstream, load_credentials

A, B = "wc-authz-a", "wc-authz-b"
RAY = "/apis/ray.io/v1"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Who:
    label: str
    token: str
    user: UserInfo  # as the API server authenticates the token (its SelfSubjectReview)


@dataclass(frozen=True)
class Direct:
    code: int
    body: bytes


def direct(cp: ControlPlane, method: str, path: str, token: str, headers: Headers = ()) -> Direct:
    """One request straight to kube-apiserver; a watch that starts is closed at its head."""
    url = urllib.parse.urlsplit(cp.server)
    conn = http.client.HTTPSConnection(
        url.hostname or "", url.port, context=cp.ssl_context(), timeout=30
    )
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if token:  # none: the anonymous user
            conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Accept", "application/json")
        body = b""
        if method in ("POST", "PUT", "PATCH"):
            body = b"{}" if method != "POST" else json.dumps(_cluster("dry")).encode()
            ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
            conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        watching = resp.status == 200 and "watch" in path
        return Direct(resp.status, b"" if watching else resp.read())
    finally:
        conn.close()


def _cluster(name: str) -> dict[str, object]:
    head = {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.9.0"}]}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name},
        "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": head}}},
    }


def attributes_of(method: str, target: str) -> Attributes:
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    return request_attributes(method, urllib.parse.unquote(url.path), query)


def _post(cp: ControlPlane, path: str, obj: dict[str, object]) -> Any:
    code, raw = cp.request("POST", path, obj)
    assert code in (200, 201, 409), (path, code, raw[:300])
    return json.loads(raw) if code != 409 else {}


def _role(cp: ControlPlane, ns: str | None, name: str, rules: list[dict[str, object]]) -> None:
    kind = "roles" if ns else "clusterroles"
    base = f"{RBAC}/namespaces/{ns}/{kind}" if ns else f"{RBAC}/{kind}"
    _post(cp, base, {"metadata": {"name": name}, "rules": rules})


def _bind(
    cp: ControlPlane,
    ns: str | None,
    name: str,
    role: str,
    subject: dict[str, str],
    *,
    cluster_role: bool = False,
) -> None:
    kind = "rolebindings" if ns else "clusterrolebindings"
    base = f"{RBAC}/namespaces/{ns}/{kind}" if ns else f"{RBAC}/{kind}"
    ref_kind = "ClusterRole" if cluster_role or not ns else "Role"
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": role}
    _post(cp, base, {"metadata": {"name": name}, "roleRef": ref, "subjects": [subject]})


def _sa(name: str, ns: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": ns}


def whoami(cp: ControlPlane, token: str, headers: Headers = ()) -> UserInfo:
    got = direct_json(cp, "/apis/authentication.k8s.io/v1/selfsubjectreviews", token, headers)
    info = got["status"]["userInfo"]
    return UserInfo.of(
        info["username"], info.get("uid", ""), info.get("groups", []), info.get("extra")
    )


def direct_json(cp: ControlPlane, path: str, token: str, headers: Headers = ()) -> Any:
    url = urllib.parse.urlsplit(cp.server)
    conn = http.client.HTTPSConnection(
        url.hostname or "", url.port, context=cp.ssl_context(), timeout=30
    )
    body = b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
    conn.putrequest("POST", path)
    for name, value in [
        ("Authorization", f"Bearer {token}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *headers,
    ]:
        conn.putheader(name, value)
    conn.endheaders(body)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == 201, raw
    return json.loads(raw)


def sa_token(cp: ControlPlane, ns: str, name: str) -> str:
    _post(cp, f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}})
    got = _post(
        cp,
        f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    return str(got["status"]["token"])


def rule(
    group: str, resources: list[str], verbs: list[str], names: list[str] | None = None
) -> dict[str, object]:
    out: dict[str, object] = {"apiGroups": [group], "resources": resources, "verbs": verbs}
    if names:
        out["resourceNames"] = names
    return out


VIEW = ["get", "list", "watch"]
ALL = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]


@pytest.fixture(scope="module")
def people(controlplane: ControlPlane) -> Iterator[dict[str, Who]]:
    """A cluster admin, a viewer of A (who may list one named object in B), an editor of B,
    a cluster-wide reader, a user with no rights (with a RoleBinding to a missing Role in B,
    whose error RBAC reports), all but two of them service accounts."""
    cp = controlplane
    for ns in (A, B):
        _post(cp, "/api/v1/namespaces", {"metadata": {"name": ns}})
    tokens = {
        "admin": cp.admin.token,
        "nobody": LIMITED.token,
        "viewer-a": sa_token(cp, A, "viewer-a"),
        "editor-b": sa_token(cp, B, "editor-b"),
        "reader": sa_token(cp, A, "reader"),
    }
    ray = ["rayclusters", "rayclusters/status"]
    viewer = [rule("ray.io", ray, VIEW), rule("", ["configmaps", "events"], VIEW)]
    _role(cp, A, "viewer", [*viewer, rule("events.k8s.io", ["events"], VIEW)])
    _bind(cp, A, "viewer", "viewer", _sa("viewer-a", A))
    _role(cp, B, "one-cluster", [rule("ray.io", ["rayclusters"], VIEW, ["named"])])
    _bind(cp, B, "one-cluster", "one-cluster", _sa("viewer-a", A))
    editor = [rule("ray.io", ray, ALL), rule("", ["configmaps", "events"], ALL)]
    _role(cp, B, "editor", [*editor, rule("", ["services/proxy"], ["get", "create"])])
    _bind(cp, B, "editor", "editor", _sa("editor-b", B))
    metrics: dict[str, object] = {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    _role(cp, None, "wc-authz-reader", [rule("ray.io", ["rayclusters"], VIEW), metrics])
    _bind(cp, None, "wc-authz-reader", "wc-authz-reader", _sa("reader", A))
    _bind(cp, B, "dangling", "wc-authz-missing", {"kind": "User", "name": LIMITED.name})
    people = {label: Who(label, token, whoami(cp, token)) for label, token in tokens.items()}
    people["anonymous"] = Who("anonymous", "", ANONYMOUS_USER)
    # RBAC sees new bindings through an informer: wait until the last one is in effect.
    wait_until(
        lambda: direct(cp, "GET", f"{RAY}/rayclusters", tokens["reader"]).code == 200,
        what="the cluster reader's binding",
    )
    wait_until(
        lambda: (
            b"wc-authz-missing"
            in direct(cp, "GET", f"/api/v1/namespaces/{B}/configmaps", LIMITED.token).body
        ),
        what="the dangling binding",
    )
    yield people


def corpus() -> list[tuple[str, str]]:
    """Requests of every kind the issue names: get/list/watch in A, B and all namespaces,
    selectors and pages, writes (dry run), status, the service proxy, configmaps, events,
    discovery and other non-resource paths."""
    out: list[tuple[str, str]] = []
    for ns in (A, B):
        col = f"{RAY}/namespaces/{ns}/rayclusters"
        out += [
            ("GET", col),
            ("GET", f"{col}?labelSelector=app%3Dray&limit=2"),
            ("GET", f"{col}?watch=true&timeoutSeconds=1"),
            ("GET", f"{RAY}/watch/namespaces/{ns}/rayclusters?timeoutSeconds=1"),
            ("GET", f"{col}?fieldSelector=metadata.name%3Dnamed"),
            ("GET", f"{col}?fieldSelector=metadata.name%3Dnamed&watch=1&timeoutSeconds=1"),
            ("GET", f"{col}?fieldSelector=metadata.name%3Dnamed&limit=x"),
            ("GET", f"{col}?fieldSelector=metadata.name%3Dnamed&labelSelector=a%3D("),
            ("GET", f"{col}?fieldSelector=metadata.name%3Dnamed&timeoutSeconds="),
            ("HEAD", f"{col}/named"),
            ("GET", f"{col}/named"),
            ("GET", f"{col}/other"),
            ("POST", f"{col}?dryRun=All"),
            ("PATCH", f"{col}/named?dryRun=All"),
            ("DELETE", f"{col}/named?dryRun=All"),
            ("DELETE", f"{col}?dryRun=All"),
            ("GET", f"{col}/named/status"),
            ("PATCH", f"{col}/named/status?dryRun=All"),
            ("GET", f"/api/v1/namespaces/{ns}/configmaps"),
            ("GET", f"/api/v1/namespaces/{ns}/configmaps/templates"),
            ("GET", f"/api/v1/namespaces/{ns}/events"),
            ("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events?watch=true&timeoutSeconds=1"),
            ("GET", f"/api/v1/namespaces/{ns}/services/head-svc:8265/proxy/api/jobs/"),
            ("POST", f"/api/v1/namespaces/{ns}/services/https:head-svc:8443/proxy/x"),
            ("GET", f"/api/v1/namespaces/{ns}"),
        ]
    out += [
        ("GET", f"{RAY}/rayclusters"),
        ("GET", f"{RAY}/rayclusters?watch=true&timeoutSeconds=1"),
        ("GET", f"{RAY}/rayclusters?fieldSelector=metadata.name%3Dnamed"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/namespaces"),
        ("GET", "/version"),
        ("GET", "/apis"),
        ("GET", "/api"),
        ("GET", "/api/v1"),
        ("GET", f"{RAY}"),
        ("GET", "/apis/ray.io"),
        ("GET", "/openapi/v2"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/healthz"),
        ("GET", "/livez"),
        ("POST", "/metrics"),
        ("HEAD", "/version"),
        ("GET", f"{RAY}/watch"),  # kube cannot tell the resource: 500, from both
    ]
    return out


def _authorizer(
    cp: ControlPlane, allow_ttl: float = 300, deny_ttl: float = 30
) -> SubjectAccessReviewAuthorizer:
    """Reviews made with watchcache's own (here: the admin's) credentials."""
    upstream = Upstream(load_credentials(str(cp.kubeconfig)))
    return SubjectAccessReviewAuthorizer(upstream, allow_ttl=allow_ttl, deny_ttl=deny_ttl)


@pytest.mark.parametrize(
    "label", ["admin", "nobody", "viewer-a", "editor-b", "reader", "anonymous"]
)
def test_decisions_and_403s_are_kube_apiservers(
    controlplane: ControlPlane, people: dict[str, Who], label: str
) -> None:
    who = people[label]
    requests = corpus()

    async def judge() -> list[str]:
        authz = _authorizer(controlplane)
        problems = []
        for method, target in requests:
            kube = direct(controlplane, method, target, who.token)
            try:
                await check(authz, who.user, attributes_of(method, target))
                ours = None
            except StatusError as exc:
                ours = exc
            if ours is not None and ours.code != 403:
                if ours.code != kube.code:  # a URL kube cannot resolve: its 500
                    problems.append(f"{method} {target}: kube {kube.code}, ours {ours.code}")
            elif (kube.code == 403) != (ours is not None):
                mine = ours.message if ours else "allowed"
                problems.append(f"{method} {target}: kube {kube.code} {kube.body[:200]!r}, {mine}")
            elif ours is not None and method != "HEAD" and ours.body() != kube.body:
                problems.append(f"{method} {target}:\n kube {kube.body!r}\n ours {ours.body()!r}")
        # A second pass is answered from the decision cache alone.
        calls = authz.upstream_calls
        for method, target in requests:
            with contextlib.suppress(StatusError):
                await authz.authorize(who.user, attributes_of(method, target))
        assert authz.upstream_calls == calls
        cast(Upstream, authz.upstream).close()
        return problems

    assert asyncio.run(judge()) == []


def test_the_corpus_has_both_answers(controlplane: ControlPlane, people: dict[str, Who]) -> None:
    """The viewer of A is allowed some of the corpus and refused some, with reasons."""
    codes = {direct(controlplane, m, t, people["viewer-a"].token).code for m, t in corpus()}
    assert 403 in codes and 200 in codes


def test_the_write_headers_make_kube_see_exactly_the_caller(
    controlplane: ControlPlane, people: dict[str, Who]
) -> None:
    for who in people.values():
        if not who.token:
            continue  # an anonymous request cannot review itself
        seen = whoami(controlplane, controlplane.admin.token, impersonation_headers(who.user))
        assert seen == who.user
    odd = UserInfo.of("x", "u", ["g", "system:authenticated"], {"example.org/Mixed Case%": ["1"]})
    assert whoami(controlplane, controlplane.admin.token, impersonation_headers(odd)) == odd


IMPERSONATIONS: list[list[tuple[str, str]]] = [
    [("Impersonate-User", "admin")],
    [("Impersonate-User", "system:serviceaccount:wc-authz-a:viewer-a")],
    [("Impersonate-User", "system:node:n1")],
    [("Impersonate-User", "bob"), ("Impersonate-Group", "system:masters")],
    [("Impersonate-User", "bob"), ("Impersonate-Uid", "1"), ("Impersonate-Extra-k.io%2Fa", "v")],
    [("Impersonate-Group", "g")],
    [("Impersonate-Uid", "u"), ("Impersonate-Extra-a", "b"), ("Impersonate-Extra-a", "c")],
]


@pytest.mark.parametrize("headers", IMPERSONATIONS)
def test_impersonation_refused_as_kube_refuses_it(
    controlplane: ControlPlane, people: dict[str, Who], headers: list[tuple[str, str]]
) -> None:
    targets = [
        ("GET", f"/api/v1/namespaces/{A}/configmaps"),
        ("GET", "/version"),
        ("POST", f"{RAY}/namespaces/{B}/rayclusters?dryRun=All"),
    ]
    who = people["viewer-a"]

    async def judge() -> list[str]:
        impersonation = Impersonation(_authorizer(controlplane))
        problems = []
        for method, target in targets:
            kube = direct(controlplane, method, target, who.token, headers)
            with pytest.raises(StatusError) as caught:
                await impersonation.resolve(who.user, headers, attributes_of(method, target))
            if caught.value.body() != kube.body:
                problems.append(f"{target}:\n kube {kube.body!r}\n ours {caught.value.body()!r}")
        return problems

    assert asyncio.run(judge()) == []


def test_impersonation_allowed_gives_the_user_kube_gives(
    controlplane: ControlPlane, people: dict[str, Who]
) -> None:
    cp = controlplane
    token = sa_token(cp, A, "impersonator")
    requestor = whoami(cp, token)
    imp = ["impersonate"]
    rules = [
        rule("", ["users"], imp, ["bob"]),
        rule("", ["groups"], imp, ["team"]),
        rule("", ["serviceaccounts"], imp),
        rule("authentication.k8s.io", ["userextras/k.io/x"], imp),
        rule("authentication.k8s.io", ["selfsubjectreviews"], ["create"]),
    ]
    _role(cp, None, "wc-authz-impersonator", rules)
    _bind(cp, None, "wc-authz-impersonator", "wc-authz-impersonator", _sa("impersonator", A))
    cases = [
        [("Impersonate-User", "bob")],
        [("Impersonate-User", "bob"), ("Impersonate-Group", "team")],
        [("Impersonate-User", "bob"), ("Impersonate-Extra-K.io%2Fx", "v")],
        [("Impersonate-User", f"system:serviceaccount:{A}:viewer-a")],
        [
            ("Impersonate-User", f"system:serviceaccount:{A}:viewer-a"),
            ("Impersonate-Group", "team"),
        ],
    ]
    wait_until(
        lambda: direct(cp, "GET", "/version", token, cases[0]).code == 200,
        what="the impersonator's binding",
    )
    review = ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews")

    # Refused after those successes: kube tries the mode that last worked (legacy) first,
    # and answers with its error; watchcache remembers the mode per requestor as well.
    refused = [
        [("Impersonate-User", "carol")],
        [("Impersonate-User", "bob"), ("Impersonate-Group", "other")],
        [("Impersonate-User", "bob"), ("Impersonate-Extra-k.io%2Fy", "v")],
        [("Impersonate-User", "bob"), ("Impersonate-Uid", "7")],
    ]

    async def judge() -> list[str]:
        impersonation = Impersonation(_authorizer(cp))
        problems = []
        for headers in cases:
            ours = await impersonation.resolve(requestor, headers, attributes_of(*review))
            if ours != whoami(cp, token, headers):
                problems.append(f"{headers}: ours {ours}, kube {whoami(cp, token, headers)}")
        for headers in refused:
            kube = direct(cp, "GET", f"/api/v1/namespaces/{A}/configmaps", token, headers)
            attrs = attributes_of("GET", f"/api/v1/namespaces/{A}/configmaps")
            try:
                await impersonation.resolve(requestor, headers, attrs)
                problems.append(f"{headers}: allowed, kube {kube.code}")
            except StatusError as exc:
                if exc.body() != kube.body:
                    problems.append(f"{headers}:\n kube {kube.body!r}\n ours {exc.body()!r}")
        return problems

    assert asyncio.run(judge()) == []


def test_a_grant_and_its_revocation_take_effect_after_the_ttls(
    controlplane: ControlPlane, people: dict[str, Who]
) -> None:
    cp = controlplane
    token = sa_token(cp, B, "late")
    user = whoami(cp, token)
    target = ("GET", f"/api/v1/namespaces/{B}/configmaps")
    attrs = attributes_of(*target)

    def kube_allows() -> bool:
        return direct(cp, *target, token).code != 403

    async def run() -> None:
        short = _authorizer(cp, allow_ttl=0.2, deny_ttl=0.2)
        long = _authorizer(cp, allow_ttl=3600, deny_ttl=3600)
        assert not (await short.authorize(user, attrs)).allowed
        assert not (await long.authorize(user, attrs)).allowed
        _bind(cp, B, "late", "editor", _sa("late", B))
        wait_until(kube_allows, what="kube to allow the new grant")
        await poll(short, True)
        calls = long.upstream_calls
        assert not (await long.authorize(user, attrs)).allowed  # the cached denial
        assert long.upstream_calls == calls
        code, raw = cp.request("DELETE", f"{RBAC}/namespaces/{B}/rolebindings/late")
        assert code == 200, raw
        wait_until(lambda: not kube_allows(), what="kube to refuse after the revocation")
        await poll(short, False)

    async def poll(authz: SubjectAccessReviewAuthorizer, allowed: bool) -> None:
        for _ in range(600):
            if (await authz.authorize(user, attrs)).allowed == allowed:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the decision never became allowed={allowed}")

    asyncio.run(run())
