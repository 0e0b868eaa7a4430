"""When and how long to wait before sending a request to the API server again.

The reference APIServer's documented policy: 408, 429, 500, 502, 503 and 504 are retried
with exponential backoff (500 ms x 2^i, at most 10 s a wait, 3 retries, 30 s in all), and a
``Retry-After`` from the server is honoured. A decision is only ever taken before anything
of the response reached the client, so a stream is never cut or replayed.

Two answers are final although their code is in the list. A 504 "Too large resource
version" is kube-apiserver saying it has already waited (3 s) for a version it has not
reached: sending it again only makes the client wait three times longer for the same answer.
And nothing is sent again once the request's own deadline (its ``timeout`` parameter) has
passed, or would pass during the wait: the client has stopped waiting for it.

A 429 of watchcache's own (no upstream connection free within the pool's wait, see
``client.Upstream``) never comes here: it is not an answer of the API server, so it is
passed to the client at once, with ``Retry-After: 1``. Retrying it would hold the client
another wait per attempt while adding to the very queue that caused it; the client, which
may give up, decides. A 429 from kube-apiserver is retried as above, each attempt waiting
its turn for a connection like any other request, so retries cannot open more than the bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from watchcache.kube.bodies import decode
from watchcache.kube.listoptions import parse_go_duration
from watchcache.kube.status import StatusError

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})

# Codes whose answer body says whether it may be retried: the relay holds such a body (a
# small Status) before deciding.
INSPECTED = frozenset({504})

# How much of an inspected body is looked at; a Status is a few hundred bytes.
INSPECT_LIMIT = 64 * 1024

# The cause kube-apiserver names, as it appears in JSON, YAML and protobuf Status bodies alike.
_TOO_LARGE = (b"ResourceVersionTooLarge", b"Too large resource version")

# kube-apiserver's longest deadline for a request (--request-timeout's default).
MAX_REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    overall: float = 30.0
    codes: frozenset[int] = field(default=RETRYABLE)

    def delay(
        self,
        attempt: int,
        elapsed: float,
        *,
        code: int | None,
        retry_after: str | None = None,
        body: bytes | None = None,
        deadline: float | None = None,
    ) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None to give up.

        ``code`` None means the request never got an answer (a connection failure).
        ``body`` is the answer's body (or its first bytes) when the caller has it (see
        INSPECTED); ``deadline`` the request's own time limit, in the seconds ``elapsed``
        counts, None when it set none.
        """
        if attempt >= self.max_retries or (code is not None and code not in self.codes):
            return None
        if deadline is not None and elapsed >= deadline:
            return None
        if code == 504 and body is not None and resource_version_too_large(body):
            return None
        wait = min(self.initial * self.factor**attempt, self.max_delay)
        if retry_after and _is_number(retry_after):
            wait = min(max(float(retry_after), 0.0), self.max_delay)
        if elapsed + wait > self.overall:
            return None
        if deadline is not None and elapsed + wait >= deadline:
            return None
        return wait


NO_RETRIES = RetryPolicy(max_retries=0)


def resource_version_too_large(body: bytes) -> bool:
    """Whether an answer's body is kube-apiserver's "Too large resource version" Status."""
    head = body[:INSPECT_LIMIT]
    return any(marker in head for marker in _TOO_LARGE)


def request_deadline(query: Mapping[str, list[str]]) -> float | None:
    """Seconds the client gave the request (its ``timeout`` parameter), as kube-apiserver
    bounds it: at most 60 s. None when it gave none, or one kube-apiserver refuses (the
    400 that follows is not retried anyway)."""
    values = query.get("timeout")
    if not values or not values[0]:
        return None
    try:
        ns = parse_go_duration(values[0])
    except ValueError:
        return None
    if ns <= 0:
        return MAX_REQUEST_TIMEOUT
    return min(ns / 1e9, MAX_REQUEST_TIMEOUT)


def _is_number(text: str) -> bool:
    """Retry-After in seconds; its HTTP-date form is rare from the API server and ignored."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def may_duplicate(method: str, body: bytes | None) -> bool:
    """A create that names no object (only ``generateName``) makes a new one each time it is
    sent: it must never be sent twice."""
    if method != "POST" or not body:
        return False
    return b"generateName" in body and not _names_object(body)


def _names_object(body: bytes) -> bool:
    obj: object = None
    for kind in ("json", "yaml"):
        try:
            obj = decode(body, kind).value
            break
        except StatusError:
            continue  # unreadable: the server will refuse it; do not risk a duplicate
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return isinstance(meta, dict) and bool(meta.get("name"))
