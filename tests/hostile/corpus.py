"""A seeded corpus of hostile requests: label and field selectors, malformed paths, queries,
headers and bodies, each to be sent to watchcache and to kube-apiserver alike.

Deterministic: ``generate(seed, ...)`` gives the same cases for the same arguments (one
``random.Random(seed)``, no other source of chance). Targets are raw request-targets, sent
byte for byte: some are percent-encoded on purpose wrongly. Writes carry ``dryRun=All``, so
that neither side changes what the other then reads.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from watchcache.kube.gourl import parse_query

API = "/apis/ray.io/v1"
PLURALS = ("rayclusters", "rayjobs", "rayservices")
KINDS = {"rayclusters": "RayCluster", "rayjobs": "RayJob", "rayservices": "RayService"}


@dataclass(frozen=True, slots=True)
class Case:
    """One request. ``family``: what it probes (selector, field, path, query, header, body)."""

    family: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def may_stream(self) -> bool:
        """A request the server may answer with a stream that stays open (a watch): only its
        head is read. A watch with a negative timeoutSeconds ends at once and is read whole."""
        if self.method != "GET" or "timeoutSeconds=-" in self.query:
            return False
        watch = parse_query(self.query).get("watch")
        return "/watch/" in self.path or (bool(watch) and watch[0].lower() not in ("0", "false"))


def q(text: str, safe: str = "") -> str:
    return urllib.parse.quote(text, safe=safe)


# ---- label selectors ------------------------------------------------------------------------

GOOD_KEYS = (
    "team", "env", "tier", "ray.io/priority", "app.kubernetes.io/managed-by", "a", "x-y_z.w",
    "example.com/k", "k" * 63, "A.B/c", "ray.io/node-type", "9lives",
)  # fmt: skip
BAD_KEYS = (
    "", "-a", "a-", "_a", "a/b/c", "/a", "a/", "UP_/x", "k" * 64, "p" * 254 + "/k", "a b",
    "a!b", "ä", "a=b", "(a)", "a.", ".a", "a//b", "a:b", "*", "a\\b",
)  # fmt: skip
GOOD_VALUES = ("", "ml", "prod", "1", "gold", "a.b-c_d", "v" * 63, "10", "helm", "Z9")
BAD_VALUES = ("v" * 64, "-x", "x-", "a b", "ä", "a/b", "*", "%", "x=y", "()", "a,b", "_x")
NUMBERS = ("1", "-1", "+1", "0", "1.5", "0x1", "1" * 30, "", "1e3", "2", "abc", "9" * 19)
LABEL_MALFORMED = (
    "key in v", "key in (v", "key notin", "in (a)", "=v", "key=", "key==", "key!=", "key===v",
    "key=!v", "!key=v", "!!key", "key >", "key>>1", "key<=1", "key=(v)", "key in (a b)", ",",
    "key,", ",key", "key,,key2", "key in ()", "key notin ()", "key in (a,,b)", "key in (,)",
    "!", "key!", "key in(a)", "keyin (a)", "key notin(a)", "key exists", "key=a b", "key = a",
    "key\t=\ta", "(key=a)", "key in (a)(b)", "key=a,", "key in (a),", "key gt 1", "key>",
    "key<", ">1", "<1", "key>1,key<5", "key!=a,!key", "key in ((a))", "key in (a) notin (b)",
)  # fmt: skip


def _key(rng: random.Random) -> str:
    return rng.choice(GOOD_KEYS if rng.random() < 0.8 else BAD_KEYS)


def _value(rng: random.Random) -> str:
    return rng.choice(GOOD_VALUES if rng.random() < 0.8 else BAD_VALUES)


def _space(rng: random.Random) -> str:
    return rng.choice(("", "", "", " ", "  ", "\t"))


def label_requirement(rng: random.Random) -> str:
    key, s = _key(rng), _space
    form = rng.randrange(10)
    if form == 0:
        return key
    if form == 1:
        return f"!{s(rng)}{key}"
    if form in (2, 3):
        op = rng.choice(("=", "==", "!="))
        return f"{key}{s(rng)}{op}{s(rng)}{_value(rng)}"
    if form in (4, 5):
        op = rng.choice(("in", "notin"))
        values = ",".join(f"{s(rng)}{_value(rng)}{s(rng)}" for _ in range(rng.randrange(4)))
        return f"{key} {op}{s(rng)}({values})"
    if form in (6, 7):
        return f"{key}{s(rng)}{rng.choice('<>')}{s(rng)}{rng.choice(NUMBERS)}"
    return rng.choice(LABEL_MALFORMED).replace("key", key or "k")


def label_selector(rng: random.Random) -> str:
    parts = [label_requirement(rng) for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4)))]
    return ("," + _space(rng)).join(parts)


# ---- field selectors ------------------------------------------------------------------------

FIELDS = ("metadata.name", "metadata.namespace")
OTHER_FIELDS = (
    "status.state", "spec.suspend", "metadata.labels", "", "metadata.name.x", "Metadata.name",
    "a b", "metadata.uid", "kind", "status.jobStatus",
)  # fmt: skip
FIELD_VALUES = (
    "x", "", "a\\,b", "a\\=b", "a\\\\b", "a\\x", "tail\\", "ä", "n" * 300, "a=b", "a!b",
    "default", "a,b", "a b", "(x)",
)  # fmt: skip
FIELD_MALFORMED = (
    "metadata.name", "=x", "==x", "!=x", "metadata.name=a=b", "metadata.name!x", ",", "a=b,",
    ",a=b", "metadata.name==", "metadata.name in (a)", "!metadata.name", "metadata.name=a,,b=c",
    "metadata.name=\\", "metadata.name===a", "metadata.name=!a",
)  # fmt: skip


def field_selector(rng: random.Random, names: Sequence[str], namespaces: Sequence[str]) -> str:
    terms = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        roll = rng.random()
        if roll < 0.12:
            terms.append(rng.choice(FIELD_MALFORMED))
            continue
        field = rng.choice(FIELDS) if roll < 0.85 else rng.choice(OTHER_FIELDS)
        op = rng.choice(("=", "==", "!="))
        pool = names if field == "metadata.name" else namespaces
        value = rng.choice(pool) if rng.random() < 0.6 else rng.choice(FIELD_VALUES)
        terms.append(f"{field}{op}{value}")
    return ",".join(terms)


# ---- the collections a selector is sent to --------------------------------------------------


def _collection(rng: random.Random, namespaces: Sequence[str]) -> str:
    plural = rng.choice(PLURALS)
    if rng.random() < 0.25:
        return f"{API}/{plural}"
    return f"{API}/namespaces/{rng.choice(namespaces)}/{plural}"


def _encode(rng: random.Random, text: str) -> str:
    """Mostly as a client encodes it; sometimes with its operators and '+' left bare."""
    return q(text) if rng.random() < 0.85 else q(text, safe="=,!()<>+")


def _extra(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.06:
        return "&limit=2"
    if roll < 0.08:
        return "&resourceVersion=0"
    if roll < 0.1:
        return "&watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan"
    return ""


def selector_cases(
    rng: random.Random, n_label: int, n_field: int, names: Sequence[str], ns: Sequence[str]
) -> list[Case]:
    out = []
    for _ in range(n_label):
        sel = _encode(rng, label_selector(rng))
        target = f"{_collection(rng, ns)}?labelSelector={sel}{_extra(rng)}"
        out.append(Case("selector", "GET", target))
    for _ in range(n_field):
        sel = _encode(rng, field_selector(rng, names, ns))
        target = f"{_collection(rng, ns)}?fieldSelector={sel}{_extra(rng)}"
        out.append(Case("field", "GET", target))
    return out


# ---- paths ----------------------------------------------------------------------------------

NAME_FORMS = (
    ".", "..", "%2E", "%2e%2E", "a%25b", "%25", "a%2Fb", "{name}%2Fstatus", "{name}%2fstatus",
    "%zz", "a%4", "%", "%C3%28", "%00", "a+b", "%E2%9C%93", "n" * 300, "UPPER", "a..b", "...",
    "{name}/", "{name}//status", "{name}/status/", "{name}/status/x", "{name}/scale",
    "{name}/b", "{name}/%73tatus", "{name}/..", "{name}/.", "a%20b", "-x", "{name}%00",
    "a%0Ab", "{name}%0A", "%0A",
)  # fmt: skip
NAMESPACE_FORMS = (
    ".", "..", "%2E", "Bad_NS", "a%25b", "%25", "n" * 64, "UPPER", "%zz", "a%2Fb", "%C3%28",
    "kube-system", "-x", "{ns}", "{ns}%0A", "%0A",
)  # fmt: skip
OTHER_PATHS = (
    f"{API}/namespaces/{{ns}}/{{plural}}/", f"{API}/namespaces/{{ns}}/{{plural}}//",
    f"{API}/namespaces//{{plural}}", f"{API}/namespaces/{{ns}}//{{plural}}",
    f"//{API[1:]}/{{plural}}", f"{API}/%6Eamespaces/{{ns}}/{{plural}}",
    f"{API}/namespaces%2F{{ns}}%2F{{plural}}", f"{API}/namespaces/{{ns}}/{{plural}}%2F{{name}}",
    f"{API}/watch/{{plural}}", f"{API}/watch/namespaces/{{ns}}/{{plural}}",
    f"{API}/namespaces/{{ns}}/RayClusters", f"{API}/namespaces/{{ns}}/raycluster",
    f"{API}/{{plural}}/{{name}}", f"{API}/namespaces/{{ns}}", f"{API}/namespaces",
    "/apis/ray.io/v2/{plural}", "/apis/ray.io/V1/{plural}", "/apis/ray.io", "/apis/ray.io/",
    "/apis/RAY.io/v1/{plural}", f"{API}/%zz", f"{API}/{{plural}}%zz", "/api/v1/namespaces/{ns}",
    "/apis/%72ay.io/v1/{plural}", f"{API}/namespaces/{{ns}}/{{plural}}/{{name}}/status%2F",
    "/healthz/x", "/version/", "/openapi/v3/apis/ray.io/v1/", "/openapi/v3/nothing",
    "/apis/nothing.io/v1/things", "/api", "/api/", "/apis", "/apis/", "/nothing", "/",
)  # fmt: skip


def path_cases(rng: random.Random, names: Sequence[str], namespaces: Sequence[str]) -> list[Case]:
    out = []
    for plural in PLURALS:
        for form in NAME_FORMS:
            name = form.replace("{name}", rng.choice(names))
            ns = rng.choice(namespaces)
            out.append(Case("path", "GET", f"{API}/namespaces/{ns}/{plural}/{name}"))
            if rng.random() < 0.3:
                out.append(Case("path", "GET", f"{API}/namespaces/{ns}/{plural}/{name}/status"))
        for form in NAMESPACE_FORMS:
            ns = form.replace("{ns}", rng.choice(namespaces))
            out.append(Case("path", "GET", f"{API}/namespaces/{ns}/{plural}"))
            out.append(Case("path", "GET", f"{API}/namespaces/{ns}/{plural}/{rng.choice(names)}"))
            out.append(Case("path", "GET", f"{API}/namespaces/{ns}/{plural}?resourceVersion=0"))
            if rng.random() < 0.3:
                out.append(Case("path", "GET", f"{API}/namespaces/{ns}/{plural}?watch=1"))
        for form in OTHER_PATHS:
            target = form.format(ns=rng.choice(namespaces), plural=plural, name=rng.choice(names))
            out.append(Case("path", "GET", target))
    return out


# ---- queries --------------------------------------------------------------------------------

LIST_QUERIES = (
    "limit=abc", "limit=-1", "limit=0", "limit=99999999999999999999", "limit=1.5", "limit=",
    "limit=%zz", "limit=2&limit=x", "limit=x&limit=2", "resourceVersion=abc", "resourceVersion=-1",
    "resourceVersion=00", "resourceVersion=99999999999999999999", "resourceVersion=",
    "resourceVersionMatch=Exact", "resourceVersionMatch=NotOlderThan", "resourceVersionMatch=x",
    "resourceVersion=0&resourceVersionMatch=Exact", "resourceVersion=1&resourceVersionMatch=x",
    "continue=garbage", "continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ", "continue=%zz", "continue=",
    "continue=x&resourceVersion=5", "continue=x&resourceVersionMatch=Exact",
    "sendInitialEvents=true", "sendInitialEvents=false", "sendInitialEvents=",
    "watch=0", "watch=false", "watch=FALSE", "watch=", "allowWatchBookmarks=x",
    "timeout=zz", "timeout=1x", "timeout=-1s", "timeout=1.5.5s", "timeout=1e3s", "timeout=%zz",
    "timeout=1ns", "timeout=1us", "timeout=30s", "timeout=0", "timeout=", "timeout=5m",
    "timeout=1%C2%B5s", "timeout=99999999999h", "timeout=.s", "timeout=1.s", "timeout=+5s",
    "timeoutSeconds=x", "timeoutSeconds=-1", "timeoutSeconds=99999999999999999999",
    "labelSelector=%zz", "labelSelector=a%zzb", "fieldSelector=%zz", "labelSelector=%",
    "limit=1;labelSelector=x", "a;b=c&limit=1", ";", "&&&", "=", "==", "%3D=1", "limit",
    "labelSelector", "fieldSelector", "labelSelector=team+in+(ml)", "labelSelector=team%2Bx",
    "pretty=true", "pretty=x", "export=true", "export=1", "shardSelector=x", "junk=1",
    "labelSelector=team=ml&labelSelector=bad!!", "labelSelector=bad!!&labelSelector=team=ml",
    "fieldSelector=metadata.name%3Dx&fieldSelector=bad", "limit=%2B2", "limit=%202",
)  # fmt: skip
WATCH_QUERIES = (
    "timeoutSeconds=-1", "timeoutSeconds=-5", "timeoutSeconds=x", "timeoutSeconds=",
    "timeoutSeconds=-1&resourceVersion=0", "timeoutSeconds=-1&allowWatchBookmarks=true",
    "resourceVersion=abc", "resourceVersion=-1", "resourceVersionMatch=Exact",
    "resourceVersionMatch=NotOlderThan", "sendInitialEvents=true", "sendInitialEvents=x",
    "sendInitialEvents=true&resourceVersionMatch=Exact", "continue=x&resourceVersionMatch=x",
    "timeout=zz&sendInitialEvents=false&resourceVersionMatch=NotOlderThan",
    "labelSelector=bad!!", "fieldSelector=bad", "limit=x", "timeoutSeconds=-1&timeout=zz",
)  # fmt: skip
GET_QUERIES = (
    "resourceVersion=abc", "resourceVersion=-1", "resourceVersion=0", "resourceVersion=",
    "resourceVersion=99999999999999999999", "export=true", "export=false", "timeout=zz",
    "timeout=1ns", "timeout=10s", "labelSelector=bad!!", "fieldSelector=bad", "limit=x",
    "watch=1", "resourceVersionMatch=x", "continue=x", "resourceVersion=%zz", "%zz=1",
)  # fmt: skip


def query_cases(rng: random.Random, names: Sequence[str], namespaces: Sequence[str]) -> list[Case]:
    out = []
    for plural in PLURALS:
        for query in LIST_QUERIES:
            out.append(Case("query", "GET", f"{_collection(rng, namespaces)}?{query}"))
        for query in WATCH_QUERIES:
            out.append(Case("query", "GET", f"{_collection(rng, namespaces)}?watch=1&{query}"))
        for query in GET_QUERIES:
            ns, name = rng.choice(namespaces), rng.choice(names)
            out.append(Case("query", "GET", f"{API}/namespaces/{ns}/{plural}/{name}?{query}"))
        for path in ("/version", "/apis", "/api", "/healthz", "/openapi/v2", "/nothing"):
            out.append(Case("query", "GET", f"{path}?timeout=zz"))
            out.append(Case("query", "GET", f"{path}?timeout=1ns"))
    return out


# ---- headers --------------------------------------------------------------------------------

ACCEPTS = (
    "application/json", "*/*", "application/*", "text/html", "application/json;q=0",
    "*/*;q=0", "garbage", "application/json, text/html",
    "application/json;as=Table;v=v1;g=meta.k8s.io",
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
    "application/json;as=Bogus;v=v1;g=meta.k8s.io",
    "application/json;as=Table;v=v9;g=meta.k8s.io", "application/json;stream=watch",
    "application/yaml", "application/vnd.kubernetes.protobuf", "text/plain", ",,,", ";;;",
    "application/json;q=x", "application/json;q=0.5, text/html;q=0.9", "application/json;x",
    "application/json;as=Table;v=v1;g=meta.k8s.io;includeObject=Object",
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
)  # fmt: skip
WEBSOCKET_REFUSALS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("Upgrade", "websocket"), ("Connection", "Upgrade")),
    (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")),
    (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "8"),
     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Origin", "http://x")),
    (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Origin", "http://x"),
     ("Sec-WebSocket-Protocol", "base64.binary.k8s.io, binary.k8s.io")),
)  # fmt: skip
OTHER_HEADERS = (
    ("If-None-Match", "*"), ("If-None-Match", "garbage"), ("If-None-Match", ""),
    ("Accept-Encoding", "gzip;q=x"), ("Accept-Encoding", "br, zstd"), ("Content-Type", "x/y"),
    ("Content-Length", "0"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
    ("X-Forwarded-For", "1.2.3.4"), ("Range", "bytes=0-10"), ("Expect", "100-continue"),
)  # fmt: skip


def header_cases(rng: random.Random, names: Sequence[str], namespaces: Sequence[str]) -> list[Case]:
    out = []
    for plural in PLURALS:
        ns, name = rng.choice(namespaces), rng.choice(names)
        targets = (
            f"{API}/namespaces/{ns}/{plural}",
            f"{API}/{plural}?limit=2",
            f"{API}/namespaces/{ns}/{plural}/{name}",
            f"{API}/namespaces/{ns}/{plural}/{name}/status",
        )
        for target in targets:
            for accept in ACCEPTS:
                out.append(Case("header", "GET", target, (("Accept", accept),)))
            for header in OTHER_HEADERS:
                out.append(Case("header", "GET", target, (header,)))
        watch = f"{API}/namespaces/{ns}/{plural}?watch=1&timeoutSeconds=1"
        for headers in WEBSOCKET_REFUSALS:
            out.append(Case("header", "GET", watch, headers))
    for path in ("/openapi/v2", "/openapi/v3", "/openapi/v3/apis/ray.io/v1", "/version", "/apis"):
        for accept in ACCEPTS:
            if "protobuf" not in accept:  # watchcache renders no protobuf OpenAPI (a 406)
                out.append(Case("header", "GET", path, (("Accept", accept),)))
    return out


# ---- bodies ---------------------------------------------------------------------------------


def body_cases(rng: random.Random, names: Sequence[str], namespaces: Sequence[str]) -> list[Case]:
    json_type = ("Content-Type", "application/json")
    out = []
    for plural in PLURALS:
        kind = KINDS[plural]
        ns, name = rng.choice(namespaces), rng.choice(names)
        coll = f"{API}/namespaces/{ns}/{plural}?dryRun=All"
        obj = f"{API}/namespaces/{ns}/{plural}/{name}?dryRun=All"
        bodies = (
            b"", b"{", b"[]", b"null", b"1", b'"x"', b"{}", b'{"kind":"Pod"}',
            b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}',
            b'{"apiVersion":"ray.io/v1","kind":"%s"}' % kind.encode(),
            b'{"apiVersion":"ray.io/v2","kind":"%s","metadata":{"name":"x"}}' % kind.encode(),
            b'{"apiVersion":"ray.io/v1","kind":"%s","metadata":{"name":"Bad_Name"}}'
            % kind.encode(),
            b'{"apiVersion":"ray.io/v1","kind":"%s","metadata":{"name":"x","namespace":"other"}}'
            % kind.encode(),
            b'{"apiVersion":"ray.io/v1","kind":"%s","metadata":{"name":".."}}' % kind.encode(),
            b'{"apiVersion":"ray.io/v1","kind":"%s","metadata":{"name":"x"},"spec":7}'
            % kind.encode(),
            b"\xff\xfe", b"{\"a\":\"\xff\"}", b"apiVersion: [", b"---\n...",
        )  # fmt: skip
        for body in bodies:
            for ctype in ("application/json", "application/yaml", "text/plain"):
                out.append(Case("body", "POST", coll, (("Content-Type", ctype),), body))
            out.append(Case("body", "PUT", obj, (json_type,), body))
        patches = (
            ("application/merge-patch+json", b"{"),
            ("application/merge-patch+json", b"[]"),
            ("application/merge-patch+json", b'{"metadata":{"name":"other"}}'),
            ("application/json-patch+json", b"{}"),
            ("application/json-patch+json", b'[{"op":"bogus","path":"/x"}]'),
            ("application/json-patch+json", b'[{"op":"add","path":"x","value":1}]'),
            ("application/json-patch+json", b'[{"op":"remove","path":"/nothing"}]'),
            ("application/strategic-merge-patch+json", b"{}"),
            ("application/apply-patch+yaml", b"{}"),
            ("application/apply-patch+yaml", b"kind: ["),
            ("text/plain", b"{}"),
            ("", b"{}"),
        )
        for ctype, body in patches:
            headers = (("Content-Type", ctype),) if ctype else ()
            out.append(Case("body", "PATCH", obj, headers, body))
            out.append(Case("body", "PATCH", f"{obj.replace('?', '/status?')}", headers, body))
        for target in (obj, f"{API}/namespaces/{ns}/{plural}/nothing-here?dryRun=All"):
            out.append(Case("body", "DELETE", target))
            out.append(Case("body", "DELETE", target, (json_type,), b"{"))
            out.append(Case("body", "DELETE", target, (json_type,), b'{"kind":"Pod"}'))
            out.append(
                Case("body", "DELETE", target, (json_type,), b'{"propagationPolicy":"Sideways"}')
            )
        for bad in (".", "..", "a%25b"):
            target = f"{API}/namespaces/{ns}/{plural}/{bad}?dryRun=All"
            out.append(Case("body", "DELETE", target))
            out.append(Case("body", "PUT", target, (json_type,), b"{}"))
            merge = ("Content-Type", "application/merge-patch+json")
            out.append(Case("body", "PATCH", target, (merge,), b"{}"))
        for bad_ns in (".", "..", "Bad_NS", "a%25b", "n" * 64, "no-such-namespace"):
            body = b'{"apiVersion":"ray.io/v1","kind":"%s","metadata":{"name":"x"}}' % kind.encode()
            target = f"{API}/namespaces/{bad_ns}/{plural}?dryRun=All"
            out.append(Case("body", "POST", target, (json_type,), body))
        out.append(Case("body", "POST", f"{coll}&fieldValidation=Bogus", (json_type,), b"{}"))
        out.append(Case("body", "POST", f"{coll}&dryRun=Bogus", (json_type,), b"{}"))
        out.append(Case("body", "POST", coll.replace("All", "x"), (json_type,), b"{}"))
    return out


def generate(
    seed: int,
    names: Sequence[str],
    namespaces: Sequence[str],
    *,
    label_selectors: int = 3000,
    field_selectors: int = 2000,
) -> list[Case]:
    """The whole corpus, in a seeded order: the same list for the same arguments."""
    rng = random.Random(seed)
    cases = selector_cases(rng, label_selectors, field_selectors, names, namespaces)
    cases += path_cases(rng, names, namespaces)
    cases += query_cases(rng, names, namespaces)
    cases += header_cases(rng, names, namespaces)
    cases += body_cases(rng, names, namespaces)
    rng.shuffle(cases)
    return cases
