"""How kube-apiserver writes a JSON body, so that watchcache's are the same bytes.

Go's encoder escapes ``&<>`` and U+2028/U+2029 inside strings and ends a compact body with a
newline; its pretty serializer (``json.MarshalIndent``, two spaces) ends with none. A list of
a custom resource is unstructured (keys sorted, ``metadata.continue`` always present); one of
a built-in kind follows its Go struct. When a request asks for indentation is negotiation's
business (negotiation.wants_pretty).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import orjson

if TYPE_CHECKING:
    from watchcache.kube.resources import ResourceSpec


class Entry(Protocol):
    """An item as stored: its JSON bytes are all a list body needs."""

    @property
    def raw(self) -> bytes: ...


# What Go's encoding/json escapes inside strings and orjson does not; none of these bytes
# can occur outside a string in JSON, so a plain replace is exact.
_GO_ESCAPES = (
    (b"&", b"\\u0026"),
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def go_indent(body: bytes) -> bytes:
    """A compact JSON body as the API server's pretty serializer writes it (Go's
    ``json.MarshalIndent`` with two spaces: no final newline, HTML characters escaped).
    Key order is the body's own."""
    return go_escape(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2))


def go_escape(body: bytes) -> bytes:
    """JSON bytes with the characters Go's encoder escapes (``&<>``, U+2028, U+2029) escaped
    as it does, so that an answer is byte for byte the API server's; a body without any is
    returned as it is, uncopied."""
    for raw, escaped in _GO_ESCAPES:
        if raw in body:
            body = body.replace(raw, escaped)
    return body


# The API groups kube-apiserver serves itself, as typed objects; a resource of any other
# group is taken to be a CRD's (an aggregated API server's typed groups are not proxied).
BUILTIN_GROUPS = frozenset(
    {
        "",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "apiregistration.k8s.io",
        "apps",
        "authentication.k8s.io",
        "authorization.k8s.io",
        "autoscaling",
        "batch",
        "certificates.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "extensions",
        "flowcontrol.apiserver.k8s.io",
        "internal.apiserver.k8s.io",
        "networking.k8s.io",
        "node.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "resource.k8s.io",
        "scheduling.k8s.io",
        "storage.k8s.io",
        "storagemigration.k8s.io",
    }
)


def is_custom(spec: ResourceSpec) -> bool:
    """Whether the API server serves ``spec`` from a CRD, as unstructured objects: that
    decides the shape of its list bodies (list_body)."""
    return spec.group not in BUILTIN_GROUPS


def list_body(
    spec: ResourceSpec, entries: Sequence[Entry], rv: int, token: str | None, remaining: int | None
) -> bytes:
    """A list as the API server encodes it, final newline included. A custom resource's list
    is unstructured: keys sorted, and ``metadata.continue`` always there ("" on the last
    page). A built-in kind's (Ray events) follows its Go struct: kind, apiVersion, metadata,
    items (without their own kind and apiVersion), and ``continue`` only with a next page."""
    if is_custom(spec):
        items = b",".join([e.raw for e in entries])
        meta: dict[str, object] = {"continue": token or ""}
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        meta["resourceVersion"] = str(rv)
        parts = (
            b'{"apiVersion":"',
            spec.api_version.encode(),
            b'","items":[',
            items,
            b'],"kind":"',
            spec.list_kind.encode(),
            b'","metadata":',
            orjson.dumps(meta),
            b"}\n",
        )
    else:
        # A typed list's items carry no kind and apiVersion; the stored objects (from the
        # watch) begin with them.
        type_meta = b'{"kind":"%s","apiVersion":"%s",' % (
            spec.kind.encode(),
            spec.api_version.encode(),
        )
        cut = len(type_meta)
        items = b",".join(
            [b"{" + e.raw[cut:] if e.raw.startswith(type_meta) else e.raw for e in entries]
        )
        meta = {"resourceVersion": str(rv)}
        if token:
            meta["continue"] = token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        parts = (
            b'{"kind":"',
            spec.list_kind.encode(),
            b'","apiVersion":"',
            spec.api_version.encode(),
            b'","metadata":',
            orjson.dumps(meta),
            b',"items":[',
            items,
            b"]}\n",
        )
    return b"".join(parts)
