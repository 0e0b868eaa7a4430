"""The SubjectAccessReview authorizer's cache, single flight and failure answers, and the
impersonation rules, on a stub upstream (the real API server's answers are checked in
tests/integration/test_authz_kube.py)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ParamSpec

import orjson
import pytest
from tornado import httputil

from watchcache.auth.authz import (
    AlwaysAllow,
    Decision,
    SubjectAccessReviewAuthorizer,
    check,
    review_body,
)
from watchcache.auth.impersonation import (
    Impersonation,
    escape_extra_key,
    impersonation_headers,
    is_impersonation_header,
    wanted_user,
)
from watchcache.auth.user import UserInfo
from watchcache.kube.attributes import Attributes
from watchcache.kube.status import StatusError
from watchcache.upstream.client import Response, UpstreamError

P = ParamSpec("P")


def sync(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Runs an async test on a fresh event loop (the suite has no async plugin)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


ALICE = UserInfo.of("alice", "u1", ["dev", "system:authenticated"], {"scopes": ["a", "b"]})
LIST_A = Attributes(True, "list", "ray.io", "v1", "rayclusters", namespace="a")


class FakeUpstream:
    """Answers SubjectAccessReviews with ``decide(spec)``; can be held to test single flight."""

    def __init__(self, decide: Callable[[dict[str, object]], dict[str, object]]) -> None:
        self.decide = decide
        self.bodies: list[dict[str, object]] = []
        self.gate: asyncio.Event | None = None
        self.code = 201
        self.fail: Exception | None = None

    async def fetch(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        assert method == "POST" and target.endswith("/subjectaccessreviews")
        review = orjson.loads(body or b"{}")
        self.bodies.append(review)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        out = {**review, "status": self.decide(review["spec"])}
        return Response(self.code, httputil.HTTPHeaders(), orjson.dumps(out))


def allow_namespace_a(spec: dict[str, object]) -> dict[str, object]:
    attrs = spec.get("resourceAttributes") or {}
    assert isinstance(attrs, dict)
    return {"allowed": attrs.get("namespace") == "a"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_review_body_carries_the_user_and_only_set_attributes() -> None:
    body = orjson.loads(review_body(ALICE, LIST_A))
    assert body == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "alice",
            "uid": "u1",
            "groups": ["dev", "system:authenticated"],
            "extra": {"scopes": ["a", "b"]},
            "resourceAttributes": {
                "namespace": "a",
                "verb": "list",
                "group": "ray.io",
                "version": "v1",
                "resource": "rayclusters",
            },
        },
    }
    path = orjson.loads(review_body(UserInfo("bob"), Attributes.non_resource("/metrics", "get")))
    assert path["spec"] == {
        "user": "bob",
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
    }


@sync
async def test_decisions_are_cached_allowed_long_denied_short() -> None:
    upstream, clock = FakeUpstream(allow_namespace_a), Clock()
    authz = SubjectAccessReviewAuthorizer(upstream, allow_ttl=100, deny_ttl=10, timer=clock)
    list_b = Attributes(True, "list", "ray.io", "v1", "rayclusters", namespace="b")
    assert (await authz.authorize(ALICE, LIST_A)).allowed
    assert not (await authz.authorize(ALICE, list_b)).allowed
    for _ in range(3):
        await authz.authorize(ALICE, LIST_A)
        await authz.authorize(ALICE, list_b)
    assert (authz.upstream_calls, authz.cache_hits) == (2, 6)
    clock.now = 11  # the denial expired, the grant not
    await authz.authorize(ALICE, LIST_A)
    await authz.authorize(ALICE, list_b)
    assert (authz.upstream_calls, authz.cache_hits) == (3, 7)
    clock.now = 101
    await authz.authorize(ALICE, LIST_A)
    assert authz.upstream_calls == 4


@sync
async def test_the_cache_key_is_the_whole_user() -> None:
    upstream = FakeUpstream(allow_namespace_a)
    authz = SubjectAccessReviewAuthorizer(upstream)
    await authz.authorize(ALICE, LIST_A)
    await authz.authorize(UserInfo.of("alice", "u1", ["dev"]), LIST_A)  # other groups
    await authz.authorize(UserInfo.of("alice", "u2", list(ALICE.groups)), LIST_A)
    assert authz.upstream_calls == 3


@sync
async def test_the_cache_is_bounded() -> None:
    authz = SubjectAccessReviewAuthorizer(FakeUpstream(allow_namespace_a), maxsize=5)
    for i in range(20):
        await authz.authorize(UserInfo(f"u{i}"), LIST_A)
    assert len(authz._allowed) == 5


@sync
async def test_identical_checks_in_flight_share_one_review() -> None:
    upstream = FakeUpstream(allow_namespace_a)
    upstream.gate = asyncio.Event()
    authz = SubjectAccessReviewAuthorizer(upstream)
    tasks = [asyncio.ensure_future(authz.authorize(ALICE, LIST_A)) for _ in range(10)]
    await asyncio.sleep(0)
    tasks[0].cancel()  # one caller leaving does not cancel the review for the others
    upstream.gate.set()
    results = await asyncio.gather(*tasks[1:])
    assert all(d.allowed for d in results)
    assert (authz.upstream_calls, authz.shared) == (1, 9)
    assert (await authz.authorize(ALICE, LIST_A)).allowed and authz.upstream_calls == 1


@sync
async def test_an_unreachable_api_server_is_503_and_not_cached() -> None:
    upstream = FakeUpstream(allow_namespace_a)
    upstream.fail = UpstreamError("cannot connect to the Kubernetes API server: refused")
    authz = SubjectAccessReviewAuthorizer(upstream)
    for _ in range(2):
        with pytest.raises(StatusError) as caught:
            await authz.authorize(ALICE, LIST_A)
        assert caught.value.code == 503 and caught.value.headers == {"Retry-After": "1"}
    assert authz.upstream_calls == 2
    upstream.fail = None
    assert (await authz.authorize(ALICE, LIST_A)).allowed


@pytest.mark.parametrize(("code", "want"), [(500, 503), (429, 503), (403, 500), (401, 500)])
@sync
async def test_a_refused_review_is_a_server_error(code: int, want: int) -> None:
    upstream = FakeUpstream(allow_namespace_a)
    upstream.code = code
    with pytest.raises(StatusError) as caught:
        await SubjectAccessReviewAuthorizer(upstream).authorize(ALICE, LIST_A)
    assert caught.value.code == want


@sync
async def test_an_explicit_deny_wins_and_the_reason_is_kept() -> None:
    upstream = FakeUpstream(lambda spec: {"allowed": True, "denied": True, "reason": "no"})
    assert await SubjectAccessReviewAuthorizer(upstream).authorize(ALICE, LIST_A) == Decision(
        False, "no"
    )


@sync
async def test_check_raises_kubes_403() -> None:
    upstream = FakeUpstream(lambda spec: {"allowed": False, "reason": "RBAC: nope"})
    with pytest.raises(StatusError) as caught:
        await check(SubjectAccessReviewAuthorizer(upstream), ALICE, LIST_A)
    assert caught.value.code == 403
    assert caught.value.message.endswith('in the namespace "a": RBAC: nope')
    assert (await check(AlwaysAllow(), ALICE, LIST_A)).allowed


# --- impersonation ---------------------------------------------------------------------------


def test_headers_for_a_write_carry_every_group_and_escaped_extra_keys() -> None:
    user = UserInfo.of(
        "alice",
        "u1",
        ["dev", "system:authenticated"],
        {"example.org/Scope key": ["x", "y"], "plain": ["z"]},
    )
    assert impersonation_headers(user) == [
        ("Impersonate-User", "alice"),
        ("Impersonate-Uid", "u1"),
        ("Impersonate-Group", "dev"),
        ("Impersonate-Group", "system:authenticated"),
        ("Impersonate-Extra-example.org%2F%53cope%20key", "x"),
        ("Impersonate-Extra-example.org%2F%53cope%20key", "y"),
        ("Impersonate-Extra-plain", "z"),
    ]
    assert escape_extra_key("a%b") == "a%25b"
    with pytest.raises(ValueError):
        impersonation_headers(UserInfo("a\r\nX-Evil: 1"))


def test_header_recognition() -> None:
    for name in ("impersonate-user", "Impersonate-Group", "IMPERSONATE-UID", "Impersonate-Extra-x"):
        assert is_impersonation_header(name)
    assert not is_impersonation_header("Impersonate")


def test_wanted_user_parsing_and_kubes_400() -> None:
    wanted = wanted_user(
        [
            ("Impersonate-User", "bob"),
            ("impersonate-user", "ignored"),
            ("Impersonate-Group", "g1"),
            ("Impersonate-Group", "g2"),
            ("Impersonate-Extra-Example.org%2Fk", "v"),
        ]
    )
    assert wanted is not None
    assert (wanted.name, wanted.groups, wanted.extra) == (
        "bob",
        ("g1", "g2"),
        (("example.org/k", ("v",)),),
    )
    assert wanted_user([("Accept", "x")]) is None
    with pytest.raises(StatusError) as caught:
        wanted_user([("Impersonate-Group", "g")])
    assert caught.value.code == 400
    assert caught.value.message == (
        'requested &user.DefaultInfo{Name:"", UID:"", Groups:[]string{"g"}, '
        "Extra:map[string][]string(nil)} without impersonating a user name"
    )


class RuleAuthorizer:
    """Allows exactly the (verb, resource, name) triples given; records every question."""

    def __init__(self, *allowed: tuple[str, str, str]) -> None:
        self.allowed = set(allowed)
        self.asked: list[tuple[str, Attributes]] = []

    async def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        self.asked.append((user.name, attrs))
        return Decision((attrs.verb, attrs.resource, attrs.name) in self.allowed)


CM = Attributes(True, "list", "", "v1", "configmaps", namespace="a")


@sync
async def test_no_impersonation_keeps_the_user() -> None:
    authz = RuleAuthorizer()
    assert await Impersonation(authz).resolve(ALICE, [("Accept", "*/*")], CM) is ALICE
    assert authz.asked == []


@sync
async def test_legacy_impersonation_of_a_user_adds_system_authenticated() -> None:
    authz = RuleAuthorizer(("impersonate", "users", "bob"), ("impersonate", "groups", "g"))
    imp = Impersonation(authz)
    user = await imp.resolve(ALICE, [("Impersonate-User", "bob")], CM)
    assert user == UserInfo("bob", groups=("system:authenticated",))
    user = await imp.resolve(ALICE, [("Impersonate-User", "bob"), ("Impersonate-Group", "g")], CM)
    assert user.groups == ("g", "system:authenticated")


@sync
async def test_a_service_account_gets_its_groups() -> None:
    authz = RuleAuthorizer(("impersonate", "serviceaccounts", "sa"))
    user = await Impersonation(authz).resolve(
        ALICE, [("Impersonate-User", "system:serviceaccount:ns:sa")], CM
    )
    assert user.groups == (
        "system:serviceaccounts",
        "system:serviceaccounts:ns",
        "system:authenticated",
    )
    assert authz.asked[-1][1].namespace == "ns"


@sync
async def test_the_denial_is_the_first_modes_error_in_kubes_wording() -> None:
    imp = Impersonation(RuleAuthorizer())
    with pytest.raises(StatusError) as caught:
        await imp.resolve(ALICE, [("Impersonate-User", "admin")], CM)
    assert caught.value.code == 403
    assert caught.value.message == (
        'configmaps is forbidden: User "alice" cannot impersonate-on:user-info:list resource '
        '"configmaps" in API group "" in the namespace "a"'
    )
    with pytest.raises(StatusError) as caught:
        await imp.resolve(ALICE, [("Impersonate-User", "system:serviceaccount:a:b")], CM)
    assert "impersonate-on:serviceaccount:list" in caught.value.message


@sync
async def test_the_last_successful_mode_is_tried_first() -> None:
    authz = RuleAuthorizer(("impersonate", "users", "bob"))
    imp = Impersonation(authz)
    await imp.resolve(ALICE, [("Impersonate-User", "bob")], CM)
    with pytest.raises(StatusError) as caught:
        await imp.resolve(ALICE, [("Impersonate-User", "carol")], CM)
    assert caught.value.message == (
        'users "carol" is forbidden: User "alice" cannot impersonate resource "users" in API '
        'group "" at the cluster scope'
    )


@sync
async def test_constrained_user_info_mode() -> None:
    authz = RuleAuthorizer(
        ("impersonate-on:user-info:list", "configmaps", ""),
        ("impersonate:user-info", "users", "bob"),
        ("impersonate:user-info", "uids", "42"),
        ("impersonate:user-info", "userextras", "v"),
    )
    user = await Impersonation(authz).resolve(
        ALICE,
        [("Impersonate-User", "bob"), ("Impersonate-Uid", "42"), ("Impersonate-Extra-k.io/x", "v")],
        CM,
    )
    assert user == UserInfo.of("bob", "42", ["system:authenticated"], {"k.io/x": ["v"]})
    assert authz.asked[-1][1].group == "authentication.k8s.io"
    assert authz.asked[-1][1].subresource == "k.io/x"


@sync
async def test_impersonating_system_masters_needs_legacy_rights() -> None:
    authz = RuleAuthorizer(
        ("impersonate-on:user-info:list", "configmaps", ""),
        ("impersonate:user-info", "users", "bob"),
    )
    with pytest.raises(StatusError) as caught:
        await Impersonation(authz).resolve(
            ALICE, [("Impersonate-User", "bob"), ("Impersonate-Group", "system:masters")], CM
        )
    assert caught.value.message.endswith(
        'in API group "authentication.k8s.io" at the cluster scope: '
        "impersonating the system:masters group is not allowed"
    )


@sync
async def test_an_anonymous_impersonation_gets_system_unauthenticated() -> None:
    authz = RuleAuthorizer(("impersonate", "users", "system:anonymous"))
    user = await Impersonation(authz).resolve(ALICE, [("Impersonate-User", "system:anonymous")], CM)
    assert user.groups == ("system:unauthenticated",)


@sync
async def test_an_authorizer_failure_is_not_a_denial() -> None:
    upstream = FakeUpstream(allow_namespace_a)
    upstream.fail = UpstreamError("down")
    with pytest.raises(StatusError) as caught:
        await Impersonation(SubjectAccessReviewAuthorizer(upstream)).resolve(
            ALICE, [("Impersonate-User", "bob")], CM
        )
    assert caught.value.code == 503
