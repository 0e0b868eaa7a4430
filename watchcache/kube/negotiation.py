"""Content negotiation: which representation an Accept header gets, as the API server decides.

The API server walks the Accept clauses best first (goautoneg's order) and takes the first it
can produce, with its ``as``/``g``/``v`` parameters (a Table, PartialObjectMetadata) or
without (the object). watchcache produces plain JSON and JSON Tables itself; for anything
else the API server answers, so that the answer is exactly its own (YAML, protobuf, a 406).
Whether an answer is indented is decided here too (``wants_pretty``); how, in watchcache.wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

TABLE_VERSIONS = ("v1", "v1beta1")  # of meta.k8s.io

Representation = Literal["json", "forward"] | tuple[Literal["table"], str]


@dataclass(frozen=True, slots=True)
class Clause:
    type: str
    subtype: str
    params: Mapping[str, str]
    q: float


def parse_accept(header: str) -> list[Clause]:
    """Accept clauses, best first, as the API server's goautoneg orders them."""
    out: list[Clause] = []
    for part in header.split(","):
        media, *raw_params = part.strip(" ").split(";")
        kind, _, sub = media.strip(" ").partition("/")
        if not sub:
            if kind != "*":
                continue
            sub = "*"
        elif "/" in sub:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for raw in raw_params:
            key, sep, value = raw.partition("=")
            if not sep or "=" in value:
                continue
            key = key.strip(" ")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            else:
                params[key] = value.strip(" ")
        out.append(Clause(kind.strip(" "), sub.strip(" "), params, q))
    out.sort(key=lambda c: (-c.q, c.type == "*", c.subtype == "*"))
    return out


# The media types the API server offers for custom resources, in its order.
_SUBTYPES = ("json", "yaml", "vnd.kubernetes.protobuf")


@lru_cache(maxsize=256)
def negotiate(accept: str | None) -> Representation:
    """What a read with this Accept header should get: the plain JSON the cache holds, a
    Table it renders, or (YAML, protobuf, PartialObjectMetadata, nothing acceptable) the API
    server's own answer."""
    if not accept:
        return "json"
    for clause in parse_accept(accept):
        if clause.type not in ("application", "*"):
            continue
        for sub in _SUBTYPES:
            if clause.subtype not in (sub, "*"):
                continue
            choice = _choose(clause.params, sub)
            if choice is not None:
                return choice
    return "forward"


def _choose(params: Mapping[str, str], sub: str) -> Representation | None:
    if params.get("sv") or params.get("stream", "watch") != "watch":
        return "forward"
    convert = {k: params[k] for k in ("as", "g", "v") if k in params}
    if not convert:
        return "json" if sub == "json" else "forward"
    if convert.get("g") != "meta.k8s.io" or convert.get("v") not in TABLE_VERSIONS:
        return None
    kind = convert.get("as")
    if kind == "Table":
        if sub == "json":
            return ("table", convert["v"])
        return "forward" if sub == "yaml" else None
    if kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
        return "forward"
    return None


def accepts_json(accept: str | None) -> bool:
    """Whether an Accept header takes JSON (OpenAPI: watchcache renders no protobuf; asked
    for protobuf alone, it answers 406, on which clients fall back to JSON). As kube-openapi's
    handlers, q is ignored: ``application/json;q=0`` still gets JSON."""
    if not accept:
        return True
    for clause in parse_accept(accept):
        if clause.type in ("application", "*") and clause.subtype in ("json", "*"):
            return True
    return False


# ---- pretty-printing ------------------------------------------------------------------------
# Go's strconv.ParseBool: anything else is false (a malformed value is not "unset").
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
# User agents the API server takes for a human (a browser, curl, wget) and indents for.
_HUMAN_AGENTS = ("curl", "Wget", "Mozilla/5.0")


def wants_pretty(
    query: Mapping[str, list[str]], user_agent: str | None, accept: str | None = None
) -> bool:
    """Whether the API server would indent this answer: ``pretty=1`` on the Accept type, a
    non-empty ``pretty`` query parameter (true as Go parses it, and then the user agent no
    longer counts), else a browser's, curl's or wget's user agent."""
    if accept and "pretty" in accept:
        for clause in parse_accept(accept):
            if clause.type in ("application", "*") and clause.subtype in ("json", "*"):
                if clause.params.get("pretty") == "1":
                    return True
                break  # the clause the answer is negotiated from
    values = query.get("pretty")
    if values and values[0]:
        return values[0] in _GO_TRUE
    return (user_agent or "").startswith(_HUMAN_AGENTS)


def restful_accepts_json(accept: str | None) -> bool:
    """go-restful's route match on Accept (``/version``): some clause, parameters cut off,
    is exactly ``*/*`` or ``application/json``; an absent or empty header matches."""
    if not accept:
        return True
    return any(
        part.split(";", 1)[0].strip(" \t") in ("*/*", "application/json")
        for part in accept.split(",")
    )
