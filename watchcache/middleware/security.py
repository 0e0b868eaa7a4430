"""Authentication, authorization and the audit log: one middleware, outermost but for CORS.

Every request is authenticated (``auth.authn``: a bearer token checked with a TokenReview or
a static token file, a client certificate, or anonymous), then authorized with the
attributes kube-apiserver would compute for it (``kube.attributes``), by a cached
SubjectAccessReview. A client's own ``Impersonate-*`` headers are checked as kube-apiserver
checks them and removed; the user the request runs as is ``request.user``, and whatever is
sent upstream on its behalf carries that user as ``Impersonate-*`` (``http.proxy``), so the
API server's RBAC, admission and audit see the real caller. A feature may name the
attributes of its own paths (compute templates are ConfigMaps). The audit log gets one line
per request: who, what, the answer's code, how long, and whether the cache answered; never
a credential or a body.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

import orjson

from watchcache.auth.authn import (
    Authenticator,
    Credentials,
    UnionAuthenticator,
    X509Authenticator,
)
from watchcache.auth.authz import AlwaysAllow, Authorizer, SubjectAccessReviewAuthorizer, check
from watchcache.auth.impersonation import Impersonation, is_impersonation_header
from watchcache.auth.tokenfile import TokenFileAuthenticator
from watchcache.auth.tokenreview import TokenReviewAuthenticator
from watchcache.auth.user import ANONYMOUS_USER, UserInfo
from watchcache.kube.attributes import Attributes, request_attributes
from watchcache.kube.gourl import decode_path
from watchcache.kube.status import StatusError
from watchcache.middleware.core import Next, Request, Response

if TYPE_CHECKING:
    from watchcache.config import SecuritySettings
    from watchcache.upstream.client import Upstream

log = logging.getLogger(__name__)

AttributeRule = Callable[[Request], Attributes | None]

# A request whose caller and question were allowed a moment ago is allowed again without
# asking either cache (the hot path of a polling dashboard): for this long at most, which
# is what a revocation may take beyond the decision cache's own TTL.
MEMO_SECONDS = 1.0
MEMO_ENTRIES = 4096


def credentials(request: Request) -> Credentials:
    """What the request presents: its first Authorization header, its verified client
    certificate, and (on a WebSocket upgrade only) its offered subprotocols."""
    headers = request.headers
    values = headers.get_list("Authorization")
    protocols: tuple[str, ...] = ()
    if (headers.get("Upgrade") or "").lower() == "websocket":
        offered = ",".join(headers.get_list("Sec-WebSocket-Protocol"))
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
    return Credentials(
        authorization=values[0] if values else None,
        peer_cert=request.peer_cert,
        peer_cert_der=request.peer_cert_der,
        peer_cert_error=request.peer_cert_error,
        websocket_protocols=protocols,
    )


class AuditLog:
    """One JSON line per request, flushed as written."""

    def __init__(self, target: str) -> None:
        self.out: IO[bytes] = (
            sys.stdout.buffer if target == "-" else open(target, "ab", buffering=0)  # noqa: SIM115
        )

    def record(
        self,
        request: Request,
        user: UserInfo | None,
        attrs: Attributes | None,
        code: int,
        started: float,
    ) -> None:
        line: dict[str, object] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "user": user.name if user is not None else None,
            "groups": list(user.groups) if user is not None else [],
            "verb": attrs.verb if attrs is not None else request.method.lower(),
        }
        if attrs is not None and attrs.resource_request:
            line["group"] = attrs.group
            line["resource"] = attrs.resource + (
                f"/{attrs.subresource}" if attrs.subresource else ""
            )
            line["namespace"] = attrs.namespace
            line["name"] = attrs.name
        else:
            line["path"] = request.path[:512]
        line["code"] = code
        line["latency_ms"] = round(1000 * (time.monotonic() - started), 3)
        line["source"] = request.remote_ip
        line["cached"] = bool(request.extra.get("cached"))
        try:
            self.out.write(orjson.dumps(line) + b"\n")
        except (OSError, ValueError) as exc:
            log.warning("audit log write failed: %s", exc)


class Security:
    """The middleware; see the module docstring."""

    def __init__(
        self,
        authenticator: UnionAuthenticator | None,
        authorizer: Authorizer,
        *,
        rules: Sequence[AttributeRule] = (),
        audit: AuditLog | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.impersonation = Impersonation(authorizer) if authenticator is not None else None
        self.rules = tuple(rules)
        self.audit = audit
        self.authorizing = not isinstance(authorizer, AlwaysAllow)
        # (credential digest, method, target) -> (until, user, attributes) of an allowed
        # request; keyed by a digest, never the credential itself.
        self.memo: dict[tuple[bytes, str, str], tuple[float, UserInfo | None, Attributes]] = {}
        self.memo_hits = 0

    def attributes(self, request: Request) -> Attributes:
        for rule in self.rules:
            attrs = rule(request)
            if attrs is not None:
                return attrs
        path = decode_path(request.path) or request.path
        return request_attributes(request.method, path, request.query)

    def memo_key(self, request: Request) -> tuple[bytes, str, str] | None:
        """The memo's key for ``request``, or None when it must be decided in full (it asks
        to impersonate someone)."""
        headers = request.headers
        if any(name.startswith("impersonate-") for name in headers.items_):
            return None
        digest = hashlib.blake2b(digest_size=16)
        for value in headers.get_list("Authorization")[:1]:
            digest.update(value.encode("utf-8", "surrogateescape"))
        for value in headers.get_list("Sec-WebSocket-Protocol"):  # may carry a token too
            digest.update(b"\x00" + value.encode("utf-8", "surrogateescape"))
        if request.peer_cert_der:
            digest.update(b"\x00" + request.peer_cert_der)
        return digest.digest(), request.method, request.target

    async def __call__(self, request: Request, call_next: Next) -> Response:
        started = time.monotonic()
        user: UserInfo | None = None
        attrs: Attributes | None = None
        key = self.memo_key(request)
        hit = self.memo.get(key) if key is not None else None
        try:
            if hit is not None and hit[0] > started:
                _, user, attrs = hit
                request.user = user
                self.memo_hits += 1
            else:
                # As kube-apiserver: the request's attributes first (the audit of a 401
                # names what was asked), then who asks.
                if self.authorizing or self.impersonation is not None or self.audit is not None:
                    attrs = self.attributes(request)
                if self.authenticator is not None:
                    user = await self.authenticator.authenticate(credentials(request))
                if self.impersonation is not None and user is not None:
                    asked = [
                        (n, v) for n, v in request.headers.get_all() if is_impersonation_header(n)
                    ]
                    if asked:
                        assert attrs is not None
                        user = await self.impersonation.resolve(user, asked, attrs)
                        for name in {n for n, _ in asked}:
                            del request.headers[name]
                    request.user = user
                if self.authorizing:
                    assert attrs is not None
                    await check(self.authorizer, user or ANONYMOUS_USER, attrs)
                if key is not None and attrs is not None:
                    if len(self.memo) >= MEMO_ENTRIES:
                        self.memo.clear()  # bounded: refilled by the next requests
                    self.memo[key] = (started + MEMO_SECONDS, user, attrs)
            response = await call_next(request)
        except StatusError as err:
            response = Response.from_status(err, request)
        if self.audit is not None:
            self.audit.record(request, user, attrs, response.status, started)
        return response

    def counters(self) -> list[tuple[str, str, float]]:
        """(metric name, help, value) of the upstream reviews and cache hits."""
        out: list[tuple[str, str, float]] = []
        reviews = hits = 0
        for auth in self.authenticator.authenticators if self.authenticator else ():
            if isinstance(auth, TokenReviewAuthenticator):
                reviews += auth.upstream_calls
                hits += auth.cache_hits
        if self.authenticator is not None:
            out.append(
                (
                    "watchcache_authentication_upstream_reviews_total",
                    "TokenReviews sent to the API server.",
                    reviews,
                )
            )
            out.append(
                (
                    "watchcache_authentication_cache_hits_total",
                    "Bearer tokens answered from the TokenReview cache.",
                    hits,
                )
            )
        if isinstance(self.authorizer, SubjectAccessReviewAuthorizer):
            out.append(
                (
                    "watchcache_authorization_upstream_reviews_total",
                    "SubjectAccessReviews sent to the API server.",
                    self.authorizer.upstream_calls,
                )
            )
            out.append(
                (
                    "watchcache_authorization_cache_hits_total",
                    "Authorization decisions answered from the decision cache.",
                    self.authorizer.cache_hits + self.memo_hits,
                )
            )
        return out


def build_security(
    settings: SecuritySettings, upstream: Upstream, rules: Sequence[AttributeRule] = ()
) -> Security:
    """The middleware the settings ask for (ValueError names what is missing)."""
    authenticators: list[Authenticator] = []
    for mode in settings.authentication:
        if mode == "kubernetes":
            authenticators.append(
                TokenReviewAuthenticator(
                    upstream, settings.audiences, ttl=settings.authentication_ttl
                )
            )
        elif mode == "token-file":
            if not settings.token_auth_file:
                raise ValueError("--authentication token-file needs --token-auth-file FILE")
            authenticators.append(TokenFileAuthenticator(settings.token_auth_file))
        elif mode == "x509":
            if not settings.client_ca_file or not settings.tls:
                raise ValueError(
                    "--authentication x509 needs --client-ca-file FILE and TLS"
                    " (--tls-cert-file, --tls-private-key-file)"
                )
            authenticators.append(X509Authenticator())
        elif mode != "none":
            raise ValueError(f"unknown authentication mode {mode!r}")
    authenticator = (
        UnionAuthenticator(authenticators, anonymous=settings.anonymous)
        if settings.authenticating
        else None
    )
    authorizer: Authorizer
    if settings.authorization_mode == "kubernetes":
        authorizer = SubjectAccessReviewAuthorizer(
            upstream, allow_ttl=settings.allow_ttl, deny_ttl=settings.deny_ttl
        )
    elif settings.authorization_mode == "none":
        authorizer = AlwaysAllow()
    else:
        raise ValueError(f"unknown authorization mode {settings.authorization_mode!r}")
    audit = AuditLog(settings.audit_log) if settings.audit_log else None
    return Security(authenticator, authorizer, rules=rules, audit=audit)
