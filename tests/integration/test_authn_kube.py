"""Authentication against the real kube-apiserver (issue 13), differentially.

For each credential (tokens of every kind, broken ones, headers that carry none, client
certificates), kube-apiserver is asked directly who the request is (a SelfSubjectReview:
201 names the user, 401 is a rejected credential, a 403 naming ``system:anonymous`` is an
anonymous request), and watchcache's authentication chain is given the same credential.
The two must agree: same user name, uid, groups and extra, or both 401, or both anonymous.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from differential import wait_until
from support.controlplane import ControlPlane

from watchcache.auth.authn import Credentials, UnionAuthenticator, X509Authenticator
from watchcache.auth.tokenfile import TokenFileAuthenticator
from watchcache.auth.tokenreview import TokenReviewAuthenticator
from watchcache.auth.user import ANONYMOUS_USER, UserInfo
from watchcache.http.clientcerts import ClientCertificate
from watchcache.http.tls import judge, server_context
from watchcache.kube.status import StatusError, unauthorized
from watchcache.upstream.client import Upstream, load_credentials

SSR = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSR_BODY = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
NS = "team-a"
T = TypeVar("T")

# What a decision is, on either side: a user, or "401".
Decision = UserInfo | str


def kube_decides(
    cp: ControlPlane, headers: list[tuple[str, str | bytes]], port: int | None = None, **kw: Any
) -> Decision:
    """Who kube-apiserver says the request is."""
    code, _, body = cp.raw_request("POST", SSR, SSR_BODY.encode(), headers, port=port, **kw)
    if code == 401:
        assert body == unauthorized().body(), body  # the exact bytes watchcache sends
        return "401"
    if code == 403:
        name = re.search(rb'User \\"([^\\]*)\\"', body)
        assert name is not None, body
        assert name.group(1) == b"system:anonymous", body
        return ANONYMOUS_USER
    assert code == 201, body
    info = json.loads(body)["status"]["userInfo"]
    return UserInfo.of(
        info["username"],
        uid=info.get("uid", ""),
        groups=info.get("groups", []),
        extra=info.get("extra"),
    )


async def we_decide(chain: UnionAuthenticator, creds: Credentials) -> Decision:
    try:
        return await chain.authenticate(creds)
    except StatusError as exc:
        assert exc.code == 401 and exc.body() == unauthorized().body()
        return "401"


def with_upstream(cp: ControlPlane, body: Callable[[Upstream], Awaitable[T]]) -> T:
    """Runs ``body`` on a fresh event loop with an API server client made on it."""

    async def main() -> T:
        upstream = Upstream(load_credentials(str(cp.kubeconfig)))
        try:
            return await body(upstream)
        finally:
            upstream.close()

    return asyncio.run(main())


@dataclass
class Tokens:
    static: str
    service_account: str
    other_audience: str
    watchcache_audience: str
    expired: str
    deleted: str
    group_member: str


@pytest.fixture(scope="module")
def tokens(controlplane: ControlPlane) -> Tokens:
    cp = controlplane
    users = {u.key: u for u in cp.example_users()}
    cp.create_service_account(NS, "wc-authn-doomed")
    deleted = cp.service_account_token(NS, "wc-authn-doomed")
    cp.delete_service_account(NS, "wc-authn-doomed")
    wait_until(
        lambda: kube_decides(cp, [("Authorization", f"Bearer {deleted}")]) == "401",
        what="a deleted service account's token is refused",
    )
    return Tokens(
        static=users["viewer-a"].token,
        service_account=users["sa-editor-a"].token,
        other_audience=cp.service_account_token(NS, "example-sa", audiences=["elsewhere"]),
        watchcache_audience=cp.service_account_token(NS, "example-sa", audiences=["watchcache"]),
        expired=cp.expired_service_account_token(NS, "example-sa"),
        deleted=deleted,
        group_member=users["group-viewer"].token,
    )


# Each case: the Authorization header values to send (bytes as they go on the wire).
def header_cases(t: Tokens) -> dict[str, list[bytes]]:
    return {
        "static token": [f"Bearer {t.static}".encode()],
        "static token of a group member": [f"Bearer {t.group_member}".encode()],
        "service-account token": [f"Bearer {t.service_account}".encode()],
        "lower-case scheme": [f"bearer {t.static}".encode()],
        "upper-case scheme": [f"BEARER {t.service_account}".encode()],
        "a third part after the token": [f"Bearer {t.static} trailing".encode()],
        "second header ignored": [f"Bearer {t.static}".encode(), b"Bearer garbage"],
        "bad first header, good second": [b"Bearer garbage", f"Bearer {t.static}".encode()],
        "token for another audience": [f"Bearer {t.other_audience}".encode()],
        "token for watchcache's audience": [f"Bearer {t.watchcache_audience}".encode()],
        "expired token": [f"Bearer {t.expired}".encode()],
        "deleted service account": [f"Bearer {t.deleted}".encode()],
        "garbage token": [b"Bearer garbage"],
        "10 KB token": [b"Bearer " + b"x" * 10240],
        "40 KB token": [b"Bearer " + b"y" * 40960],
        "a JWT-shaped token": [b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"],
        "non-UTF-8 bytes": [b"Bearer \xff\xfe\xfd"],
        "UTF-8 letters": ["Bearer tökén".encode()],
        "no header": [],
        "empty header": [b""],
        "scheme alone": [b"Bearer"],
        "scheme and two spaces, then a token": [f"Bearer  {t.static}".encode()],
        "tab instead of space": [f"Bearer\t{t.static}".encode()],
        "basic scheme": [b"Basic Zm9vOmJhcg=="],
        "unknown scheme": [b"Token abc"],
    }


CASES = list(header_cases(Tokens(*"abcdefg")).keys())


def _credentials(values: list[bytes]) -> Credentials:
    # What the HTTP layer hands over: the first value, one character per byte.
    return Credentials(authorization=values[0].decode("latin-1") if values else None)


@pytest.mark.parametrize("case", CASES)
def test_the_token_chain_decides_as_kube_apiserver(
    controlplane: ControlPlane, tokens: Tokens, case: str
) -> None:
    values = header_cases(tokens)[case]
    direct = kube_decides(controlplane, [("Authorization", v) for v in values])

    async def ours(upstream: Upstream) -> tuple[Decision, Decision]:
        review_only = UnionAuthenticator([TokenReviewAuthenticator(upstream)])
        with_file = UnionAuthenticator(
            [
                TokenFileAuthenticator(controlplane.workdir / "tokens.csv"),
                TokenReviewAuthenticator(upstream),
            ]
        )
        creds = _credentials(values)
        return await we_decide(review_only, creds), await we_decide(with_file, creds)

    review_only, with_file = with_upstream(controlplane, ours)
    assert review_only == direct
    assert with_file == direct


def test_audiences_are_sent_and_checked(controlplane: ControlPlane, tokens: Tokens) -> None:
    async def decide(upstream: Upstream) -> dict[str, Decision]:
        chain = UnionAuthenticator([TokenReviewAuthenticator(upstream, audiences=["watchcache"])])
        out = {}
        for name, token in (
            ("watchcache", tokens.watchcache_audience),
            ("default", tokens.service_account),
            ("elsewhere", tokens.other_audience),
            ("static", tokens.static),
        ):
            out[name] = await we_decide(chain, Credentials(authorization=f"Bearer {token}"))
        return out

    got = with_upstream(controlplane, decide)
    accepted = got["watchcache"]
    assert isinstance(accepted, UserInfo)
    assert accepted.name == f"system:serviceaccount:{NS}:example-sa"
    assert "system:authenticated" in accepted.groups
    # Not meant for watchcache: kube-apiserver's own audience, another one, and a static
    # token (audience-agnostic tokens hold only the API server's own audiences).
    assert got["default"] == got["elsewhere"] == got["static"] == "401"


def _tokenreviews(cp: ControlPlane) -> int:
    return sum(
        1
        for e in cp.audit_events()
        if e.get("objectRef", {}).get("resource") == "tokenreviews"  # type: ignore[union-attr]
    )


def test_answers_are_cached_and_one_review_serves_concurrent_requests(
    controlplane: ControlPlane, tokens: Tokens
) -> None:
    before = _tokenreviews(controlplane)

    async def run(upstream: Upstream) -> tuple[TokenReviewAuthenticator, list[Decision]]:
        auth = TokenReviewAuthenticator(upstream)
        chain = UnionAuthenticator([auth])
        good = Credentials(authorization=f"Bearer {tokens.service_account}")
        bad = Credentials(authorization="Bearer not-a-token")
        first = await asyncio.gather(*(we_decide(chain, good) for _ in range(8)))
        again = [await we_decide(chain, good), await we_decide(chain, bad)]
        again.append(await we_decide(chain, bad))
        return auth, [*first, *again]

    auth, decisions = with_upstream(controlplane, run)
    assert all(isinstance(d, UserInfo) for d in decisions[:9])
    assert decisions[9:] == ["401", "401"]
    assert auth.upstream_calls == 2  # one for the good token, one for the bad
    assert auth.cache_hits == 2  # the ninth good lookup and the second bad one
    assert auth.cached(tokens.service_account) is not None
    # kube-apiserver's audit log saw exactly those two reviews.
    wait_until(lambda: _tokenreviews(controlplane) - before == 2, what="two TokenReviews")


def test_anonymous_off_agrees_with_kube_apiserver(
    controlplane: ControlPlane, tokens: Tokens
) -> None:
    cases: dict[str, list[bytes]] = {
        "no header": [],
        "scheme alone": [b"Bearer"],
        "basic scheme": [b"Basic Zm9vOmJhcg=="],
        "garbage": [b"Bearer garbage"],
        "static token": [f"Bearer {tokens.static}".encode()],
        "service-account token": [f"Bearer {tokens.service_account}".encode()],
    }
    with controlplane.extra_apiserver("--anonymous-auth=false") as url:
        port = int(url.rsplit(":", 1)[1])
        direct = {
            name: kube_decides(controlplane, [("Authorization", v) for v in values], port=port)
            for name, values in cases.items()
        }

    async def ours(upstream: Upstream) -> dict[str, Decision]:
        chain = UnionAuthenticator([TokenReviewAuthenticator(upstream)], anonymous=False)
        return {name: await we_decide(chain, _credentials(v)) for name, v in cases.items()}

    assert with_upstream(controlplane, ours) == direct
    assert direct["no header"] == direct["scheme alone"] == direct["basic scheme"] == "401"


# ---- client certificates ------------------------------------------------------------------


PeerOf = Callable[[Any], ClientCertificate | None]


def peer_credentials(
    peer: ClientCertificate | None, authorization: str | None = None
) -> Credentials:
    """The credentials a request on that connection presents, as the adapter builds them."""
    if peer is None:
        return Credentials(authorization)
    return Credentials(authorization, peer.subject, peer.der, peer.error)


@pytest.fixture(scope="module")
def tls_peer(controlplane: ControlPlane) -> Iterator[PeerOf]:
    """A TLS server trusting the control plane's client CA with watchcache's own context
    and accept step: returns the verdict on a connection's client certificate."""
    ctx = server_context(
        str(controlplane.workdir / "serving.crt"),
        str(controlplane.workdir / "serving.key"),
        str(controlplane.client_ca_file),
    )
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def connect(cert: Any) -> ClientCertificate | None:
        result: dict[str, Any] = {}

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    result["peer"] = judge(tls, ctx)
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                result["error"] = exc

        thread = threading.Thread(target=serve)
        thread.start()
        client = controlplane.ssl_context()
        client.check_hostname = False
        if cert is not None:
            client.load_cert_chain(str(cert.cert), str(cert.key))
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw) as tls,
            ):
                tls.recv(2)
        except (ssl.SSLError, OSError) as exc:
            result.setdefault("client_error", exc)
        thread.join(10)
        if "error" in result:
            raise result["error"]
        peer: ClientCertificate | None = result.get("peer")
        return peer

    yield connect
    listener.close()


@pytest.mark.parametrize(
    "subject",
    [
        ("alice", ("team-x", "team-y"), None),
        ("bob", (), None),
        ("carol", ("example:ray-viewers",), "carol-uid-1"),
        ("", ("only-an-o",), None),  # no CN: no credential, so anonymous
    ],
    ids=["cn-and-two-o", "cn-only", "cn-o-uid", "no-cn"],
)
def test_client_certificates_map_as_kube_apiserver_maps_them(
    controlplane: ControlPlane,
    tls_peer: PeerOf,
    subject: tuple[str, tuple[str, ...], str | None],
) -> None:
    cn, orgs, uid = subject
    cert = controlplane.issue_client_cert(cn, orgs, uid=uid)
    direct = kube_decides(controlplane, [], cert=cert)
    peer = tls_peer(cert)
    assert peer is not None and peer.error is None
    chain = UnionAuthenticator([X509Authenticator()])
    ours = asyncio.run(we_decide(chain, peer_credentials(peer)))
    assert ours == direct
    if cn:
        assert isinstance(ours, UserInfo) and ours.name == cn and ours.uid == (uid or "")


def test_a_certificate_of_another_ca_is_a_bad_credential(
    controlplane: ControlPlane, tokens: Tokens, tls_peer: PeerOf
) -> None:
    """As kube-apiserver: the handshake completes, the certificate (whose subject claims
    system:masters) is refused as a credential (401), and a good token on the same request
    still authenticates its own user."""
    cert = controlplane.issue_client_cert("mallory", ("system:masters",), other_ca=True)
    peer = tls_peer(cert)
    assert peer is not None and peer.subject is None and peer.error
    for header in (None, f"Bearer {tokens.static}".encode()):
        headers = [] if header is None else [("Authorization", header)]
        direct = kube_decides(controlplane, headers, cert=cert)

        async def ours(upstream: Upstream, header: bytes | None = header) -> Decision:
            chain = UnionAuthenticator([X509Authenticator(), TokenReviewAuthenticator(upstream)])
            authorization = _credentials([header]).authorization if header else None
            return await we_decide(chain, peer_credentials(peer, authorization))

        assert with_upstream(controlplane, ours) == direct
    assert kube_decides(controlplane, [], cert=cert) == "401"


def test_a_certificate_and_a_token_first_success_wins(
    controlplane: ControlPlane, tokens: Tokens, tls_peer: PeerOf
) -> None:
    """kube-apiserver tries the certificate first; a good certificate wins over a bad token,
    and a good token over a certificate without a CN."""
    good, nocn = (controlplane.issue_client_cert(cn, ("g",)) for cn in ("dave", ""))
    for cert, header in ((good, b"Bearer garbage"), (nocn, f"Bearer {tokens.static}".encode())):
        direct = kube_decides(controlplane, [("Authorization", header)], cert=cert)
        peer = tls_peer(cert)

        async def ours(upstream: Upstream, peer: Any = peer, header: bytes = header) -> Decision:
            chain = UnionAuthenticator([X509Authenticator(), TokenReviewAuthenticator(upstream)])
            return await we_decide(
                chain, peer_credentials(peer, _credentials([header]).authorization)
            )

        assert with_upstream(controlplane, ours) == direct
        assert isinstance(direct, UserInfo)


# ---- the audit log ------------------------------------------------------------------------


def test_the_audit_log_shows_who_wrote(controlplane: ControlPlane) -> None:
    users = {u.key: u for u in controlplane.example_users()}
    editor = users["editor-b"]
    name = "wc-authn-audited"
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
    code, _, body = controlplane.raw_request(
        "POST",
        "/api/v1/namespaces/team-b/configmaps",
        json.dumps(obj).encode(),
        token=editor.token,
    )
    assert code in (201, 409), body

    def mine(e: dict[str, Any]) -> bool:
        ref = e.get("objectRef") or {}
        return (
            e.get("verb") == "create"
            and ref.get("resource") == "configmaps"
            and ref.get("namespace") == "team-b"
            and e.get("user", {}).get("username") == editor.name
        )

    events = controlplane.wait_audit(mine)
    assert events, "no audit event of the write"
    event = events[-1]
    assert event["level"] == "Metadata" and "requestObject" not in event
    assert event["responseStatus"]["code"] in (201, 409)
    assert "system:authenticated" in event["user"]["groups"]
    # Reads of Ray resources are recorded too (the policy's ray.io rule).
    controlplane.request("GET", "/apis/ray.io/v1/namespaces/team-b/rayclusters")
    assert controlplane.wait_audit(
        lambda e: (e.get("objectRef") or {}).get("apiGroup") == "ray.io" and e["verb"] == "list"
    )


def test_example_users_may_do_what_they_say(controlplane: ControlPlane) -> None:
    users = {u.key: u for u in controlplane.example_users()}
    rows = controlplane.example_user_rows()
    assert [r[0] for r in rows] == [u.name for u in users.values()]

    def can(user: str, path: str) -> int:
        code, _, _ = controlplane.raw_request("GET", path, token=users[user].token)
        return code

    a, b = (
        "/apis/ray.io/v1/namespaces/team-a/rayclusters",
        "/apis/ray.io/v1/namespaces/team-b/rayclusters",
    )
    everywhere = "/apis/ray.io/v1/rayclusters"
    assert [can("admin", p) for p in (a, b, everywhere)] == [200, 200, 200]
    assert [can("viewer-a", p) for p in (a, b, everywhere)] == [200, 403, 403]
    assert [can("editor-b", p) for p in (a, b, everywhere)] == [403, 200, 403]
    assert [can("nobody", p) for p in (a, b, everywhere)] == [403, 403, 403]
    assert [can("group-viewer", p) for p in (a, b, everywhere)] == [200, 200, 200]
    assert [can("sa-editor-a", p) for p in (a, b, everywhere)] == [200, 403, 403]
    # view includes config maps (compute templates) once the roles are aggregated.
    assert can("viewer-a", "/api/v1/namespaces/team-a/configmaps") == 200
