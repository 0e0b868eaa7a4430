"""Authorization: may this user do this? Asked of the API server with a SubjectAccessReview,
so that the answer is the one its RBAC (or whatever authorizers the cluster runs) would give
the user directly, and remembered for a while, so that a read served from memory costs no
upstream call in the steady state.

Decisions are cached per (user, attributes): allowed ones for minutes, denied ones for
seconds (a grant should take effect quickly; a revocation takes effect within the allow TTL,
as with kube-apiserver's own webhook authorizer cache). Both caches are bounded. Identical
checks that arrive while a review is on its way share that one review.

When the review cannot be made (the API server unreachable, or answering 5xx), the request
fails with 503 ServiceUnavailable and Retry-After, and nothing is cached. kube-apiserver with a
failing webhook authorizer gives no opinion with an error, which its authorization filter
turns into a plain-text 500; a 403 would tell the user to fix RBAC that may well be right,
and a 503 Status is what clients retry. A review the API server refuses (watchcache lacks
``create subjectaccessreviews``) is a configuration error: 500 InternalError, which says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from cachetools import TTLCache

from watchcache.auth.review import Answer, Fetcher
from watchcache.auth.user import UserInfo
from watchcache.kube.attributes import Attributes, forbidden
from watchcache.kube.status import StatusError
from watchcache.upstream.client import UpstreamError

log = logging.getLogger(__name__)

REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorizer's answer: allowed or not, and its reason (RBAC names the binding that
    allowed, or the broken binding it met), which a 403 appends to its message."""

    allowed: bool
    reason: str = ""


class Authorizer(Protocol):
    async def authorize(self, user: UserInfo, attrs: Attributes) -> Decision: ...


class AlwaysAllow:
    """``--authorization none``: every request is allowed (the API server's AlwaysAllow)."""

    upstream_calls = 0
    cache_hits = 0

    async def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        return Decision(True)


def review_body(user: UserInfo, attrs: Attributes) -> bytes:
    """A SubjectAccessReview asking whether ``user`` may do ``attrs``."""
    spec: dict[str, object] = {"user": user.name}
    if user.uid:
        spec["uid"] = user.uid
    if user.groups:
        spec["groups"] = list(user.groups)
    if user.extra:
        spec["extra"] = user.extra_map
    spec.update(attrs.review_spec())
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview"}
    return orjson.dumps({**review, "spec": spec})


def unavailable(detail: str) -> StatusError:
    """The 503 of a review that could not be made; the client may retry in a second."""
    return StatusError(
        503,
        f"the request could not be authorized: {detail}",
        details={"retryAfterSeconds": 1},
        headers={"Retry-After": "1"},
    )


def _message_of(body: bytes) -> str:
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace")
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else ""


def decision_of(response: Answer) -> Decision:
    """The Decision in a SubjectAccessReview response, or the StatusError of a failed one."""
    if response.code in (200, 201):
        try:
            review = orjson.loads(response.body)
            status = review.get("status") or {}
            allowed, denied = bool(status.get("allowed")), bool(status.get("denied"))
            reason = status.get("reason") or ""
        except (orjson.JSONDecodeError, AttributeError):
            raise unavailable("the SubjectAccessReview answer could not be read") from None
        return Decision(allowed and not denied, str(reason))
    detail = f"the API server answered {response.code} to a SubjectAccessReview"
    message = _message_of(response.body)
    if message:
        detail += f": {message}"
    if response.code == 429 or response.code >= 500:
        raise unavailable(detail)
    # 401, 403, 404: watchcache's own credentials or RBAC are wrong; retrying will not help.
    raise StatusError(500, f"the request could not be authorized: {detail}")


Key = tuple[UserInfo, Attributes]


class SubjectAccessReviewAuthorizer:
    """Authorizes with SubjectAccessReviews, cached (see the module docstring).

    ``upstream_calls`` counts reviews sent, ``cache_hits`` decisions answered from a cache,
    ``shared`` checks that waited for a review already in flight: in the steady state only
    ``cache_hits`` grows.
    """

    def __init__(
        self,
        upstream: Fetcher,
        *,
        allow_ttl: float = 300.0,
        deny_ttl: float = 30.0,
        maxsize: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self._allowed: TTLCache[Key, Decision] = TTLCache(maxsize, allow_ttl, timer=timer)
        self._denied: TTLCache[Key, Decision] = TTLCache(maxsize, deny_ttl, timer=timer)
        self._inflight: dict[Key, asyncio.Task[Decision]] = {}
        self.upstream_calls = 0
        self.cache_hits = 0
        self.shared = 0

    def cached(self, user: UserInfo, attrs: Attributes) -> Decision | None:
        key = (user, attrs)
        return self._allowed.get(key) or self._denied.get(key)

    async def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        key = (user, attrs)
        decision = self._allowed.get(key) or self._denied.get(key)
        if decision is not None:
            self.cache_hits += 1
            return decision
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._review(key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        else:
            self.shared += 1
        # Shielded: a caller that goes away (its client disconnected) does not cancel the
        # review the others wait for.
        return await asyncio.shield(task)

    async def _review(self, key: Key) -> Decision:
        user, attrs = key
        self.upstream_calls += 1
        try:
            response = await self.upstream.fetch(
                "POST", REVIEW_PATH, headers=_JSON, body=review_body(user, attrs)
            )
        except UpstreamError as exc:
            log.warning("SubjectAccessReview failed: %s", exc)
            raise unavailable(str(exc)) from None
        return decision_of(response)

    def _settle(self, key: Key, task: asyncio.Task[Decision]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        error = task.exception()  # retrieved, so that no waiter left is no warning
        if error is None:
            decision = task.result()
            (self._allowed if decision.allowed else self._denied)[key] = decision


async def check(authorizer: Authorizer, user: UserInfo, attrs: Attributes) -> Decision:
    """Authorizes, or raises kube-apiserver's 403 for the denied request."""
    decision = await authorizer.authorize(user, attrs)
    if not decision.allowed:
        raise forbidden(user.name, attrs, decision.reason)
    return decision
