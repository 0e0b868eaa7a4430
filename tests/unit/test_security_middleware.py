"""The security middleware's own logic (the decisions are auth/'s, tested on their own and
against the real API server): who is remembered, what is stripped, what the audit shows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from watchcache.auth.authn import Credentials, UnionAuthenticator
from watchcache.auth.authz import Decision
from watchcache.auth.user import UserInfo
from watchcache.kube.attributes import Attributes
from watchcache.middleware.core import Headers, Request, Response
from watchcache.middleware.security import AuditLog, Security

PATH = "/apis/ray.io/v1/namespaces/a/rayclusters/x"


class Tokens:
    name = "tokens"

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        self.calls += 1
        token = (credentials.authorization or "").removeprefix("Bearer ")
        return UserInfo.of(token) if token else None


class OnlyAlice:
    def __init__(self) -> None:
        self.calls = 0

    async def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        self.calls += 1
        return Decision(user.name == "alice")


def request(token: str | None, **headers: str) -> Request:
    pairs = [("Authorization", f"Bearer {token}")] if token else []
    pairs += [(k.replace("_", "-"), v) for k, v in headers.items()]
    return Request(method="GET", path=PATH, query={}, headers=Headers(pairs), target=PATH)


async def ok(request: Request) -> Response:
    return Response(status=200, body=request.user.name.encode() if request.user else b"")


def run(security: Security, req: Request) -> Response:
    return asyncio.run(security(req, ok))


@pytest.fixture
def parts() -> tuple[Security, Tokens, OnlyAlice]:
    tokens, authz = Tokens(), OnlyAlice()
    return Security(UnionAuthenticator([tokens]), authz), tokens, authz


def test_an_allowed_request_is_remembered_for_its_own_credential_only(
    parts: tuple[Security, Tokens, OnlyAlice],
) -> None:
    security, tokens, authz = parts
    assert run(security, request("alice")).body == b"alice"
    assert run(security, request("alice")).body == b"alice"
    assert (tokens.calls, authz.calls) == (1, 1)  # the second from the memo
    assert run(security, request("bob")).status == 403  # another token: decided in full
    assert run(security, request("bob")).status == 403
    assert authz.calls == 3  # a denial is never remembered here


def test_a_request_that_impersonates_is_always_decided_in_full(
    parts: tuple[Security, Tokens, OnlyAlice],
) -> None:
    security, _, authz = parts
    run(security, request("alice"))
    answer = run(security, request("alice", Impersonate_User="admin"))
    # The impersonate checks were asked (not answered from alice's memo); the request then
    # runs as admin, whom the authorizer refuses.
    assert answer.status == 403
    assert authz.calls > 2


def test_the_audit_line_names_the_user_and_never_the_token(
    tmp_path: Path, parts: tuple[Security, Tokens, OnlyAlice]
) -> None:
    _, tokens, authz = parts
    log = tmp_path / "audit.jsonl"
    security = Security(UnionAuthenticator([tokens]), authz, audit=AuditLog(str(log)))
    run(security, request("alice"))
    run(security, request("secret-token-of-bob"))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["user"], r["code"], r["verb"], r["name"]) for r in lines] == [
        ("alice", 200, "get", "x"),
        ("secret-token-of-bob", 403, "get", "x"),  # the stub's user name is its token
    ]
    assert "Bearer" not in log.read_text()


def test_a_bad_credential_is_a_401_status(parts: tuple[Security, Tokens, OnlyAlice]) -> None:
    security, _, _ = parts

    class Refusing(Tokens):
        async def authenticate(self, credentials: Credentials) -> UserInfo | None:
            from watchcache.auth.authn import AuthenticationFailed

            raise AuthenticationFailed("expired")

    security = Security(UnionAuthenticator([Refusing()]), OnlyAlice())
    answer = run(security, request("whatever"))
    assert answer.status == 401 and json.loads(answer.body)["reason"] == "Unauthorized"
