"""When and how long to wait before sending a request to the API server again.

The reference APIServer's documented policy: 408, 429, 500, 502, 503 and 504 are retried
with exponential backoff (500 ms x 2^i, at most 10 s a wait, 3 retries, 30 s in all), and a
``Retry-After`` from the server is honoured. A decision is only ever taken before anything
of the response reached the client, so a stream is never cut or replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watchcache.kube.bodies import decode
from watchcache.kube.status import StatusError

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    overall: float = 30.0
    codes: frozenset[int] = field(default=RETRYABLE)

    def delay(
        self, attempt: int, elapsed: float, *, code: int | None, retry_after: str | None = None
    ) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None to give up.

        ``code`` None means the request never got an answer (a connection failure).
        """
        if attempt >= self.max_retries or (code is not None and code not in self.codes):
            return None
        wait = min(self.initial * self.factor**attempt, self.max_delay)
        if retry_after and _is_number(retry_after):
            wait = min(max(float(retry_after), 0.0), self.max_delay)
        if elapsed + wait > self.overall:
            return None
        return wait


NO_RETRIES = RetryPolicy(max_retries=0)


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
