"""Authentication's rules, each as kube-apiserver applies it (the integration tests check the
same cases against the real one): bearer parsing, the union and anonymous, the group adder,
the static token file (Go's CSV), TokenReview's cache and audiences, client certificates."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from watchcache.auth.authn import (
    AuthenticationFailed,
    Credentials,
    TokenAuthenticator,
    UnionAuthenticator,
    X509Authenticator,
    authenticate,
    bearer_token,
    token_digest,
    user_from_certificate,
    websocket_token,
)
from watchcache.auth.tokenfile import TokenFileAuthenticator, TokenFileError, parse_csv
from watchcache.auth.tokenreview import TokenReviewAuthenticator
from watchcache.auth.user import ANONYMOUS_USER, UserInfo
from watchcache.kube.status import StatusError, unauthorized

UNAUTHORIZED = (
    b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
    b'"message":"Unauthorized","reason":"Unauthorized","code":401}\n'
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_401_is_kube_apiservers_body() -> None:
    assert unauthorized().body() == UNAUTHORIZED
    assert unauthorized().code == 401 and unauthorized().headers == {}


# ---- bearer tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("  Bearer abc  ", "abc"),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BeArEr abc", "abc"),
        ("Bearer abc def", "abc"),  # a third part is ignored
        ("Bearer abc def ghi", "abc"),
        ("Bearer  abc", None),  # two spaces: the token is empty, so no credential
        ("Bearer\tabc", None),  # only a space separates
        ("Basic Zm9vOmJhcg==", None),
        ("Token abc", None),
        ("Bearerabc", None),
        ("Bearer abc\t", "abc"),  # Go trims white space at both ends
        ("Bearer abc\xc2\x85", "abc"),  # U+0085 (UTF-8 C2 85) is white space to Go ...
        ("Bearer abc\x1f", "abc\x1f"),  # ... U+001F is not (Python's strip would take it)
        ("Bearer t\xc3\xb6k", "t\u00f6k"),  # header bytes are UTF-8 to Go
    ],
)
def test_bearer_token_is_parsed_as_kube_apiserver_does(
    header: str | None, token: str | None
) -> None:
    assert bearer_token(header) == token


def test_a_header_value_with_invalid_utf8_is_a_token_nothing_accepts() -> None:
    token = bearer_token("Bearer \xff\xfe")
    assert token is not None
    chain = UnionAuthenticator([Static({token: UserInfo("x")})])
    with pytest.raises(StatusError) as err:
        run(chain.authenticate(Credentials(authorization="Bearer \xff\xfe")))
    assert err.value.code == 401


def _ws(token: bytes) -> str:
    return "base64url.bearer.authorization.k8s.io." + base64.urlsafe_b64encode(
        token
    ).decode().rstrip("=")


def test_websocket_subprotocol_token() -> None:
    assert websocket_token([f"{_ws(b'abc')}, v4.channel.k8s.io"]) == "abc"
    assert websocket_token(["v4.channel.k8s.io", _ws(b"abc")]) == "abc"
    assert websocket_token(["v4.channel.k8s.io"]) is None
    for bad in (
        [_ws(b"abc")],  # no other subprotocol to answer with
        [f"{_ws(b'a')},{_ws(b'b')},x"],
        ["base64url.bearer.authorization.k8s.io.YWJj=,x"],  # padding is not raw base64url
        ["base64url.bearer.authorization.k8s.io.a+b/,x"],
        [f"{_ws(bytes([0xFF]))},x"],  # not UTF-8
    ):
        with pytest.raises(AuthenticationFailed):
            websocket_token(bad)


# ---- the union, anonymous, the group adder ------------------------------------------------


@dataclass
class Static(TokenAuthenticator):
    tokens: Mapping[str, UserInfo]
    name: str = "static"
    seen: list[str] = field(default_factory=list)

    async def authenticate_token(self, token: str) -> UserInfo | None:
        self.seen.append(token)
        return self.tokens.get(token)


class Failing:
    name = "failing"

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        raise AuthenticationFailed("no")


class Broken:
    name = "broken"

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        raise KeyError("a bug")


class Abstains:
    name = "abstains"

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        return None


def decide(authenticators: list[Any], creds: Credentials, anonymous: bool = True) -> Any:
    try:
        return run(authenticate(authenticators, creds, anonymous=anonymous))
    except StatusError as exc:
        assert exc.body() == UNAUTHORIZED
        return 401


ALICE = UserInfo.of("alice", uid="1", groups=["devs"])
BEARER = Credentials(authorization="Bearer t1")


def test_first_success_wins_and_gets_system_authenticated() -> None:
    bob = UserInfo("bob")
    got = decide([Static({"t1": ALICE}), Static({"t1": bob})], BEARER)
    assert got == UserInfo.of("alice", uid="1", groups=["devs", "system:authenticated"])


def test_a_failure_does_not_stop_the_next_authenticator() -> None:
    assert decide([Failing(), Static({"t1": ALICE})], BEARER).name == "alice"
    assert decide([Static({}), Static({"t1": ALICE})], BEARER).name == "alice"
    assert decide([Broken(), Static({"t1": ALICE})], BEARER).name == "alice"


def test_a_credential_nothing_accepts_is_401_never_anonymous() -> None:
    assert decide([Static({"other": ALICE})], BEARER) == 401
    assert decide([Failing()], Credentials()) == 401
    assert decide([Broken()], Credentials()) == 401  # garbage is a 401, not a 500
    assert decide([Abstains(), Failing(), Abstains()], Credentials()) == 401


def test_no_credential_is_anonymous_or_401_when_anonymous_is_off() -> None:
    for creds in (
        Credentials(),
        Credentials(authorization=""),
        Credentials(authorization="Bearer"),
        Credentials(authorization="Basic abc"),
        Credentials(authorization="Bearer  t1"),
    ):
        static = Static({"t1": ALICE, "": ALICE})
        assert decide([static, Abstains()], creds) == ANONYMOUS_USER
        assert static.seen == []  # no token was looked up
        assert decide([static], creds, anonymous=False) == 401
    assert UserInfo("system:anonymous", groups=("system:unauthenticated",)) == ANONYMOUS_USER
    assert decide([], Credentials()) == ANONYMOUS_USER


@pytest.mark.parametrize(
    ("user", "groups"),
    [
        (UserInfo("a"), ("system:authenticated",)),
        (UserInfo("a", groups=("g",)), ("g", "system:authenticated")),
        (UserInfo("a", groups=("system:authenticated", "g")), ("system:authenticated", "g")),
        (UserInfo("a", groups=("system:unauthenticated",)), ("system:unauthenticated",)),
        (UserInfo("system:anonymous", groups=("g",)), ("g",)),
    ],
)
def test_the_authenticated_group_is_added_exactly_as_kube_apiserver_adds_it(
    user: UserInfo, groups: tuple[str, ...]
) -> None:
    assert decide([Static({"t1": user})], BEARER).groups == groups


def test_an_oversized_or_control_character_token_is_401_without_a_lookup() -> None:
    static = Static({"x" * 40000: ALICE, "a\x00b": ALICE})
    for token in ("x" * 40000, "a\x00b"):
        assert decide([static], Credentials(authorization=f"Bearer {token}")) == 401
    assert static.seen == []
    assert decide([static], Credentials(authorization="Bearer " + "y" * 10240)) == 401


def test_the_websocket_token_is_tried_after_the_header() -> None:
    static = Static({"ws": ALICE})
    creds = Credentials(authorization="Bearer bad", websocket_protocols=(f"{_ws(b'ws')},x",))
    assert decide([static], creds).name == "alice"
    assert decide([static], Credentials(websocket_protocols=(_ws(b"ws"),))) == 401


# ---- the static token file ----------------------------------------------------------------

# Records as Go's encoding/csv reads them (checked against Go itself).
GO_CSV = [
    (
        'a,b,c\n\n\r\nd,"e,f","g""h"\nx,"m\nn",z,\n',
        [["a", "b", "c"], ["d", "e,f", 'g"h'], ["x", "m\nn", "z", ""]],
    ),
    ('t,u,i,"g1,g2"', [["t", "u", "i", "g1,g2"]]),
    ("", []),
    ("\n\n", []),
    (" \n", [[" "]]),
    ("#c,d,e\n", [["#c", "d", "e"]]),  # no comments
    ("a,b\r\n\r\nc\r", [["a", "b"], ["c"]]),
    ('a,"b\r\nc"\r\n', [["a", "b\nc"]]),
    ('"",x\n', [["", "x"]]),
    ("a\rb,c\n", [["a\rb", "c"]]),
    (",", [["", ""]]),
    ('"\n"', [["\n"]]),
]


@pytest.mark.parametrize(("text", "records"), GO_CSV)
def test_token_file_csv_is_gos(text: str, records: list[list[str]]) -> None:
    assert parse_csv(text) == records


@pytest.mark.parametrize("text", ['a"b,c,d', 'a,"b"c,d', 'a,"b', '"unterminated\n', 'a,"b\n'])
def test_token_file_csv_errors_are_gos(text: str) -> None:
    with pytest.raises(TokenFileError):
        parse_csv(text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def token_of(auth: TokenFileAuthenticator, token: str) -> UserInfo | None:
    return run(auth.authenticate_token(token))  # type: ignore[no-any-return]


def test_token_file_records_as_kube_apiserver_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text(
        "t1,alice,uid-a\n"
        't2,bob,uid-b,"g1,g2"\n'
        ",empty,skipped\n"
        "t3,first,1\n"
        "t3,second,2,,extra-column\n"
        "t4,carol,uid-c,\n"
    )
    auth = TokenFileAuthenticator(path)
    assert token_of(auth, "t1") == UserInfo("alice", "uid-a")
    assert token_of(auth, "t2") == UserInfo("bob", "uid-b", ("g1", "g2"))
    assert token_of(auth, "t3") == UserInfo("second", "2", ("",))  # the last one counts
    assert token_of(auth, "t4") == UserInfo("carol", "uid-c", ("",))  # Go splits "" into [""]
    assert token_of(auth, "") is None and token_of(auth, "nope") is None
    assert len(auth) == 4


def test_a_token_file_with_a_short_record_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text("t1,alice\n")
    with pytest.raises(TokenFileError, match="at least 3"):
        TokenFileAuthenticator(path)
    with pytest.raises(OSError):
        TokenFileAuthenticator(tmp_path / "missing.csv")


def test_token_file_reload_once_a_second_and_a_bad_file_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text("secret-one,alice,1\n")
    clock = Clock()
    auth = TokenFileAuthenticator(path, clock=clock)

    _write(path, "secret-two,bob,2\n", bump=1)
    assert token_of(auth, "secret-one") is not None  # not looked at within the second
    clock.now += 1.0
    assert token_of(auth, "secret-one") is None
    assert token_of(auth, "secret-two") == UserInfo("bob", "2")
    assert auth.reloads == 1

    caplog.set_level(logging.INFO, logger="watchcache.auth.tokenfile")
    caplog.clear()
    _write(path, 'secret-three,"carol\n', bump=2)
    for _ in range(3):
        clock.now += 1.0
        assert token_of(auth, "secret-two") is not None  # the last good file
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # said once, not every second
    assert "secret" not in caplog.text.replace(str(path), "")

    path.unlink()
    clock.now += 1.0
    assert token_of(auth, "secret-two") is not None
    clock.now += 1.0
    assert token_of(auth, "secret-two") is not None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2

    path.write_text("secret-four,dave,4\n")
    clock.now += 1.0
    assert token_of(auth, "secret-four") == UserInfo("dave", "4")
    assert token_of(auth, "secret-two") is None


def test_token_file_through_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text('abc,alice,uid-1,"team,ops"\n')
    auth = TokenFileAuthenticator(path)
    got = decide([auth], Credentials(authorization="Bearer abc"))
    assert got == UserInfo("alice", "uid-1", ("team", "ops", "system:authenticated"))
    assert decide([auth], Credentials(authorization="Bearer abd")) == 401


# ---- TokenReview ---------------------------------------------------------------------------


@dataclass
class Answer:
    code: int
    body: bytes


@dataclass
class FakeApiServer:
    """Answers TokenReviews from a table (token -> user dict, or absent: not authenticated)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    audiences: list[str] | None = None  # what status.audiences says (None: the request's)
    code: int = 201
    fail: Exception | None = None
    gate: asyncio.Event | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def fetch(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        assert (method, target) == ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
        assert headers is not None and headers["Content-Type"] == "application/json"
        review = orjson.loads(body or b"")
        self.requests.append(review)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if self.code != 201:
            return Answer(self.code, b'{"kind":"Status"}')
        spec = review["spec"]
        status: dict[str, Any] = {"user": {}}
        user = self.users.get(spec["token"])
        if user is not None:
            status = {"authenticated": True, "user": user}
            auds = self.audiences if self.audiences is not None else spec.get("audiences")
            if auds:
                status["audiences"] = auds
        return Answer(201, orjson.dumps({**review, "status": status}))


SA_USER = {
    "username": "system:serviceaccount:a:sa",
    "uid": "u-1",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:a", "system:authenticated"],
    "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]},
}


def test_tokenreview_user_and_what_is_sent() -> None:
    api = FakeApiServer({"good": SA_USER})
    auth = TokenReviewAuthenticator(api)
    got = decide([auth], Credentials(authorization="Bearer good"))
    assert got == UserInfo.of(
        "system:serviceaccount:a:sa",
        uid="u-1",
        groups=SA_USER["groups"],
        extra=SA_USER["extra"],
    )
    assert api.requests == [
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "good"}}
    ]


def test_tokenreview_answers_are_cached_by_a_hash_of_the_token() -> None:
    clock = Clock()
    api = FakeApiServer({"good-token": SA_USER})
    auth = TokenReviewAuthenticator(api, ttl=60, failure_ttl=5, maxsize=3, timer=clock)

    async def go() -> list[Any]:
        out = []
        for token in ("good-token", "good-token", "bad-token", "bad-token"):
            try:
                out.append(await auth.authenticate_token(token))
            except AuthenticationFailed:
                out.append("error")
        return out

    got = run(go())
    assert got[0] is not None and got[0] == got[1] and got[2:] == [None, None]
    assert (auth.upstream_calls, auth.cache_hits) == (2, 2)
    keys = {*auth._accepted.keys(), *auth._rejected.keys()}
    assert keys == {hashlib.sha256(b"good-token").digest(), token_digest("bad-token")}
    kept = repr((auth._accepted, auth._rejected, auth._inflight))
    assert "good-token" not in kept and "bad-token" not in kept

    clock.now += 6  # rejections are forgotten first
    run(go())
    assert (auth.upstream_calls, auth.cache_hits) == (3, 5)
    clock.now += 61
    run(go())
    assert auth.upstream_calls == 5

    for i in range(10):  # bounded
        run(auth.authenticate_token(f"t{i}"))
    assert len(auth._accepted) + len(auth._rejected) <= 6


def test_tokenreview_errors_are_401_and_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-token-value"
    api = FakeApiServer({secret: SA_USER}, code=403)
    auth = TokenReviewAuthenticator(api)
    creds = Credentials(authorization=f"Bearer {secret}")
    caplog.set_level(logging.DEBUG)
    assert decide([auth], creds) == 401
    assert "tokenreviews" in caplog.text and secret not in caplog.text
    api.code = 201
    assert decide([auth], creds).name == SA_USER["username"]  # the error was not remembered
    api.fail = ConnectionError("refused")
    assert decide([TokenReviewAuthenticator(api)], creds) == 401
    assert auth.upstream_errors == 1 and auth.upstream_calls == 2
    assert secret not in caplog.text

    for junk in (b"not json", b"[1]", b'{"status": []}'):
        raw = TokenReviewAuthenticator(_Raw(junk))
        assert decide([raw], creds) == 401


@dataclass
class _Raw:
    body: bytes

    async def fetch(self, method: str, target: str, **kw: Any) -> Answer:
        return Answer(201, self.body)


def test_tokenreview_audiences_are_sent_and_must_intersect() -> None:
    api = FakeApiServer({"t": SA_USER})
    creds = Credentials(authorization="Bearer t")
    auth = TokenReviewAuthenticator(api, audiences=["watchcache", "other"])
    assert decide([auth], creds).name == SA_USER["username"]
    assert api.requests[-1]["spec"]["audiences"] == ["watchcache", "other"]
    api.audiences = ["other"]  # one shared audience is enough
    assert decide([TokenReviewAuthenticator(api, audiences=["watchcache", "other"])], creds) != 401
    api.audiences = ["elsewhere"]
    assert decide([TokenReviewAuthenticator(api, audiences=["watchcache"])], creds) == 401
    api.audiences = []  # an answer without audiences does not do
    assert decide([TokenReviewAuthenticator(api, audiences=["watchcache"])], creds) == 401
    api.audiences = None
    assert "audiences" not in FakeApiServer().requests  # (sanity of the fake)
    plain = TokenReviewAuthenticator(api)
    assert decide([plain], creds) != 401
    assert "audiences" not in api.requests[-1]["spec"]


def test_concurrent_lookups_of_one_token_share_one_review() -> None:
    async def go() -> tuple[list[Any], TokenReviewAuthenticator]:
        api = FakeApiServer({"t": SA_USER}, gate=asyncio.Event())
        auth = TokenReviewAuthenticator(api)
        tasks = [asyncio.ensure_future(auth.authenticate_token("t")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks[0].cancel()  # one caller going away does not cancel the others' review
        await asyncio.sleep(0)
        assert api.gate is not None
        api.gate.set()
        results = await asyncio.gather(*tasks[1:])
        return results, auth

    results, auth = run(go())
    assert auth.upstream_calls == 1 and all(r is not None for r in results)
    assert auth.cached("t") is not None


def test_an_oversized_token_is_never_sent() -> None:
    api = FakeApiServer()
    assert (
        decide([TokenReviewAuthenticator(api)], Credentials(authorization="Bearer " + "x" * 40000))
        == 401
    )
    assert api.requests == []


# ---- client certificates --------------------------------------------------------------------


def peercert(*rdns: tuple[str, str]) -> dict[str, Any]:
    """A getpeercert() dict: each attribute in its own RDN, as certificates usually have."""
    return {
        "subject": tuple(((k, v),) for k, v in rdns),
        "issuer": ((("commonName", "ca"),),),
        "version": 3,
        "notAfter": "Jan  1 00:00:00 2099 GMT",
    }


def test_x509_user_from_cn_and_groups_from_o() -> None:
    cert = peercert(
        ("countryName", "DE"),
        ("organizationName", "team-x"),
        ("commonName", "alice"),
        ("organizationName", "team-y"),
        ("organizationalUnitName", "not-a-group"),
    )
    der = b"\x30\x03\x02\x01\x01"
    got = decide([X509Authenticator()], Credentials(peer_cert=cert, peer_cert_der=der))
    assert got == UserInfo.of(
        "alice",
        groups=["team-x", "team-y", "system:authenticated"],
        extra={
            "authentication.kubernetes.io/credential-id": [
                "X509SHA256=" + hashlib.sha256(der).hexdigest()
            ]
        },
    )


def test_x509_edge_cases_as_kube_apiserver() -> None:
    cn2 = peercert(("commonName", "first"), ("commonName", "last"))
    assert user_from_certificate(cn2) == UserInfo("last")  # Go keeps the last CN
    uid = peercert(("commonName", "a"), ("1.3.6.1.4.1.57683.2", "uid-7"))
    assert user_from_certificate(uid) == UserInfo("a", "uid-7")
    # A multi-valued RDN is read attribute by attribute.
    multi = {"subject": ((("commonName", "b"), ("organizationName", "o")),)}
    assert user_from_certificate(multi) == UserInfo("b", groups=("o",))
    # No CN: no credential, so anonymous (or 401 with anonymous off).
    nocn = peercert(("organizationName", "system:masters"))
    assert user_from_certificate(nocn) is None
    assert decide([X509Authenticator()], Credentials(peer_cert=nocn)) == ANONYMOUS_USER
    assert decide([X509Authenticator()], Credentials(peer_cert=nocn), anonymous=False) == 401
    for bad in (
        peercert(("commonName", "a"), ("1.3.6.1.4.1.57683.2", "1"), ("1.3.6.1.4.1.57683.2", "2")),
        peercert(("commonName", "a"), ("1.3.6.1.4.1.57683.2", "")),
        {"subject": "garbage"},
        {"subject": (("x",),)},
    ):
        assert decide([X509Authenticator()], Credentials(peer_cert=bad)) == 401
    assert decide([X509Authenticator()], Credentials()) == ANONYMOUS_USER
