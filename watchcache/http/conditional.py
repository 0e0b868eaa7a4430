"""A JSON answer from memory, and the ETag/If-None-Match and gzip rules the adapter applies
to every such answer.

A 304 is sent only for a tag the client holds (or ``*``). An answer larger than the API
server's threshold is gzipped when the client accepts it; a body the caller keeps (a
rendered list, a discovery document) keeps its gzip form too, through ``keep``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

from watchcache.kube.wire import go_indent
from watchcache.middleware.core import Compressed, Headers, Request, Response

# Kubernetes compresses responses larger than this when the client accepts gzip.
GZIP_THRESHOLD = 128 * 1024


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``)."""
    if not if_none_match:
        return False
    return if_none_match.strip() == "*" or etag in (t.strip() for t in if_none_match.split(","))


def encoded(
    body: bytes,
    accept_encoding: str | None,
    *,
    kept: bytes | None = None,
    keep: Callable[[bytes], None] | None = None,
) -> tuple[bytes, bool]:
    """The bytes to send and whether they are gzip: ``kept`` is a gzip form made before,
    ``keep`` is told of a new one (for a body the caller keeps)."""
    if len(body) <= GZIP_THRESHOLD or "gzip" not in (accept_encoding or ""):
        return body, False
    if kept is not None:
        return kept, True
    zipped = gzip.compress(body, compresslevel=1)
    if keep is not None:
        keep(zipped)
    return zipped, True


def json_response(
    request: Request, body: bytes, etag: str | None = None, kept: Compressed | None = None
) -> Response:
    """A compact body as the API server writes it, or indented when the request asks. The
    indented form is made per request and never kept (the render cache holds compact bodies
    only), and has a tag of its own: a 304 means "the very bytes you hold"."""
    headers = Headers({"Content-Type": "application/json"})
    if request.pretty:
        body, kept = go_indent(body), None
        if etag is not None:
            etag = etag[:-1] + '-pretty"'
    if etag is not None:
        headers["ETag"] = etag
    return Response(status=200, headers=headers, body=body, compress=kept or True)
