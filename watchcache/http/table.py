"""Table answers of a cached resource (what ``kubectl get`` asks for).

``table_for`` says what representation a read wants: plain JSON (None, the cache's own
bytes), a Table rendered here (``table_response``), or ``FORWARD``: a form the cache does not
render (YAML, protobuf, PartialObjectMetadata, a Table of a resource whose printer columns
are not known here, nothing acceptable), which the API server answers itself. Table watches
are forwarded too: their events carry one-row Tables, rendered upstream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from watchcache.http.conditional import json_response
from watchcache.kube.negotiation import negotiate
from watchcache.kube.tables import TableSpec, include_object, render
from watchcache.kube.wire import go_escape
from watchcache.middleware.core import Request, Response

if TYPE_CHECKING:
    from watchcache.kube.resources import ResourceSpec
    from watchcache.upstream.discovery import Discovery

FORWARD: Final = "forward"


@dataclass(frozen=True, slots=True)
class TableRequest:
    spec: TableSpec
    version: str  # of meta.k8s.io: v1 or v1beta1
    include: str  # includeObject: Metadata, Object or None


async def table_for(
    request: Request, spec: ResourceSpec, discovery: Discovery
) -> TableRequest | Literal["forward"] | None:
    """The Table a read asks for, FORWARD, or None for plain JSON."""
    wanted = negotiate(request.headers.get("Accept"))
    if wanted == "json":
        return None
    if wanted == "forward":
        return FORWARD
    include = include_object(request.query)  # a bad value is the API server's 400, from here
    columns = await discovery.table_spec(spec)
    if columns is None:
        return FORWARD
    return TableRequest(columns, wanted[1], include)


def list_meta(rv: int, token: str | None = None, remaining: int | None = None) -> dict[str, object]:
    """A Table's metadata, fields in the API server's order."""
    meta: dict[str, object] = {"resourceVersion": str(rv)}
    if token:
        meta["continue"] = token
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return meta


def table_response(
    request: Request, table: TableRequest, raws: Iterable[bytes], meta: Mapping[str, object]
) -> Response:
    """A rendered Table. No ETag: its Age cells change with the clock."""
    body = render(
        table.spec,
        raws,
        list_meta=meta,
        include=table.include,
        version=table.version,
        now=time.time(),
    )
    return json_response(request, go_escape(body) + b"\n")  # as the API server writes it
