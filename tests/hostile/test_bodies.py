"""Hostile request bodies and numbers (issue 11): each is sent to watchcache on the real
control plane and, where it means anything, to kube-apiserver itself; both must end it alike
(same code, same Status reason). After each, watchcache still answers, holds its memory
budget and has logged no traceback.

Every Ray create passes the compute-template middleware, which decodes its body; the second
server also has a defaults file, so its middleware re-encode every body it decodes.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from support.controlplane import ControlPlane

from .conftest import assert_healthy

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-hostile-bodies"
RAY = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
JSON, YAML = "application/json", "application/yaml"
IMAGE = "rayproject/ray:2.46.0"
TEMPLATE = "hostile-small"
HUGE = "1" * 5000  # past Python's 4,300-digit limit for int()
MiB = 1024 * 1024


@dataclass
class Env:
    cp: ControlPlane
    proxy: Proxy  # the compute-template middleware decodes every Ray create
    defaults: Proxy  # ... and a defaults file makes every body re-encoded too


@pytest.fixture(scope="module")
def env(
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    code, body = controlplane.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
    )
    assert code in (201, 409), body
    defaults_file = tmp_path_factory.mktemp("hostile") / "defaults.yaml"
    defaults_file.write_text(f"image: {IMAGE}\n")
    env = Env(controlplane, proxy_factory(), proxy_factory("--defaults", str(defaults_file)))
    template = {"name": TEMPLATE, "namespace": NS, "cpu": 1, "memory": 1}
    code, made = env.proxy.json("POST", f"/apis/v1/namespaces/{NS}/compute_templates", template)
    assert code == 200, made
    for proxy in (env.proxy, env.defaults):
        deadline = time.monotonic() + 30
        path = f"/apis/v1/namespaces/{NS}/compute_templates/{TEMPLATE}"
        while proxy.request("GET", path)[0] != 200:
            assert time.monotonic() < deadline, "the template never reached the cache"
            time.sleep(0.1)
    yield env


# ---- bodies -------------------------------------------------------------------------------


def cluster(name: str, spec_extra: str = "", template: bool = False, anchor: str = "") -> bytes:
    """A RayCluster in YAML, its head naming the compute template if ``template``.
    ``spec_extra`` lines go under spec (fields the CRD schema does not know, like
    ``computeTemplate``, are pruned by kube-apiserver, so they may hold anything)."""
    head_extra = f"    computeTemplate: {TEMPLATE}\n" if template else ""
    return (
        "apiVersion: ray.io/v1\nkind: RayCluster\n"
        f"metadata: {{name: {name}}}\nspec:\n  headGroupSpec:\n    rayStartParams: {{}}\n"
        f"{head_extra}    template: {anchor}\n      spec:\n"
        f"        containers: [{{name: ray-head, image: {IMAGE}}}]\n{spec_extra}"
    ).encode()


def cluster_json(name: str, deep: str | bytes, template: bool = False) -> bytes:
    """A RayCluster in JSON with ``deep`` (raw JSON) as the value of an unknown field."""
    head = '"rayStartParams": {}, "template": {"spec": {"containers": [{"name": "ray-head"}]}}'
    if template:
        head += f', "computeTemplate": "{TEMPLATE}"'
    meta = f'"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {{"name": "{name}"}}'
    raw = deep.encode() if isinstance(deep, str) else deep
    return f'{{{meta}, "spec": {{"headGroupSpec": {{{head}}}, "deep": '.encode() + raw + b"}}"


def bomb(levels: int = 10) -> str:
    """Anchors nested ``levels`` deep, each listing the previous ten times: 10**levels."""
    lines = ["  l0: &l0 [lol,lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    lines += [f"  l{n}: &l{n} [" + ",".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested_yaml(depth: int) -> str:
    return "  deep: " + "[" * depth + "]" * depth + "\n"


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# Each: a name, a body maker (given the object's name and whether its head names the compute
# template, so that the template middleware reads it) and its content type. kube-apiserver
# v1.36 accepts or refuses each one as noted; watchcache must do the same.
Maker = Callable[[str, bool], bytes]
CASES: list[tuple[str, Maker, str]] = [
    # 400 "yaml: document contains excessive aliasing"; 458 bytes that expand to 10**10 nodes
    ("alias-bomb", lambda n, t: cluster(n, bomb(), t), YAML),
    # go-yaml's ratio rule at its edge: three levels of ten (~97 % aliased) pass, four do not
    ("alias-bomb-3-levels", lambda n, t: cluster(n, bomb(3), t), YAML),
    ("alias-bomb-4-levels", lambda n, t: cluster(n, bomb(4), t), YAML),
    # 201: aliases of modest use are fine, even many of them
    ("500-aliases", lambda n, t: cluster(n, "  deep: [&m {a: 1}" + ", *m" * 500 + "]\n", t), YAML),
    (
        "few-aliases",
        lambda n, t: cluster(n, "  deep: [&x {a: [1, 2]}, *x, *x]\n", t, anchor="&head"),
        YAML,
    ),
    # 201: nesting kube-apiserver accepts, past orjson's 1,024 and Python's recursion
    ("yaml-1000-deep", lambda n, t: cluster(n, nested_yaml(1000), t), YAML),
    ("json-1500-deep", lambda n, t: cluster_json(n, nested_json(1500), t), JSON),
    ("json-9990-deep", lambda n, t: cluster_json(n, nested_json(9990), t), JSON),
    # 400: past 10,000 levels (its YAML scanner, then its JSON decoder)
    ("yaml-10001-deep", lambda n, t: cluster(n, nested_yaml(10_001), t), YAML),
    ("json-10001-deep", lambda n, t: cluster_json(n, nested_json(10_001), t), JSON),
    # 201: Go replaces invalid UTF-8 and lone surrogates with U+FFFD
    ("json-invalid-utf8", lambda n, t: cluster_json(n, b'"\xff\xfe"', t), JSON),
    ("json-lone-surrogate", lambda n, t: cluster_json(n, '"\\ud800"', t), JSON),
    # 400: a number out of float64 range; 201: a YAML integer that long is text to go-yaml
    ("json-5000-digits", lambda n, t: cluster_json(n, HUGE, t), JSON),
    ("yaml-5000-digits", lambda n, t: cluster(n, f"  deep: {HUGE}\n", t), YAML),
    # 201: aliases expanding past 3 MiB into a pruned field: nothing is re-encoded
    (
        "yaml-4MiB-expansion",
        lambda n, t: cluster(n, f"  deep: [&s {'x' * MiB}, *s, *s, *s]\n", t),
        YAML,
    ),
    # 400 and 201: an undefined alias; a second document (only the first is read)
    ("yaml-unknown-alias", lambda n, t: cluster(n, "  deep: *nowhere\n", t), YAML),
    ("yaml-two-documents", lambda n, t: cluster(n, template=t) + b"---\nkind: Other\n", YAML),
]


def outcome(code: int, raw: bytes) -> tuple[int, str | None]:
    """The status code, and the Status reason if the answer is a Status."""
    try:
        body = json.loads(raw)
    except ValueError:
        return code, None
    return code, body.get("reason") if isinstance(body, dict) and body.get(
        "kind"
    ) == "Status" else None


def via_proxy(proxy: Proxy, body: bytes, content_type: str) -> tuple[int, str | None]:
    code, _, raw = proxy.request("POST", RAY, body, {"Content-Type": content_type})
    return outcome(code, raw)


def via_kube(cp: ControlPlane, body: bytes, content_type: str) -> tuple[int, str | None]:
    return outcome(*cp.request("POST", RAY, body, content_type=content_type))


@pytest.mark.parametrize(("case", "make", "content_type"), CASES, ids=[c[0] for c in CASES])
def test_hostile_body_is_answered_as_kube_answers_it(
    env: Env, case: str, make: Maker, content_type: str
) -> None:
    """Through the template middleware: the head names a template (kube-apiserver prunes
    the field), except where the expansion must stay unwritten (see the 413 test)."""
    template = case != "yaml-4MiB-expansion"
    kube = via_kube(env.cp, make(f"{case}-k", template), content_type)
    assert via_proxy(env.proxy, make(f"{case}-p", template), content_type) == kube
    assert_healthy(env.proxy)


RE_ENCODED = [c for c in CASES if c[0] != "yaml-4MiB-expansion"]


@pytest.mark.parametrize(
    ("case", "make", "content_type"), RE_ENCODED, ids=[c[0] for c in RE_ENCODED]
)
def test_hostile_body_is_answered_as_kube_answers_it_when_re_encoded(
    env: Env, case: str, make: Maker, content_type: str
) -> None:
    kube = via_kube(env.cp, make(f"{case}-dk", False), content_type)
    assert via_proxy(env.defaults, make(f"{case}-dp", False), content_type) == kube
    assert_healthy(env.defaults)


def test_an_expansion_past_3MiB_that_must_be_re_encoded_is_413_as_kube_answers_its_size(
    env: Env,
) -> None:
    """With a computeTemplate the body is rewritten; the 4 MiB it expands to is what would
    be sent, and kube-apiserver refuses a body that size."""
    spec = f"  deep: [&s {'x' * MiB}, *s, *s, *s]\n"
    got = via_proxy(env.proxy, cluster("expansion-413", spec, True), YAML)
    assert got == (413, "RequestEntityTooLarge")
    expanded = cluster_json("expansion-413-k", json.dumps(["x" * MiB] * 4))
    assert kube_post_while_reading(env.cp, expanded) == got
    assert via_proxy(env.defaults, cluster("expansion-413-d", spec), YAML) == got
    assert_healthy(env.proxy)
    assert_healthy(env.defaults)


def kube_post_while_reading(cp: ControlPlane, body: bytes) -> tuple[int, str | None]:
    """POSTs a large body to kube-apiserver while reading its answer: it answers 413 and
    closes before the body is all sent, which breaks a client that only sends first. Its
    close can also reset the connection before the answer is read (the kernel drops what
    it had received): then the POST is tried again, at most three times."""
    for _ in range(3):
        data = _kube_post_once(cp, body)
        if data:
            break
    assert data, "kube-apiserver's answer was lost three times"
    status_line, _, rest = data.partition(b"\r\n")
    return outcome(int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2])


def _kube_post_once(cp: ControlPlane, body: bytes) -> bytes:
    head = (
        f"POST {RAY} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {cp.admin.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", cp.port))
    with cp.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.settimeout(30)

        def send() -> None:
            with contextlib.suppress(OSError):
                tls.sendall(head + body)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data or not _whole(data):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    return data


def _whole(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def stored(env: Env, name: str) -> dict[str, Any]:
    code, raw = env.cp.request("GET", f"{RAY}/{name}")
    assert code == 200, raw
    return json.loads(raw)


def test_a_template_applies_to_a_deep_body_which_is_re_encoded_whole(env: Env) -> None:
    for proxy, name in ((env.proxy, "deep-template"), (env.defaults, "deep-template-d")):
        code, _, raw = proxy.request(
            "POST",
            RAY,
            cluster_json(name, nested_json(3000), template=True),
            {"Content-Type": JSON},
        )
        assert code == 201, raw
        head = stored(env, name)["spec"]["headGroupSpec"]
        assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"
        assert_healthy(proxy)


def test_an_aliased_group_template_is_copied_so_the_template_changes_only_its_own_group(
    env: Env,
) -> None:
    """The worker's pod template is an alias of the head's; the head's compute template
    must not reach the worker through the shared node."""
    worker = (
        "  workerGroupSpecs:\n  - {groupName: w, replicas: 1, minReplicas: 0, maxReplicas: 1,"
        " rayStartParams: {}, template: *head}\n"
    )
    body = cluster("aliased-groups", worker, True, anchor="&head")
    code, _, raw = env.proxy.request("POST", RAY, body, {"Content-Type": YAML})
    assert code == 201, raw
    spec = stored(env, "aliased-groups")["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker_container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"]["cpu"] == "1"
    assert "resources" not in worker_container
    assert_healthy(env.proxy)


# ---- numbers in the query and in Content-Length -------------------------------------------

QUERIES = [
    f"labelSelector=x>{HUGE}",
    f"labelSelector=x<{HUGE}",
    f"limit={HUGE}",
    f"limit=-{HUGE}",
    f"resourceVersion={HUGE}",
    f"timeoutSeconds={HUGE}",
    f"watch=1&timeoutSeconds={HUGE}",
    f"watch=1&resourceVersion={HUGE}",  # kube-apiserver: a bare 500, matched
]


@pytest.mark.parametrize("query", QUERIES, ids=[q.replace(HUGE, "HUGE") for q in QUERIES])
def test_a_five_thousand_digit_number_in_the_query_is_answered_as_kube_answers_it(
    env: Env, query: str
) -> None:
    kube = outcome(*env.cp.request("GET", f"{RAY}?{query}"))
    code, _, raw = env.proxy.request("GET", f"{RAY}?{query}")
    assert outcome(code, raw) == kube
    assert kube[0] in (400, 500)
    assert_healthy(env.proxy)


def test_a_five_thousand_digit_resource_version_on_get_is_answered_as_kube_answers_it(
    env: Env,
) -> None:
    path = f"{RAY}/anything?resourceVersion={HUGE}"
    kube = outcome(*env.cp.request("GET", path))
    code, _, raw = env.proxy.request("GET", path)
    assert outcome(code, raw) == kube
    assert_healthy(env.proxy)


def raw_exchange(sock: socket.socket, request: bytes) -> bytes:
    """Sends ``request`` and reads until the server closes (bounded by the socket timeout)."""
    sock.settimeout(10)
    sock.sendall(request)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def post_with_length(length: str, token: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {RAY} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n{{}}"
    ).encode()


LENGTHS = [HUGE, "abc", "-1", "+2", "99999999999999999999", "2, 2"]


@pytest.mark.parametrize("length", LENGTHS, ids=["5000-digits", "abc", "-1", "+2", "2^66", "2,2"])
def test_a_bad_content_length_is_a_400_status_and_the_connection_closes(
    env: Env, length: str
) -> None:
    """Go's server answers 400 (plain text) and closes; watchcache answers 400 with a
    Status, then closes too."""
    cp = env.cp
    with cp.ssl_context().wrap_socket(
        socket.create_connection(("127.0.0.1", cp.port)), server_hostname="127.0.0.1"
    ) as tls:
        kube = raw_exchange(tls, post_with_length(length, cp.admin.token))
    assert kube.startswith(b"HTTP/1.1 400 "), kube[:200]
    url = urlsplit(env.proxy.base)
    with socket.create_connection((url.hostname, url.port)) as sock:
        got = raw_exchange(sock, post_with_length(length))
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), got[:300]
    status = json.loads(body)  # one answer, nothing after it: the connection closed
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "BadRequest", 400)
    assert_healthy(env.proxy)


def test_a_compute_template_nested_5000_deep_is_refused_not_a_crash(env: Env) -> None:
    """KubeRay's own protocol (its errors are KubeRay's, not a Status), but no 500."""
    body = (
        f'{{"name": "hostile-deep", "namespace": "{NS}", "cpu": 1, "memory": 1, '
        f'"tolerations": {nested_json(5000)}}}'
    ).encode()
    path = f"/apis/v1/namespaces/{NS}/compute_templates"
    code, _, raw = env.proxy.request("POST", path, body, {"Content-Type": JSON})
    assert 400 <= code < 500, raw[:300]
    assert_healthy(env.proxy)
