"""Bearer tokens checked by the API server itself, with a TokenReview.

Whatever the cluster accepts (service-account tokens, OIDC, a webhook, static tokens) is
accepted here, and the user is the one the API server names. As kube-apiserver's webhook
token authenticator:

- with ``audiences``, they are sent as ``spec.audiences`` and the answer's
  ``status.audiences`` must share one of them (an answer without audiences does not);
- answers are remembered, accepted and rejected alike, in a bounded TTL cache keyed by
  the SHA-256 of the token (the token itself is never kept);
- an error (the API server unreachable, or refusing the review) is not remembered, and
  makes the request a 401, as kube-apiserver answers when its webhook fails;
- concurrent checks of one token share one review.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from cachetools import TTLCache

from watchcache.auth.authn import AuthenticationFailed, TokenAuthenticator, token_digest
from watchcache.auth.review import Fetcher
from watchcache.auth.user import UserInfo

log = logging.getLogger(__name__)

TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"

# The longest a review may take; kube-apiserver's webhook authenticator waits 30 s, which
# is long for a client waiting on a cached read.
REVIEW_TIMEOUT = 10.0

# A TokenReview answer is a few hundred bytes; anything far larger is not one.
MAX_ANSWER = 1 << 20


class _Rejected:
    """The cached answer for a token the API server does not accept."""


REJECTED = _Rejected()


class TokenReviewAuthenticator(TokenAuthenticator):
    """Bearer tokens authenticated by the API server (``--authentication kubernetes``).

    ``upstream``: the API server client (its own credentials need ``create`` on
    ``tokenreviews``). ``ttl``: how long an answer is remembered (``failure_ttl``, if given,
    for rejections). ``maxsize``: how many tokens are remembered at most.

    ``upstream_calls`` and ``cache_hits`` count reviews sent and answers reused (for
    /metrics); ``upstream_errors`` counts reviews that got no usable answer."""

    name = "kubernetes"

    def __init__(
        self,
        upstream: Fetcher,
        audiences: Sequence[str] = (),
        ttl: float = 120.0,
        maxsize: int = 10_000,
        *,
        failure_ttl: float | None = None,
        timeout: float = REVIEW_TIMEOUT,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.audiences = tuple(audiences)
        self.timeout = timeout
        self._accepted: TTLCache[bytes, UserInfo] = TTLCache(maxsize, ttl, timer=timer)
        self._rejected: TTLCache[bytes, _Rejected] = TTLCache(
            maxsize, ttl if failure_ttl is None else failure_ttl, timer=timer
        )
        self._inflight: dict[bytes, asyncio.Future[UserInfo | _Rejected]] = {}
        self.upstream_calls = 0
        self.cache_hits = 0
        self.upstream_errors = 0

    def cached(self, token: str) -> UserInfo | _Rejected | None:
        """The remembered answer for ``token`` (None: none); for tests and tools."""
        key = token_digest(token)
        return self._accepted.get(key) or self._rejected.get(key)

    async def authenticate_token(self, token: str) -> UserInfo | None:
        key = token_digest(token)
        answer: UserInfo | _Rejected | None = self._accepted.get(key) or self._rejected.get(key)
        if answer is not None:
            self.cache_hits += 1
        else:
            future = self._inflight.get(key)
            if future is None:
                future = asyncio.ensure_future(self._review(key, token))
                self._inflight[key] = future
                future.add_done_callback(lambda f: self._done(key, f))
            # One caller giving up (its client went away) must not cancel the others' review.
            answer = await asyncio.shield(future)
        return None if isinstance(answer, _Rejected) else answer

    def _done(self, key: bytes, future: asyncio.Future[UserInfo | _Rejected]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved, so that a review no caller awaits any more is quiet

    async def _review(self, key: bytes, token: str) -> UserInfo | _Rejected:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = orjson.dumps(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        )
        self.upstream_calls += 1
        try:
            resp = await asyncio.wait_for(
                self.upstream.fetch(
                    "POST",
                    TOKENREVIEWS,
                    headers={"Content-Type": "application/json", "Accept": "application/json"},
                    body=body,
                ),
                self.timeout,
            )
        except Exception as exc:  # unreachable, reset, timed out: decide nothing, keep nothing
            self.upstream_errors += 1
            log.warning("TokenReview failed: %s", type(exc).__name__ if not str(exc) else exc)
            raise AuthenticationFailed("TokenReview failed") from exc
        if resp.code != 201 or len(resp.body) > MAX_ANSWER:
            self.upstream_errors += 1
            hint = " (watchcache needs create on tokenreviews)" if resp.code == 403 else ""
            log.warning("TokenReview answered HTTP %d%s", resp.code, hint)
            raise AuthenticationFailed(f"TokenReview answered HTTP {resp.code}")
        try:
            answer = self._decide(orjson.loads(resp.body))
        except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError) as exc:
            self.upstream_errors += 1
            log.warning("TokenReview answer unreadable: %s", type(exc).__name__)
            raise AuthenticationFailed("TokenReview answer unreadable") from exc
        if isinstance(answer, UserInfo):
            self._accepted[key] = answer
        else:
            self._rejected[key] = answer
        return answer

    def _decide(self, review: Any) -> UserInfo | _Rejected:
        status = review.get("status") or {}
        if self.audiences:
            got = status.get("audiences") or []
            if not any(aud in got for aud in self.audiences):
                return REJECTED
        if status.get("authenticated") is not True:
            return REJECTED
        user = status.get("user") or {}
        name = user.get("username") or ""
        if not isinstance(name, str) or not name:
            return REJECTED
        groups = [g for g in (user.get("groups") or []) if isinstance(g, str)]
        extra = {
            k: [x for x in v if isinstance(x, str)]
            for k, v in (user.get("extra") or {}).items()
            if isinstance(k, str) and isinstance(v, list)
        }
        uid = user.get("uid") or ""
        return UserInfo.of(
            name, uid=uid if isinstance(uid, str) else "", groups=groups, extra=extra
        )
