"""Table answers of a cached resource (what ``kubectl get`` asks for), glued to the handler.

The read handler asks ``table_for`` what representation a read wants: plain JSON (None, the
cache's own bytes), a Table it renders with ``send_table``, or ``FORWARD``: a form the cache
does not render (YAML, protobuf, PartialObjectMetadata, a Table of a resource whose printer
columns are not known here, nothing acceptable), which the API server answers itself.
Table watches are forwarded too: their events carry one-row Tables, rendered upstream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from watchcache.kube.negotiation import negotiate
from watchcache.kube.tables import TableSpec, include_object, render
from watchcache.kube.wire import go_escape

if TYPE_CHECKING:
    from watchcache.http.context import ReadHandler

FORWARD: Final = "forward"


@dataclass(frozen=True, slots=True)
class TableRequest:
    spec: TableSpec
    version: str  # of meta.k8s.io: v1 or v1beta1
    include: str  # includeObject: Metadata, Object or None


async def table_for(
    handler: ReadHandler, query: Mapping[str, Sequence[str]]
) -> TableRequest | Literal["forward"] | None:
    """The Table a read asks for, FORWARD, or None for plain JSON."""
    wanted = negotiate(handler.request.headers.get("Accept"))
    if wanted == "json":
        return None
    if wanted == "forward":
        return FORWARD
    include = include_object(query)  # a bad value is the API server's 400, from here
    spec = await handler.runtime.discovery.table_spec(handler.resource.spec)
    if spec is None:
        return FORWARD
    return TableRequest(spec, wanted[1], include)


def list_meta(rv: int, token: str | None = None, remaining: int | None = None) -> dict[str, object]:
    """A Table's metadata, fields in the API server's order."""
    meta: dict[str, object] = {"resourceVersion": str(rv)}
    if token:
        meta["continue"] = token
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return meta


def send_table(
    handler: ReadHandler,
    table: TableRequest,
    raws: Iterable[bytes],
    meta: Mapping[str, object],
) -> None:
    """Renders and sends a Table. No ETag: its Age cells change with the clock."""
    body = render(
        table.spec,
        raws,
        list_meta=meta,
        include=table.include,
        version=table.version,
        now=time.time(),
    )
    handler._send_json(go_escape(body) + b"\n")  # as the API server writes it
