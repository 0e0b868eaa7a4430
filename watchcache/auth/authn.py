"""Authentication: a request's credentials become a ``UserInfo``, as kube-apiserver decides.

kube-apiserver's chain, which this reproduces:

- authenticators are tried in order and the first that accepts the request wins; one that
  fails (a credential of its kind it does not accept) does not stop the others;
- when none accepts: if any of them failed, the request is a 401; if none saw a credential
  of its kind at all, the request is anonymous (``system:anonymous`` in
  ``system:unauthenticated``), or a 401 when anonymous authentication is off. So a bad
  credential is never downgraded to anonymous, and a missing one never becomes a 401 unless
  asked;
- an accepted user gets ``system:authenticated`` added to its groups unless it is
  ``system:anonymous`` or already in ``system:authenticated`` or ``system:unauthenticated``;
- a bearer credential is ``Authorization: Bearer <token>`` parsed as kube-apiserver parses it
  (trimmed, split on single spaces, the scheme case-insensitive, an empty token is no
  credential) or, on a WebSocket upgrade, the ``base64url.bearer.authorization.k8s.io.``
  subprotocol.

Every 401 has one body, kube-apiserver's ("Unauthorized"): the cause is logged, never sent.
A credential never appears in a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from watchcache.auth.user import (
    ANONYMOUS,
    ANONYMOUS_USER,
    AUTHENTICATED,
    UNAUTHENTICATED,
    UserInfo,
)
from watchcache.kube.status import StatusError, unauthorized

log = logging.getLogger(__name__)

# The longest bearer token looked at. kube-apiserver has no limit of its own but its HTTP
# server's header bound (1 MiB); watchcache's HTTP server takes 64 KiB of headers in all, and
# no real token (a service-account JWT, an OIDC ID token with many groups) comes near this.
# A longer one is rejected (401) without a TokenReview.
MAX_TOKEN_LENGTH = 32 * 1024

# Where kube-apiserver puts a client certificate's fingerprint in the user's extra.
CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"

WEBSOCKET_BEARER_PREFIX = "base64url.bearer.authorization.k8s.io."

# Go's unicode.IsSpace, which strings.TrimSpace uses: not the same set as str.strip()'s
# (which also strips U+001C..U+001F).
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents to prove who it is; built by the HTTP layer.

    ``authorization``: the FIRST ``Authorization`` header value as received (tornado's
    one-character-per-byte str; not a comma-joined list of several), or None.
    ``peer_cert``: ``SSLSocket.getpeercert()`` of a client certificate the TLS layer has
    VERIFIED against the client CA, or None; ``peer_cert_der`` its DER form
    (``getpeercert(binary_form=True)``), which gives the user kube-apiserver's credential-id.
    ``peer_cert_error``: why a client certificate the client did send did not verify (another
    CA, expired, not for client use), or None; such a certificate is a bad credential.
    ``websocket_protocols``: the ``Sec-WebSocket-Protocol`` header values, given only for a
    WebSocket upgrade (kube-apiserver reads a token there for no other request).
    """

    authorization: str | None = None
    peer_cert: Mapping[str, Any] | None = None
    peer_cert_der: bytes | None = None
    peer_cert_error: str | None = None
    websocket_protocols: tuple[str, ...] = ()


class AuthenticationFailed(Exception):
    """A credential was presented and this authenticator does not accept it.

    The message is for the log: it names the cause, never the credential."""


class Authenticator(Protocol):
    """One way of authenticating (kube-apiserver's ``authenticator.Request``).

    ``authenticate`` returns the user, or None when the request carries no credential of
    this kind; it raises ``AuthenticationFailed`` for one it does not accept."""

    name: str

    async def authenticate(self, credentials: Credentials) -> UserInfo | None: ...


def token_digest(token: str) -> bytes:
    """The key a token is remembered by: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _header_text(value: str) -> str:
    """A header value as Go sees it: its bytes, read as UTF-8 (invalid bytes kept as lone
    surrogates, which no authenticator accepts)."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # not from an HTTP parser: already text
        return value
    return raw.decode("utf-8", "surrogateescape")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header value, or None when it carries none.

    kube-apiserver's rules: trim white space; split on single spaces into at most three
    parts; the scheme is ``bearer`` in any case; the token is the second part (a third is
    ignored); an empty token (``Bearer`` alone, or two spaces) is no credential at all, and
    neither is any other scheme."""
    if authorization is None:
        return None
    text = _header_text(authorization).strip(_GO_SPACE)
    if not text:
        return None
    parts = text.split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer":
        return None
    return parts[1] or None


def _b64url_raw(text: str) -> bytes:
    """Go's base64.RawURLEncoding.DecodeString: URL alphabet, no padding accepted."""
    if any(c not in _B64URL for c in text) or len(text) % 4 == 1:
        raise ValueError("invalid base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64url") from exc


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def websocket_token(protocols: Sequence[str]) -> str | None:
    """The token of a WebSocket upgrade's ``base64url.bearer.authorization.k8s.io.``
    subprotocol, or None; ``AuthenticationFailed`` as kube-apiserver fails it (two such
    subprotocols, bad base64url, not UTF-8, or no other subprotocol to answer with)."""
    token = ""
    seen = False
    others = 0
    for header in protocols:
        for item in _header_text(header).split(","):
            protocol = item.strip(_GO_SPACE)
            if not protocol.startswith(WEBSOCKET_BEARER_PREFIX):
                others += 1
                continue
            if seen:
                raise AuthenticationFailed("more than one bearer token subprotocol")
            seen = True
            try:
                decoded = _b64url_raw(protocol[len(WEBSOCKET_BEARER_PREFIX) :])
                token = decoded.decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise AuthenticationFailed("invalid bearer token subprotocol") from exc
    if token and not others:
        raise AuthenticationFailed("bearer token subprotocol without another subprotocol")
    return token or None


def acceptable_token(token: str) -> bool:
    """Whether a token is worth looking up: bounded, valid UTF-8, no control characters.
    Anything else cannot be a token an API server issued (and kube-apiserver's own HTTP
    server refuses control characters in a header before it authenticates)."""
    if len(token) > MAX_TOKEN_LENGTH:
        return False
    if token.isascii() and token.isprintable():  # every issued token: no scan by hand
        return True
    return not any(c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff" for c in token)


class TokenAuthenticator(ABC):
    """An authenticator of bearer tokens (kube-apiserver's ``authenticator.Token``, under
    its bearer-token and WebSocket-protocol request authenticators).

    The ``Authorization`` header's token is tried first, then a WebSocket subprotocol's:
    either accepted wins; a token seen and not accepted is ``AuthenticationFailed``."""

    name = "token"

    @abstractmethod
    async def authenticate_token(self, token: str) -> UserInfo | None:
        """The token's user, or None when this authenticator does not know the token;
        ``AuthenticationFailed`` when it could not decide (the API server unreachable)."""

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        failures: list[str] = []
        token = bearer_token(credentials.authorization)
        if token is not None:
            user = await self._token(token, failures)
            if user is not None:
                return user
        if credentials.websocket_protocols:
            try:
                ws = websocket_token(credentials.websocket_protocols)
            except AuthenticationFailed as exc:
                failures.append(str(exc))
                ws = None
            if ws is not None:
                user = await self._token(ws, failures)
                if user is not None:
                    return user
        if failures:
            raise AuthenticationFailed("; ".join(failures))
        return None

    async def _token(self, token: str, failures: list[str]) -> UserInfo | None:
        if not acceptable_token(token):
            failures.append("malformed or oversized bearer token")
            return None
        try:
            user = await self.authenticate_token(token)
        except AuthenticationFailed as exc:
            failures.append(str(exc))
            return None
        if user is None:
            failures.append("invalid bearer token")
        return user


# ---- client certificates ----------------------------------------------------------------

# The subject attributes kube-apiserver reads, as getpeercert() names them: CN, O, and
# Kubernetes' own UID attribute (1.3.6.1.4.1.57683.2, which OpenSSL has no name for).
_CN, _O, _UID = "commonName", "organizationName", "1.3.6.1.4.1.57683.2"


class X509Authenticator:
    """A verified client certificate's subject: CN the user name, each O a group, the
    Kubernetes UID attribute the uid, the DER's SHA-256 the credential-id extra; as
    kube-apiserver's ``--client-ca-file``.

    The TLS layer verifies the certificate against the client CA; this maps a verified one
    and refuses one that did not verify (401 unless another credential of the request is
    good, as in kube-apiserver). A certificate without a CN is no credential (anonymous), as
    in kube-apiserver."""

    name = "x509"

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        if credentials.peer_cert_error is not None:
            raise AuthenticationFailed(f"x509: {credentials.peer_cert_error}")
        if credentials.peer_cert is None:
            return None
        return user_from_certificate(credentials.peer_cert, credentials.peer_cert_der)


def user_from_certificate(cert: Mapping[str, Any], der: bytes | None = None) -> UserInfo | None:
    """The user of a ``getpeercert()`` dict, or None for a subject without a CN."""
    cn = ""
    orgs: list[str] = []
    uids: list[str] = []
    try:
        for rdn in cert.get("subject", ()):
            for attr, value in rdn:
                if not isinstance(value, str):
                    continue
                if attr == _CN:
                    cn = value  # Go's pkix.Name keeps the last CN
                elif attr == _O:
                    orgs.append(value)
                elif attr == _UID:
                    uids.append(value)
    except (TypeError, ValueError) as exc:
        raise AuthenticationFailed("unreadable client certificate subject") from exc
    if not cn:
        return None
    if len(uids) > 1:
        raise AuthenticationFailed("client certificate has more than one UID")
    if uids and not uids[0]:
        raise AuthenticationFailed("client certificate has an empty UID")
    extra: dict[str, list[str]] = {}
    if der is not None:
        extra[CREDENTIAL_ID_KEY] = ["X509SHA256=" + hashlib.sha256(der).hexdigest()]
    return UserInfo.of(cn, uid=uids[0] if uids else "", groups=orgs, extra=extra)


# ---- the chain ---------------------------------------------------------------------------


def with_authenticated_group(user: UserInfo) -> UserInfo:
    """kube-apiserver's AuthenticatedGroupAdder."""
    if user.name == ANONYMOUS or AUTHENTICATED in user.groups or UNAUTHENTICATED in user.groups:
        return user
    return UserInfo(user.name, user.uid, (*user.groups, AUTHENTICATED), user.extra)


class UnionAuthenticator:
    """The whole chain: ``authenticators`` in order, then anonymous (if on).

    ``authenticate`` returns the user or raises ``StatusError`` 401 (kube-apiserver's exact
    body). An authenticator's unexpected exception is a failure of that authenticator, so
    garbage in a request is a 401, never a 500."""

    def __init__(self, authenticators: Sequence[Authenticator], *, anonymous: bool = True) -> None:
        self.authenticators = tuple(authenticators)
        self.anonymous = anonymous

    async def authenticate(self, credentials: Credentials) -> UserInfo:
        failures: list[str] = []
        for auth in self.authenticators:
            try:
                user = await auth.authenticate(credentials)
            except AuthenticationFailed as exc:
                failures.append(f"{auth.name}: {exc}")
                continue
            except Exception as exc:  # a bug or garbage: that authenticator failed
                log.warning("authenticator %s failed: %s", auth.name, type(exc).__name__)
                failures.append(f"{auth.name}: {type(exc).__name__}")
                continue
            if user is not None:
                return with_authenticated_group(user)
        if failures:
            log.debug("401: credentials not accepted (%s)", "; ".join(failures))
            raise unauthorized()
        if self.anonymous:
            return ANONYMOUS_USER
        log.debug("401: no credentials and anonymous authentication is off")
        raise unauthorized()


async def authenticate(
    authenticators: Sequence[Authenticator], credentials: Credentials, *, anonymous: bool = True
) -> UserInfo:
    """One request through the chain (see ``UnionAuthenticator``); 401 as ``StatusError``."""
    return await UnionAuthenticator(authenticators, anonymous=anonymous).authenticate(credentials)


__all__ = [
    "ANONYMOUS_USER",
    "AuthenticationFailed",
    "Authenticator",
    "Credentials",
    "StatusError",
    "TokenAuthenticator",
    "UnionAuthenticator",
    "X509Authenticator",
    "authenticate",
    "bearer_token",
    "token_digest",
    "user_from_certificate",
    "websocket_token",
    "with_authenticated_group",
]
