"""ETag/If-None-Match and gzip, in one place for every endpoint that answers from memory.

A 304 is sent only for a tag the client holds (or ``*``). An answer larger than the API
server's threshold is gzipped when the client accepts it; a body the caller keeps (a
rendered list, a discovery document) keeps its gzip form too, through ``keep``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

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
