"""Issue 13 end to end: a `watchcache serve` process with authentication and authorization,
compared request for request with kube-apiserver answering the same credential directly.

1. Differential authorization: every example user (and anonymous) sends one corpus through
   watchcache and straight to kube-apiserver; codes, reasons and 401/403 bodies agree, and
   successful lists, Tables, pages and watches show the same names. A grant and a
   revocation made on kube-apiserver take effect through watchcache within the TTLs.
2. Bad credentials: each a 401 Status, never a 500, no token in the proxy's log.
3. Impersonation: writes reach kube-apiserver under the caller's name (its audit log), and
   a client's own Impersonate-* headers are checked as kube-apiserver checks them.
4. Binding a non-loopback address without authentication is refused in one line.
5. TLS serving: the Python client, kubectl and curl; plain HTTP gets Go's 400; x509 client
   certificates authenticate as kube-apiserver maps them.
6. The audit log: one JSON line per request, never a token or a body.
"""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Proxy, stop_proxy
from differential import wait_until
from kubeio import event
from support.controlplane import ControlPlane, free_port
from support.devcerts import DevCerts, ensure

A, B = "team-a", "team-b"
RAY = "/apis/ray.io/v1"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
INITIAL = "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
USERS = ("admin", "viewer-a", "editor-b", "nobody", "group-viewer", "sa-editor-a", "anonymous")
CLUSTERS = {A: ("alpha-1", "alpha-2", "alpha-3"), B: ("beta-1", "beta-2")}
LABELS = {"alpha-1": "ray", "alpha-2": "other", "alpha-3": "ray", "beta-1": "ray", "beta-2": "x"}
KUBERAY_SERVICE = "wc-sec-head-svc"
TEMPLATE = "wc-sec-template"
Header = tuple[str, str | bytes]


# ---- one HTTP exchange, on either side ----------------------------------------------------


@dataclass(frozen=True)
class Answer:
    code: int
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        try:
            return json.loads(self.raw) if self.raw else None
        except ValueError:
            return None

    def reason(self) -> str | None:
        body = self.body
        return body.get("reason") if isinstance(body, dict) else None

    def brief(self) -> str:
        return f"{self.code} {self.raw[:300]!r}"


@dataclass(frozen=True)
class Side:
    """Where requests go: kube-apiserver (HTTPS) or a watchcache process (HTTP or HTTPS),
    with an optional client certificate."""

    name: str
    host: str
    port: int
    context: ssl.SSLContext | None = None

    def connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=timeout
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Sequence[Header] = (),
        *,
        token: str | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Answer:
        conn = self.connect()
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if token:
                conn.putheader("Authorization", f"Bearer {token}")
            conn.putheader("Accept", accept)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Type", content_type)
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return Answer(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def watch_names(self, path: str, token: str | None) -> tuple[Answer, set[str]]:
        """A watch with initial events: the names ADDED until the initial-events-end
        bookmark (or the answer, when the watch does not start)."""
        conn = self.connect(timeout=20)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            if token:
                conn.putheader("Authorization", f"Bearer {token}")
            conn.putheader("Accept", "application/json")
            conn.endheaders()
            resp = conn.getresponse()
            if resp.status != 200:
                return Answer(resp.status, dict(resp.getheaders()), resp.read()), set()
            names: set[str] = set()
            while True:
                line = resp.readline()
                if not line:
                    raise AssertionError(f"{self.name}: {path}: the watch ended early")
                if not line.strip():
                    continue
                event = json.loads(line)
                meta = event["object"].get("metadata") or {}
                if event["type"] == "ADDED":
                    names.add(meta["name"])
                elif event["type"] == "BOOKMARK":
                    if (meta.get("annotations") or {}).get("k8s.io/initial-events-end") == "true":
                        return Answer(200, dict(resp.getheaders()), b""), names
                else:
                    raise AssertionError(f"{self.name}: {path}: unexpected event {event}")
        finally:
            conn.close()


def kube_side(cp: ControlPlane, cert: Any = None) -> Side:
    ctx = cp.ssl_context()
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return Side("kube", "127.0.0.1", cp.port, ctx)


def proxy_side(proxy: Proxy, context: ssl.SSLContext | None = None) -> Side:
    url = urllib.parse.urlsplit(proxy.base)
    return Side("watchcache", url.hostname or "127.0.0.1", url.port or 80, context)


# ---- the cluster's objects ----------------------------------------------------------------


def cluster(name: str, label: str = "ray") -> dict[str, Any]:
    head = {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.9.0"}]}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": {"app": label}},
        "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": head}}},
    }


def _create(cp: ControlPlane, path: str, obj: dict[str, Any]) -> None:
    code, raw = cp.request("POST", path, obj)
    assert code in (201, 409), (path, code, raw[:300])


def _cm_template(name: str, namespace: str) -> dict[str, Any]:
    """A compute template as KubeRay stores it: a labelled ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"ray.io/config-type": "compute-template", "ray.io/compute-template": name},
        },
        "data": {"name": name, "namespace": namespace, "cpu": "1", "memory": "2"},
    }


@dataclass
class World:
    cp: ControlPlane
    users: dict[str, Any]  # key -> ExampleUser
    proxy: Proxy
    audit_log: Path
    tokens: list[str] = field(default_factory=list)  # every token sent: none may be logged

    def token(self, key: str) -> str | None:
        return None if key == "anonymous" else self.users[key].token


@pytest.fixture(scope="module")
def objects(controlplane: ControlPlane) -> dict[str, Any]:
    """The example users, and in team-a and team-b: Ray clusters, Ray events, a compute
    template and a KubeRay Service (no endpoints), made directly on kube-apiserver."""
    cp = controlplane
    users = {u.key: u for u in cp.example_users()}
    for ns, names in CLUSTERS.items():
        for name in names:
            _create(cp, f"{RAY}/namespaces/{ns}/rayclusters", cluster(name, LABELS[name]))
        _create(
            cp,
            f"/apis/events.k8s.io/v1/namespaces/{ns}/events",
            event(f"wc-sec-ev-{names[0]}", "ray.io/v1", "RayCluster", names[0], ns),
        )
        _create(cp, f"/api/v1/namespaces/{ns}/configmaps", _cm_template(TEMPLATE, ns))
        svc = {
            "metadata": {"name": KUBERAY_SERVICE, "labels": {"app.kubernetes.io/name": "kuberay"}},
            "spec": {"ports": [{"name": "dashboard", "port": 8265, "targetPort": 8265}]},
        }
        _create(cp, f"/api/v1/namespaces/{ns}/services", svc)
    return users


@pytest.fixture(scope="module")
def world(
    controlplane: ControlPlane,
    objects: dict[str, Any],
    proxy_factory: Callable[..., Proxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    """One proxy checking every request with kube-apiserver (short TTLs, so that grants and
    revocations show quickly), writing its audit log to a file."""
    audit = tmp_path_factory.mktemp("security") / "audit.log"
    proxy = proxy_factory(
        "--authentication",
        "kubernetes",
        "--authorization",
        "kubernetes",
        "--authentication-ttl",
        "2",
        "--authorization-allow-ttl",
        "2",
        "--authorization-deny-ttl",
        "1",
        "--audit-log",
        str(audit),
    )
    w = World(controlplane, objects, proxy, audit, [u.token for u in objects.values()])
    # The cache must hold what kube-apiserver holds before names are compared.
    admin = objects["admin"].token
    wc, kube = proxy_side(proxy), kube_side(controlplane)
    for ns in (A, B):
        svc = f"/api/v1/namespaces/{ns}/services/{KUBERAY_SERVICE}:8265/proxy/"
        wait_until(
            lambda svc=svc: (
                kube.send("GET", svc, token=admin).code == wc.send("GET", svc, token=admin).code
            ),
            what="the service proxy gate to know the KubeRay Service",
        )
    for path in (f"{RAY}/rayclusters", "/apis/events.k8s.io/v1/events"):
        wait_until(
            lambda path=path: _same(
                kube.send("GET", path, token=admin), wc.send("GET", path, token=admin), "list", path
            ),
            what=f"watchcache to show what kube-apiserver shows at {path}",
        )
    return w


# ---- the corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    kind: str = "plain"  # plain | list | table | pages | watch | code | template
    body: bytes | None = None
    content_type: str = "application/json"
    kube_path: str | None = None  # for templates: the configmaps request kube is asked
    kube_method: str | None = None


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


MERGE = "application/merge-patch+json"


def corpus() -> list[Req]:
    out: list[Req] = []
    scopes = [f"{RAY}/namespaces/{A}/rayclusters", f"{RAY}/namespaces/{B}/rayclusters"]
    for col in [*scopes, f"{RAY}/rayclusters"]:
        out += [
            Req("GET", col, "list"),
            Req("GET", f"{col}?labelSelector=app%3Dray", "list"),
            Req("GET", f"{col}?fieldSelector=metadata.name%3Dalpha-1", "list"),
            Req(
                "GET",
                f"{col}?labelSelector=app%21%3Dray&fieldSelector=metadata.name%21%3Dx",
                "list",
            ),
            Req("GET", col, "table"),
            Req("GET", f"{col}?limit=1", "pages"),
            Req("GET", f"{col}?watch=true&{INITIAL}", "watch"),
            Req("GET", f"{col}?watch=true&labelSelector=app%3Dray&{INITIAL}", "watch"),
        ]
    for ns, col in zip((A, B), scopes, strict=True):
        first = CLUSTERS[ns][0]
        patch = _json({"metadata": {"labels": {"touched": "yes"}}})
        out += [
            Req("GET", f"{col}/{first}"),
            Req("GET", f"{col}/missing"),
            Req("GET", f"{col}/{first}/status"),
            Req("POST", f"{col}?dryRun=All", body=_json(cluster("wc-sec-dry"))),
            Req("PATCH", f"{col}/{first}?dryRun=All", body=patch, content_type=MERGE),
            Req("PATCH", f"{col}/{first}/status?dryRun=All", body=patch, content_type=MERGE),
            Req("DELETE", f"{col}/{first}?dryRun=All"),
            Req("DELETE", f"{col}/missing?dryRun=All"),
            Req("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", "list"),
            Req("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events?watch=1&{INITIAL}", "watch"),
            Req("GET", f"/api/v1/namespaces/{ns}/services/{KUBERAY_SERVICE}:8265/proxy/api/jobs/"),
            Req(
                "POST",
                f"/api/v1/namespaces/{ns}/services/{KUBERAY_SERVICE}:8265/proxy/api/jobs/",
                body=b"{}",
            ),
        ]
        templates = f"/apis/v1/namespaces/{ns}/compute_templates"
        configmaps = f"/api/v1/namespaces/{ns}/configmaps"
        out += [
            Req("GET", templates, "template", kube_path=configmaps),
            Req("GET", f"{templates}/{TEMPLATE}", "template", kube_path=f"{configmaps}/{TEMPLATE}"),
            Req(
                "DELETE",
                f"{templates}/wc-sec-missing",
                "template",
                kube_path=f"{configmaps}/wc-sec-missing",
            ),
            Req(
                "POST",
                templates,
                "template",
                body=_json({"name": ""}),
                kube_path=f"{configmaps}?dryRun=All",
            ),
        ]
    out += [
        Req("GET", "/apis/events.k8s.io/v1/events", "list"),
        Req("GET", "/apis/v1/compute_templates", "template", kube_path="/api/v1/configmaps"),
        Req("GET", "/apis", "code"),
        Req("GET", "/api", "code"),
        Req("GET", "/apis/ray.io/v1", "code"),
        Req("GET", "/version", "code"),
        Req("GET", "/openapi/v2", "code"),
        Req("GET", "/metrics", "code"),
        Req("GET", "/readyz", "code"),
        Req("GET", "/healthz", "code"),
        Req("GET", "/livez", "code"),
    ]
    return out


def _names(answer: Answer, kind: str, path: str) -> list[str]:
    body = answer.body
    if kind == "table":
        return sorted(row["object"]["metadata"]["name"] for row in body["rows"])
    items = body["items"]
    if "events.k8s.io" in path:  # watchcache serves only the events about Ray resources
        items = [i for i in items if (i.get("regarding") or {}).get("apiVersion") == "ray.io/v1"]
    return sorted(i["metadata"]["name"] for i in items)


def _same(kube: Answer, wc: Answer, kind: str, path: str) -> bool:
    return kube.code == wc.code == 200 and _names(kube, kind, path) == _names(wc, kind, path)


def _pages(side: Side, path: str, token: str | None) -> tuple[Answer, list[str]]:
    names: list[str] = []
    target = path
    for _ in range(50):
        got = side.send("GET", target, token=token)
        if got.code != 200:
            return got, names
        names += [i["metadata"]["name"] for i in got.body["items"]]
        cont = (got.body.get("metadata") or {}).get("continue")
        if not cont:
            return got, names
        target = f"{path}&continue={urllib.parse.quote(cont)}"
    raise AssertionError(f"{side.name}: {path}: more than 50 pages")


def _status(answer: Answer) -> dict[str, Any]:
    """A Status body's fields that must agree (all of them)."""
    body = answer.body
    assert isinstance(body, dict) and body.get("kind") == "Status", answer.brief()
    return body


def judge(req: Req, kube: Side, wc: Side, token: str | None) -> str | None:
    """None when both sides agree on ``req``; else what differs."""
    where = f"{req.method} {req.path}"
    if req.kind == "watch":
        k, kn = kube.watch_names(req.path, token)
        w, wn = wc.watch_names(req.path, token)
        if "events.k8s.io" in req.path:
            kn = {n for n in kn if n.startswith("wc-sec-ev-")}
            wn = {n for n in wn if n.startswith("wc-sec-ev-")}
        if k.code == w.code == 200 and kn != wn:
            return f"{where}: initial events kube {sorted(kn)}, watchcache {sorted(wn)}"
    elif req.kind == "pages":
        k, kn_list = _pages(kube, req.path, token)
        w, wn_list = _pages(wc, req.path, token)
        if k.code == w.code == 200 and kn_list != wn_list:
            return f"{where}: pages kube {kn_list}, watchcache {wn_list}"
    elif req.kind == "template":
        k = kube.send(
            req.kube_method or req.method, req.kube_path or req.path, req.body, token=token
        )
        w = wc.send(req.method, req.path, req.body, token=token)
        if (k.code in (401, 403)) != (w.code in (401, 403)) or (
            k.code in (401, 403) and k.code != w.code
        ):
            return f"{where}: configmaps on kube {k.brief()}, watchcache {w.brief()}"
        if k.code in (401, 403):
            message = (w.body or {}).get("message")
            if message != k.body["message"]:
                return f"{where}: kube says {k.body['message']!r}, watchcache {w.brief()}"
        return None
    else:
        accept = TABLE if req.kind == "table" else "application/json"
        k, w = (
            side.send(
                req.method,
                req.path,
                req.body,
                token=token,
                content_type=req.content_type,
                accept=accept,
            )
            for side in (kube, wc)
        )
        if k.code == w.code == 200 and req.kind in ("list", "table"):
            kn, wn = _names(k, req.kind, req.path), _names(w, req.kind, req.path)
            if kn != wn:
                return f"{where}: kube {kn}, watchcache {wn}"
    if k.code != w.code:
        return f"{where}: kube {k.brief()}, watchcache {w.brief()}"
    if k.code >= 500 and k.code != 503:
        return f"{where}: kube itself failed: {k.brief()}"
    if k.code in (401, 403):
        if _status(k) != _status(w):
            return f"{where}:\n   kube       {k.raw!r}\n   watchcache {w.raw!r}"
    elif k.code >= 400 and k.reason() != w.reason():
        return f"{where}: reason kube {k.brief()}, watchcache {w.brief()}"
    return None


# ---- 1. differential authorization --------------------------------------------------------


@pytest.mark.parametrize("key", USERS)
def test_every_user_gets_what_kube_apiserver_gives(world: World, key: str) -> None:
    kube, wc = kube_side(world.cp), proxy_side(world.proxy)
    token = world.token(key)
    problems = [p for req in corpus() if (p := judge(req, kube, wc, token)) is not None]
    assert problems == [], "\n".join(problems)


def test_the_corpus_has_both_answers(world: World) -> None:
    """Each limited user is allowed some of the corpus and refused some."""
    kube = kube_side(world.cp)
    for key in ("viewer-a", "editor-b", "sa-editor-a"):
        token = world.token(key)
        codes = {
            kube.send(r.method, r.path, r.body, token=token).code
            for r in corpus()
            if r.kind != "watch"
        }
        assert {200, 403} <= codes, (key, codes)


def _kube_json(cp: ControlPlane, method: str, path: str, body: object = None) -> Any:
    code, raw = cp.request(method, path, body)
    assert code in (200, 201), (method, path, code, raw[:300])
    return json.loads(raw)


def test_real_writes_answer_as_kube_answers_them(world: World) -> None:
    """For every user a real create, patch and delete, through watchcache and directly
    (each side its own object), with the same answers."""
    cp, kube, wc = world.cp, kube_side(world.cp), proxy_side(world.proxy)
    problems = []
    for key in USERS:
        token = world.token(key)
        for ns in (A, B):
            col = f"{RAY}/namespaces/{ns}/rayclusters"
            answers = {}
            for side, suffix in ((kube, "k"), (wc, "w")):
                name = f"wc-sec-real-{key}-{suffix}"
                created = side.send("POST", col, _json(cluster(name)), token=token)
                patched = side.send(
                    "PATCH",
                    f"{col}/{name}",
                    _json({"metadata": {"labels": {"p": "1"}}}),
                    token=token,
                    content_type=MERGE,
                )
                deleted = side.send("DELETE", f"{col}/{name}", token=token)
                answers[side.name] = (created, patched, deleted)
                if created.code == 201 and deleted.code != 200:
                    cp.request("DELETE", f"{col}/{name}")
            for step, k, w in zip(
                ("create", "patch", "delete"), answers["kube"], answers["watchcache"], strict=True
            ):
                if k.code != w.code:
                    problems.append(
                        f"{key} {step} in {ns}: kube {k.brief()}, watchcache {w.brief()}"
                    )
                elif k.code == 403:
                    kb, wb = dict(_status(k)), dict(_status(w))
                    # The names differ (-k, -w); the rest must not.
                    for body in (kb, wb):
                        body["message"] = body["message"].replace('-k"', '"').replace('-w"', '"')
                        body.pop("details", None)
                    if kb != wb:
                        problems.append(f"{key} {step} in {ns}:\n kube {k.raw!r}\n wc   {w.raw!r}")
    assert problems == [], "\n".join(problems)


def test_a_grant_and_a_revocation_on_kube_apiserver_take_effect_within_the_ttls(
    world: World,
) -> None:
    cp = world.cp
    cp.create_service_account(B, "wc-sec-late")
    token = cp.service_account_token(B, "wc-sec-late")
    world.tokens.append(token)
    path = f"{RAY}/namespaces/{B}/rayclusters"
    kube, wc = kube_side(cp), proxy_side(world.proxy)
    assert kube.send("GET", path, token=token).code == 403
    assert wc.send("GET", path, token=token).code == 403
    cp.bind(
        "view",
        {"kind": "ServiceAccount", "name": "wc-sec-late", "namespace": B},
        B,
        name="wc-sec-late",
    )
    wait_until(lambda: kube.send("GET", path, token=token).code == 200, what="kube: the grant")
    wait_until(lambda: wc.send("GET", path, token=token).code == 200, what="watchcache: the grant")
    code, raw = cp.request("DELETE", f"{RBAC}/namespaces/{B}/rolebindings/wc-sec-late")
    assert code == 200, raw
    wait_until(lambda: kube.send("GET", path, token=token).code == 403, what="kube: revoked")
    wait_until(lambda: wc.send("GET", path, token=token).code == 403, what="watchcache: revoked")
    assert _status(wc.send("GET", path, token=token)) == _status(
        kube.send("GET", path, token=token)
    )


# ---- 2. bad credentials -------------------------------------------------------------------


def _raw_http(port: int, request: bytes, context: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        sock: socket.socket = (
            context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        )
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _split(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return code, body


@pytest.fixture(scope="module")
def bad_tokens(world: World) -> dict[str, str]:
    cp = world.cp
    cp.create_service_account(A, "wc-sec-doomed")
    doomed = cp.service_account_token(A, "wc-sec-doomed")
    tokens = {
        "expired": cp.expired_service_account_token(A, "example-sa"),
        "malformed": "not-a-token-" + secrets.token_hex(16),
        "jwt-shaped": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0." + secrets.token_urlsafe(24),
        "10 KB": secrets.token_urlsafe(7700)[:10240],
        "revoked": doomed,
    }
    world.tokens += tokens.values()
    return tokens


@pytest.mark.parametrize("case", ["expired", "malformed", "jwt-shaped", "10 KB"])
def test_a_bad_token_is_a_401_status(world: World, bad_tokens: dict[str, str], case: str) -> None:
    path = f"{RAY}/namespaces/{A}/rayclusters"
    kube = kube_side(world.cp).send("GET", path, token=bad_tokens[case])
    wc = proxy_side(world.proxy).send("GET", path, token=bad_tokens[case])
    assert kube.code == 401
    assert wc.code == 401, wc.brief()
    assert _status(wc) == _status(kube)
    assert _status(wc)["reason"] == "Unauthorized"


def test_a_deleted_service_accounts_token_is_refused(
    world: World, bad_tokens: dict[str, str]
) -> None:
    cp, token = world.cp, bad_tokens["revoked"]
    wc = proxy_side(world.proxy)
    path = f"{RAY}/namespaces/{A}/rayclusters"
    assert wc.send("GET", path, token=token).code == 403  # authenticated, with no rights
    cp.delete_service_account(A, "wc-sec-doomed")
    kube = kube_side(cp)
    wait_until(lambda: kube.send("GET", path, token=token).code == 401, what="kube refuses it")
    got = wait_until(
        lambda: (a := wc.send("GET", path, token=token)).code == 401 and a,
        what="watchcache refuses it (after --authentication-ttl)",
    )
    assert _status(got) == _status(kube.send("GET", path, token=token))


GARBAGE: dict[str, list[bytes]] = {
    "non-UTF-8 token": [b"Authorization: Bearer \xff\xfe\xfd"],
    "non-UTF-8 scheme": [b"Authorization: B\xe9arer abc"],
    "non-UTF-8 token, valid UTF-8 elsewhere": [
        b"Authorization: Bearer t\xc3\xb6k\xc3\xa9n\xff",
        b"X-Note: \xc3\xa9",
    ],
    "a token of control characters": [b"Authorization: Bearer \x01\x02\x7f"],
    "two Authorization headers, both bad": [b"Authorization: Bearer x", b"Authorization: y"],
    "scheme only": [b"Authorization: Bearer"],
    "a non-UTF-8 Impersonate-User": [b"Authorization: Bearer x", b"Impersonate-User: \xff"],
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_headers_get_what_kube_gives_and_never_a_500(world: World, case: str) -> None:
    path = f"/apis/ray.io/v1/namespaces/{A}/rayclusters"
    head = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", *GARBAGE[case]]
    request = b"\r\n".join([*head, b"Accept: application/json", b"Connection: close", b"", b""])
    kcode, kbody = _split(_raw_http(world.cp.port, request, world.cp.ssl_context()))
    wcode, wbody = _split(_raw_http(int(world.proxy.base.rsplit(":", 1)[1]), request))
    assert wcode < 500, (wcode, wbody)
    assert wcode == kcode, (kcode, kbody, wcode, wbody)
    if kcode in (401, 403):
        assert json.loads(wbody) == json.loads(kbody)


@pytest.fixture(scope="module")
def audience_proxy(
    controlplane: ControlPlane, objects: dict[str, Any], proxy_factory: Callable[..., Proxy]
) -> Proxy:
    return proxy_factory(
        "--authentication", "kubernetes", "--authentication-audiences", "watchcache"
    )


def test_wrong_audience_is_a_401(
    world: World, audience_proxy: Proxy, objects: dict[str, Any]
) -> None:
    cp = world.cp
    mine = cp.service_account_token(A, "example-sa", audiences=["watchcache"])
    theirs = cp.service_account_token(A, "example-sa", audiences=["elsewhere"])
    world.tokens += [mine, theirs]
    wc = proxy_side(audience_proxy)
    path = f"{RAY}/namespaces/{A}/rayclusters"
    assert wc.send("GET", path, token=mine).code == 200
    for token in (theirs, objects["sa-editor-a"].token, objects["admin"].token):
        got = wc.send("GET", path, token=token)
        assert got.code == 401, got.brief()
        assert _status(got)["reason"] == "Unauthorized"
    assert _no_token_in(audience_proxy.log(), world.tokens) == []


def _no_token_in(text: str, tokens: Sequence[str]) -> list[str]:
    """The tokens (by their first characters) that appear in ``text``."""
    return [t[:12] + "..." for t in tokens if t and (t in text or t[:40] in text)]


# ---- 3. impersonation ---------------------------------------------------------------------


def test_a_write_reaches_kube_apiserver_under_the_callers_name(world: World) -> None:
    cp, editor = world.cp, world.users["editor-b"]
    name = f"wc-sec-audited-{secrets.token_hex(3)}"
    col = f"{RAY}/namespaces/{B}/rayclusters"
    got = proxy_side(world.proxy).send("POST", col, _json(cluster(name)), token=editor.token)
    assert got.code == 201, got.brief()

    def mine(e: dict[str, Any]) -> bool:
        ref = e.get("objectRef") or {}
        return e.get("verb") == "create" and ref.get("name") == name

    events = cp.wait_audit(mine)
    assert events, "no audit event of the write"
    event = events[-1]
    assert event["impersonatedUser"]["username"] == editor.name, event
    assert "system:authenticated" in event["impersonatedUser"]["groups"]
    assert event["user"]["username"] != editor.name  # watchcache's own, which impersonates
    assert event["responseStatus"]["code"] == 201
    cp.request("DELETE", f"{col}/{name}")


IMPERSONATIONS: list[tuple[str, list[Header]]] = [
    ("viewer-a", [("Impersonate-User", "example-admin")]),
    ("viewer-a", [("Impersonate-User", "admin")]),
    ("nobody", [("Impersonate-User", "example-admin"), ("Impersonate-Group", "system:masters")]),
    ("sa-editor-a", [("Impersonate-Group", "system:masters")]),
    ("anonymous", [("Impersonate-User", "example-admin")]),
    ("editor-b", [("Impersonate-User", "x"), ("Impersonate-Uid", "1")]),
    # cluster-admin may impersonate: the request is then the viewer's, on both sides
    ("admin", [("Impersonate-User", "example-viewer-a")]),
    (
        "admin",
        [("Impersonate-User", "example-nobody"), ("Impersonate-Group", "example:ray-viewers")],
    ),
]


@pytest.mark.parametrize(("key", "headers"), IMPERSONATIONS)
def test_a_clients_impersonation_is_checked_as_kube_checks_it(
    world: World, key: str, headers: list[Header]
) -> None:
    kube, wc = kube_side(world.cp), proxy_side(world.proxy)
    token = world.token(key)
    problems = []
    for method, path, body in (
        ("GET", f"{RAY}/namespaces/{A}/rayclusters", None),
        ("GET", f"{RAY}/namespaces/{B}/rayclusters", None),
        ("GET", f"{RAY}/namespaces/{A}/rayclusters/alpha-1", None),
        ("POST", f"{RAY}/namespaces/{A}/rayclusters?dryRun=All", _json(cluster("wc-sec-imp"))),
        ("GET", "/version", None),
    ):
        k = kube.send(method, path, body, headers, token=token)
        w = wc.send(method, path, body, headers, token=token)
        if k.code != w.code or (k.code in (401, 403) and _status(k) != _status(w)):
            problems.append(
                f"{key} {headers} {method} {path}:\n kube {k.brief()}\n wc   {w.brief()}"
            )
    assert problems == [], "\n".join(problems)


# ---- 4. unauthenticated binds -------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--authentication", "none"]], ids=["no-flag", "none"])
def test_a_non_loopback_bind_without_authentication_is_refused(
    controlplane: ControlPlane, extra: list[str]
) -> None:
    argv = [
        sys.executable,
        "-m",
        "watchcache",
        "serve",
        "--kubeconfig",
        str(controlplane.kubeconfig),
        "--bind",
        "0.0.0.0",
        "--port",
        str(free_port()),
        *extra,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert len(out.splitlines()) == 1, out
    assert "--allow-unauthenticated" in out, out


def test_allow_unauthenticated_serves_and_warns(proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory("--bind", "0.0.0.0", "--allow-unauthenticated")
    try:
        assert proxy.request("GET", f"{RAY}/namespaces/{A}/rayclusters")[0] == 200
        warnings = [line for line in proxy.log().splitlines() if "WARNING" in line]
        assert any("unauthenticated" in line.lower() for line in warnings), proxy.log()
    finally:
        stop_proxy(proxy)


# ---- 5. TLS -------------------------------------------------------------------------------


@dataclass
class TLSProxy:
    proxy: Proxy
    certs: DevCerts
    port: int

    def context(self, cert: Any = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs.ca_file))
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        return ctx

    def side(self, cert: Any = None) -> Side:
        return Side("watchcache", "127.0.0.1", self.port, self.context(cert))


@pytest.fixture(scope="module")
def tls_proxy(
    controlplane: ControlPlane, objects: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TLSProxy]:
    """HTTPS with a dev CA; client certificates of the control plane's client CA, then
    static tokens (the token file), then TokenReview."""
    tmp = tmp_path_factory.mktemp("tls")
    certs = ensure(tmp / "certs")
    port = free_port()
    log_path = tmp / "watchcache-tls.log"
    argv = [
        sys.executable,
        "-m",
        "watchcache",
        "serve",
        "--kubeconfig",
        str(controlplane.kubeconfig),
        "--port",
        str(port),
        "--log-level",
        "DEBUG",
        "--tls-cert-file",
        str(certs.cert_file),
        "--tls-private-key-file",
        str(certs.key_file),
        "--authentication",
        "x509",
        "--client-ca-file",
        str(controlplane.client_ca_file),
        "--authentication",
        "token-file",
        "--token-auth-file",
        str(controlplane.workdir / "tokens.csv"),
        "--authentication",
        "kubernetes",
        "--authorization",
        "kubernetes",
    ]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    proxy = Proxy(f"https://127.0.0.1:{port}", proc, log_path)
    tls = TLSProxy(proxy, certs, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"watchcache exited with {proc.returncode}:\n{proxy.log()}")
            try:
                if tls.side().send("GET", "/readyz").code == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"watchcache (TLS) not ready:\n{proxy.log()}")
            time.sleep(0.1)
        yield tls
    finally:
        stop_proxy(proxy)


def test_tls_the_python_client_lists_rayclusters(
    tls_proxy: TLSProxy, objects: dict[str, Any]
) -> None:
    import kubernetes  # type: ignore[import-untyped]

    config = kubernetes.client.Configuration()
    config.host = f"https://127.0.0.1:{tls_proxy.port}"
    config.ssl_ca_cert = str(tls_proxy.certs.ca_file)
    config.api_key = {"authorization": f"Bearer {objects['admin'].token}"}
    with kubernetes.client.ApiClient(config) as api:
        got = kubernetes.client.CustomObjectsApi(api).list_cluster_custom_object(
            "ray.io", "v1", "rayclusters"
        )
    names = {i["metadata"]["name"] for i in got["items"]}
    assert {*CLUSTERS[A], *CLUSTERS[B]} <= names


def kubectl_over_tls(
    cp: ControlPlane, tls_proxy: TLSProxy, user: dict[str, str], tmp: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """kubectl against the TLS proxy, trusting its CA, as ``user`` (a token or a client
    certificate)."""
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "wc",
                        "cluster": {
                            "server": f"https://127.0.0.1:{tls_proxy.port}",
                            "certificate-authority": str(tls_proxy.certs.ca_file),
                        },
                    }
                ],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "wc", "context": {"cluster": "wc", "user": "u"}}],
                "current-context": "wc",
            }
        )
    )
    cache = ["--cache-dir", str(tmp / "cache")]
    return subprocess.run(
        [str(cp.kubectl), "--kubeconfig", str(kubeconfig), *args, *cache],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tls_kubectl_gets_rayclusters(
    controlplane: ControlPlane, tls_proxy: TLSProxy, objects: dict[str, Any], tmp_path: Path
) -> None:
    token = {"token": objects["admin"].token}
    proc = kubectl_over_tls(
        controlplane, tls_proxy, token, tmp_path, "get", "rayclusters", "-A", "-o", "name"
    )
    assert proc.returncode == 0, proc.stderr
    names = {line.split("/", 1)[1] for line in proc.stdout.split()}
    assert {*CLUSTERS[A], *CLUSTERS[B]} <= names, proc.stdout


def test_tls_kubectl_with_a_client_certificate(
    controlplane: ControlPlane, tls_proxy: TLSProxy, x509_users: dict[str, Any], tmp_path: Path
) -> None:
    """kubectl's own TLS client with a certificate in its kubeconfig: x509 authentication."""
    cert = x509_users["user"]  # may view team-b alone
    user = {"client-certificate": str(cert.cert), "client-key": str(cert.key)}
    get = ("get", "rayclusters", "-o", "name", "-n")
    proc = kubectl_over_tls(controlplane, tls_proxy, user, tmp_path, *get, B)
    assert proc.returncode == 0, proc.stderr
    assert {line.split("/", 1)[1] for line in proc.stdout.split()} == set(CLUSTERS[B])
    refused = kubectl_over_tls(controlplane, tls_proxy, user, tmp_path, *get, A)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr


def test_tls_curl(tls_proxy: TLSProxy, objects: dict[str, Any]) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is missing (make test installs it)"
    proc = subprocess.run(
        [
            curl,
            "-sS",
            "--cacert",
            str(tls_proxy.certs.ca_file),
            "-H",
            f"Authorization: Bearer {objects['viewer-a'].token}",
            f"https://127.0.0.1:{tls_proxy.port}{RAY}/namespaces/{A}/rayclusters",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(i["metadata"]["name"] for i in json.loads(proc.stdout)["items"]) == sorted(
        CLUSTERS[A]
    )


def test_tls_plain_http_gets_gos_400(controlplane: ControlPlane, tls_proxy: TLSProxy) -> None:
    request = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    kube = _raw_http(controlplane.port, request)
    ours = _raw_http(tls_proxy.port, request)
    assert kube.startswith(b"HTTP/1.0 400 Bad Request\r\n"), kube
    assert ours.split(b"\r\n", 1)[0].split(b" ", 2)[1] == b"400", ours
    assert ours.partition(b"\r\n\r\n")[2] == kube.partition(b"\r\n\r\n")[2], (kube, ours)
    assert b"Client sent an HTTP request to an HTTPS server." in ours


@pytest.fixture(scope="module")
def x509_users(controlplane: ControlPlane, objects: dict[str, Any]) -> dict[str, Any]:
    """A user and a group (of certificates) that alone may read configmaps in team-b."""
    cp = controlplane
    cp.bind("view", {"kind": "User", "name": "wc-sec-x509-user"}, B, name="wc-sec-x509-user")
    cp.bind("view", {"kind": "Group", "name": "wc-sec-x509-group"}, A, name="wc-sec-x509-group")
    certs = {
        "user": cp.issue_client_cert("wc-sec-x509-user"),
        "member": cp.issue_client_cert("wc-sec-x509-other", ["wc-sec-x509-group"]),
        "stranger": cp.issue_client_cert("wc-sec-x509-stranger", ["g"]),
        "other-ca": cp.issue_client_cert("wc-sec-x509-user", other_ca=True),
    }
    kube = kube_side(cp, certs["member"])
    wait_until(
        lambda: kube.send("GET", f"/api/v1/namespaces/{A}/configmaps").code == 200,
        what="the group binding",
    )
    return certs


@pytest.mark.parametrize("who", ["user", "member", "stranger"])
def test_x509_a_certificate_is_its_cn_and_o(
    controlplane: ControlPlane, tls_proxy: TLSProxy, x509_users: dict[str, Any], who: str
) -> None:
    cert = x509_users[who]
    kube, wc = kube_side(controlplane, cert), tls_proxy.side(cert)
    problems = []
    for path in (  # view (aggregated) includes Ray resources; configmaps are not served here
        f"{RAY}/namespaces/{A}/rayclusters",
        f"{RAY}/namespaces/{B}/rayclusters",
        f"{RAY}/rayclusters",
    ):
        k, w = kube.send("GET", path), wc.send("GET", path)
        if k.code != w.code or (k.code == 403 and _status(k) != _status(w)):
            problems.append(f"{who} GET {path}: kube {k.brief()}, watchcache {w.brief()}")
    assert problems == [], "\n".join(problems)
    allowed = {"user": B, "member": A, "stranger": None}[who]
    for ns in (A, B):
        assert (wc.send("GET", f"{RAY}/namespaces/{ns}/rayclusters").code == 200) == (ns == allowed)


def test_x509_a_certificate_of_another_ca_is_kube_apiservers_401(
    controlplane: ControlPlane, tls_proxy: TLSProxy, x509_users: dict[str, Any]
) -> None:
    """Its subject is a user with rights in team-b; signed by another CA it is a bad
    credential: the same 401 Status as kube-apiserver's, after a completed handshake."""
    cert = x509_users["other-ca"]
    path = f"{RAY}/namespaces/{B}/rayclusters"
    kube, got = (
        kube_side(controlplane, cert).send("GET", path),
        tls_proxy.side(cert).send("GET", path),
    )
    assert kube.code == got.code == 401, (kube.brief(), got.brief())
    assert _status(got) == _status(kube)


def test_token_file_users_through_tls(tls_proxy: TLSProxy, objects: dict[str, Any]) -> None:
    """The token-file mode: a static user mapped to a group reads every namespace."""
    wc = tls_proxy.side()
    assert wc.send("GET", f"{RAY}/rayclusters", token=objects["group-viewer"].token).code == 200
    refused = wc.send("GET", f"{RAY}/rayclusters", token=objects["nobody"].token)
    assert refused.code == 403 and "example-nobody" in refused.body["message"]
    sa = wc.send("GET", f"{RAY}/namespaces/{A}/rayclusters", token=objects["sa-editor-a"].token)
    assert sa.code == 200  # not in the file: TokenReview


# ---- 6. the audit log, metrics, and no token anywhere -------------------------------------

AUDIT_FIELDS = {
    "time",
    "user",
    "groups",
    "verb",
    "resource",
    "namespace",
    "name",
    "code",
    "latency_ms",
    "source",
    "cached",
}


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_audit_log_has_one_line_per_request(world: World) -> None:
    wc = proxy_side(world.proxy)
    probe = f"wc-sec-probe-{secrets.token_hex(4)}"
    secret_marker = f"body-secret-{secrets.token_hex(8)}"
    viewer, editor = world.users["viewer-a"], world.users["editor-b"]
    sent = [
        ("GET", f"{RAY}/namespaces/{A}/rayclusters/{probe}", None, viewer.token, 404),
        ("GET", f"{RAY}/namespaces/{B}/rayclusters/{probe}", None, viewer.token, 403),
        (
            "GET",
            f"{RAY}/namespaces/{A}/rayclusters/{probe}",
            None,
            "bad-" + secrets.token_hex(8),
            401,
        ),
        ("GET", f"{RAY}/namespaces/{A}/rayclusters/{probe}", None, None, 403),
    ]
    body = cluster(probe)
    body["metadata"]["annotations"] = {"note": secret_marker}
    sent.append(
        ("POST", f"{RAY}/namespaces/{B}/rayclusters?dryRun=All", _json(body), editor.token, 201)
    )
    for method, path, data, token, code in sent:
        if token:
            world.tokens.append(token)
        got = wc.send(method, path, data, token=token)
        assert got.code == code, (method, path, got.brief())

    def lines() -> list[dict[str, Any]]:
        return [
            e
            for e in _audit_lines(world.audit_log)
            if e.get("name") == probe
            or probe in str(e.get("path"))
            or (
                e.get("verb") == "create"
                and e.get("user") == editor.name
                and e.get("code") == 201
                and e.get("namespace") == B
            )
        ]

    found = wait_until(lambda: len(lines()) >= len(sent) and lines(), what="the audit lines")
    probes = [e for e in found if e.get("name") == probe or probe in str(e.get("path"))]
    assert len(probes) == 4, found
    refused = [e for e in probes if e["code"] == 401]
    assert len(refused) == 1 and refused[0]["user"] is None, found
    for entry in found:
        if entry["code"] != 401:  # see test_the_audit_line_of_a_401_names_the_resource
            assert set(entry) >= AUDIT_FIELDS, entry
        assert entry["source"].startswith("127.0.0.1"), entry
        assert isinstance(entry["cached"], bool) and isinstance(entry["latency_ms"], (int, float))
    by_code = {e["code"]: e for e in probes}
    assert set(by_code) == {404, 403, 401}, found
    assert by_code[404]["user"] == viewer.name and by_code[404]["verb"] == "get"
    assert by_code[404]["resource"] == "rayclusters" and by_code[404]["namespace"] == A
    anonymous = [e for e in found if e["code"] == 403 and e["namespace"] == A]
    assert anonymous and anonymous[0]["user"] == "system:anonymous"
    assert "system:unauthenticated" in anonymous[0]["groups"]
    text = world.audit_log.read_text()
    assert secret_marker not in text
    assert _no_token_in(text, world.tokens) == []


def test_the_audit_line_of_a_401_names_the_resource(world: World) -> None:
    """The issue's fields are on every line, a refused credential's included: the request's
    resource, namespace and name are known from its URL before anyone is authenticated."""
    probe = f"wc-sec-probe401-{secrets.token_hex(4)}"
    token = "bad-" + secrets.token_hex(8)
    world.tokens.append(token)
    path = f"{RAY}/namespaces/{A}/rayclusters/{probe}"
    assert proxy_side(world.proxy).send("GET", path, token=token).code == 401
    found = wait_until(
        lambda: [e for e in _audit_lines(world.audit_log) if probe in json.dumps(e)],
        what="the audit line",
    )
    assert len(found) == 1 and set(found[0]) >= AUDIT_FIELDS, found
    assert (found[0]["resource"], found[0]["namespace"], found[0]["name"]) == (
        "rayclusters",
        A,
        probe,
    )


def test_metrics_count_reviews_and_cache_hits(world: World) -> None:
    wc, admin = proxy_side(world.proxy), world.users["admin"].token
    got = wc.send("GET", "/metrics", token=admin, accept="text/plain")
    assert got.code == 200
    text = got.raw.decode()
    for name in (
        "watchcache_authentication_upstream_reviews_total",
        "watchcache_authentication_cache_hits_total",
        "watchcache_authorization_upstream_reviews_total",
        "watchcache_authorization_cache_hits_total",
    ):
        assert name in text, name
    assert wc.send("GET", "/metrics", token=None).code == 403


def test_no_token_in_the_proxys_log(
    world: World, bad_tokens: dict[str, str]
) -> None:  # runs after the tests above (file order)
    assert _no_token_in(world.proxy.log(), world.tokens) == []
