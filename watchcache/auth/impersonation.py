"""Impersonation, both ways.

Outward, ``impersonation_headers``: a write that watchcache sends upstream carries the
caller's identity as ``Impersonate-*`` headers, so that the API server's RBAC, admission and
audit see the real caller. kube-apiserver takes impersonated groups, when any are given, as
the whole list (adding ``system:authenticated`` only when neither it nor
``system:unauthenticated`` is there), so every group of the caller is sent, in order,
``system:authenticated`` included: the impersonated request then has exactly the caller's
groups. (A non-anonymous caller with no group at all cannot be reproduced: the API server
adds ``system:authenticated``, as its authenticators do for every user anyway.)

Inward, ``resolve_impersonation``: a client's own ``Impersonate-*`` headers are never
forwarded; they are checked as kube-apiserver (1.36, constrained impersonation on) checks
them, mode by mode, and give the user the request then runs as, or kube's 400 or 403.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import unquote_to_bytes

from cachetools import LRUCache

from watchcache.auth.authz import Authorizer
from watchcache.auth.user import ANONYMOUS, AUTHENTICATED, UNAUTHENTICATED, UserInfo
from watchcache.kube.attributes import Attributes, forbidden
from watchcache.kube.selectors import _go_quote
from watchcache.kube.status import StatusError

USER_HEADER = "Impersonate-User"
UID_HEADER = "Impersonate-Uid"
GROUP_HEADER = "Impersonate-Group"
EXTRA_PREFIX = "Impersonate-Extra-"

AUTH_GROUP = "authentication.k8s.io"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
MASTERS_GROUP = "system:masters"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
ASSOCIATED_NODE_KEYS = "authentication.kubernetes.io/associated-node-keys"
# From this many groups (or extra values) on, the constrained modes first try one wildcard check.
_MANY = 4

# --- outward ----------------------------------------------------------------------------------

# RFC 7230 token characters, less upper case (the API server lower-cases the header name
# before it unescapes it, so an upper-case letter survives only %-encoded) and '%'.
_KEY_SAFE = frozenset((string.ascii_lowercase + string.digits + "!#$&'*+-.^_`|~").encode())


def escape_extra_key(key: str) -> str:
    """An extra key as the name part of an ``Impersonate-Extra-`` header: every byte that is
    no lower-case token character %-encoded, so that the API server decodes the same key."""
    return "".join(chr(b) if b in _KEY_SAFE else f"%{b:02X}" for b in key.encode())


def _header_value(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("an identity with a line break cannot be sent as a header")
    return value


def impersonation_headers(user: UserInfo) -> list[tuple[str, str]]:
    """The headers that make an upstream request run as ``user`` (names may repeat:
    one ``Impersonate-Group`` per group, one ``Impersonate-Extra-<key>`` per value)."""
    headers = [(USER_HEADER, _header_value(user.name))]
    if user.uid:
        headers.append((UID_HEADER, _header_value(user.uid)))
    headers += [(GROUP_HEADER, _header_value(group)) for group in user.groups]
    for key, values in user.extra:
        name = EXTRA_PREFIX + escape_extra_key(key)
        headers += [(name, _header_value(value)) for value in values]
    return headers


def is_impersonation_header(name: str) -> bool:
    """Whether a client's header asks for impersonation (and so must not be forwarded)."""
    lower = name.lower()
    return lower in ("impersonate-user", "impersonate-uid", "impersonate-group") or (
        lower.startswith("impersonate-extra-")
    )


# --- inward -----------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# IsDomainPrefixedPath: an optional DNS-subdomain prefix, then a path of these characters.
_EXTRA_PATH = re.compile(r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")


def _is_subdomain(name: str) -> bool:
    return len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def split_service_account(username: str) -> tuple[str, str] | None:
    """serviceaccount.SplitUsername: (namespace, name) of ``system:serviceaccount:ns:name``."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace) or not _is_subdomain(name):
        return None
    return namespace, name


def node_name(username: str) -> str | None:
    if not username.startswith(NODE_PREFIX):
        return None
    name = username[len(NODE_PREFIX) :]
    return name if _is_subdomain(name) else None


@dataclass(frozen=True, slots=True)
class Wanted:
    """The user the headers ask for, raw (user.DefaultInfo before any defaulting)."""

    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def only_name(self) -> bool:
        return not self.uid and not self.groups and not self.extra

    def go_syntax(self) -> str:
        """Go's %#v of the &user.DefaultInfo, which kube's 400 message shows."""
        groups = (
            "[]string{" + ", ".join(_go_quote(g) for g in self.groups) + "}"
            if self.groups
            else "[]string(nil)"
        )
        if self.extra:
            pairs = (
                _go_quote(k) + ":[]string{" + ", ".join(_go_quote(v) for v in vs) + "}"
                for k, vs in self.extra
            )
            extra = "map[string][]string{" + ", ".join(pairs) + "}"
        else:
            extra = "map[string][]string(nil)"
        return (
            f"&user.DefaultInfo{{Name:{_go_quote(self.name)}, UID:{_go_quote(self.uid)}, "
            f"Groups:{groups}, Extra:{extra}}}"
        )


def _unescape_extra_key(encoded: str) -> str:
    """url.PathUnescape, or the key as it is when it does not decode."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", encoded):
        return encoded
    decoded = unquote_to_bytes(encoded)
    return decoded.decode("utf-8", errors="surrogateescape")


def wanted_user(headers: Iterable[tuple[str, str]]) -> Wanted | None:
    """What the ``Impersonate-*`` headers ask for; None when they ask for nothing. Groups,
    a UID or extras without a user name are kube's 400."""
    name = uid = None
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    for header, value in headers:
        lower = header.lower()
        if lower == "impersonate-user":
            name = value if name is None else name
        elif lower == "impersonate-uid":
            uid = value if uid is None else uid
        elif lower == "impersonate-group":
            groups.append(value)
        elif lower.startswith("impersonate-extra-"):
            key = _unescape_extra_key(lower[len(EXTRA_PREFIX) :])
            extra.setdefault(key, []).append(value)
    wanted = Wanted(
        name or "",
        uid or "",
        tuple(groups),
        tuple(sorted((k, tuple(v)) for k, v in extra.items())),
    )
    if not wanted.name:
        if wanted.uid or wanted.groups or wanted.extra:
            message = f"requested {wanted.go_syntax()} without impersonating a user name"
            raise StatusError(400, message)
        return None
    return wanted


def _resource(verb: str, group: str, resource: str, name: str = "", **kw: str) -> Attributes:
    version = "v1"
    return Attributes(True, verb, group, version, resource, name=name, **kw)


def _on(attrs: Attributes, mode: str) -> Attributes:
    """The request's own attributes with the verb impersonate-on:<mode>:<verb>."""
    return replace(attrs, verb=f"impersonate-on:{mode}:{attrs.verb}")


class _Checker:
    """One mode's authorization checks, through an authorizer that may rewrite the
    requestor (the associated-node mode hides its extra values) and the name."""

    def __init__(self, authorizer: Authorizer, requestor: UserInfo, *, node_wildcard: str = ""):
        self.authorizer = authorizer
        self.requestor = requestor
        self.as_user = requestor
        self.node_wildcard = node_wildcard
        if node_wildcard:
            keys = tuple(sorted(k for k, _ in requestor.extra))
            self.as_user = replace(requestor, extra=((ASSOCIATED_NODE_KEYS, keys),))

    async def check(self, attrs: Attributes) -> None:
        if self.node_wildcard and attrs.verb == self.node_wildcard:
            attrs = replace(attrs, name="*")
        decision = await self.authorizer.authorize(self.as_user, attrs)
        if not decision.allowed:
            raise forbidden(self.requestor.name, attrs, decision.reason)

    async def allowed(self, attrs: Attributes) -> bool:
        try:
            await self.check(attrs)
        except StatusError as exc:
            if exc.code == 403:
                return False
            raise
        return True


def _validate_extra(extra: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for key, values in extra:
        if not key:
            return "impersonating the empty string key in extra is not allowed"
        problem = _domain_prefixed_path_problem(key)
        if problem:
            return f"impersonating an invalid key in extra is not allowed: {problem}"
        if key != key.lower():
            return f"impersonating a non-lowercase key in extra is not allowed: {_go_quote(key)}"
        if not values:
            return "impersonating empty values in extra is not allowed"
        if "" in values:
            return "impersonating the empty string value in extra is not allowed"
    return ""


def _domain_prefixed_path_problem(key: str) -> str:
    """IsDomainPrefixedPath's first error on field extra.key, "" when the key is fine."""
    field = "extra.key"
    if not key:
        return f"{field}: Required value"
    prefix, slash, path = key.partition("/")
    if not slash or not prefix or not path:
        return f'{field}: Invalid value: {_go_quote(key)}: must be a domain-prefixed path (such as "acme.io/foo")'  # noqa: E501
    if not _is_subdomain(prefix):
        return f"{field}: Invalid value: {_go_quote(prefix)}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"  # noqa: E501
    if not _EXTRA_PATH.fullmatch(path):
        regex = "[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+"
        return f"{field}: Invalid value: {_go_quote(path)}: Invalid path (regex used for validation is '{regex}')"  # noqa: E501
    return ""


class _Mode:
    """impersonationModeState: the checks of each field the headers set, with the verb
    ``impersonate`` (legacy) or ``impersonate:<mode>`` (constrained)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.constrained = name != "legacy"
        self.verb = f"impersonate:{name}" if self.constrained else "impersonate"
        self.group = AUTH_GROUP if self.constrained else ""

    def applies(self, wanted: Wanted, requestor: UserInfo) -> bool:
        if self.name == "associated-node":
            node = node_name(wanted.name)
            values = dict(requestor.extra).get(NODE_NAME_KEY, ())
            return (
                wanted.only_name
                and node is not None
                and split_service_account(requestor.name) is not None
                and len(values) == 1
                and values[0] == node
            )
        if self.name == "arbitrary-node":
            return wanted.only_name and node_name(wanted.name) is not None
        if self.name == "serviceaccount":
            return wanted.only_name and split_service_account(wanted.name) is not None
        if self.name == "user-info":
            return node_name(wanted.name) is None and split_service_account(wanted.name) is None
        return True

    async def resolve(
        self, checker: _Checker, wanted: Wanted, attrs: Attributes
    ) -> UserInfo | None:
        if not self.applies(wanted, checker.requestor):
            return None
        if self.constrained:
            await checker.check(_on(attrs, self.name))
        groups = list(wanted.groups)
        user_attrs = _resource(self.verb, self.group, "users", wanted.name)
        node = node_name(wanted.name) if self.constrained else None
        account = split_service_account(wanted.name)
        if node is not None:
            user_attrs = replace(user_attrs, resource="nodes", name=node)
            groups = [NODES_GROUP]
        elif account is not None:
            namespace, name = account
            user_attrs = replace(
                user_attrs, resource="serviceaccounts", namespace=namespace, name=name
            )
            if not wanted.groups:
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        await checker.check(user_attrs)
        if wanted.uid:
            await checker.check(_resource(self.verb, AUTH_GROUP, "uids", wanted.uid))
        await self._groups(checker, wanted.groups)
        await self._extra(checker, wanted.extra)
        if wanted.name == ANONYMOUS:
            if UNAUTHENTICATED not in groups:
                groups.append(UNAUTHENTICATED)
        elif UNAUTHENTICATED not in groups and AUTHENTICATED not in groups:
            groups.append(AUTHENTICATED)
        return UserInfo(wanted.name, wanted.uid, tuple(groups), wanted.extra)

    async def _groups(self, checker: _Checker, groups: tuple[str, ...]) -> None:
        if not groups:
            return
        base = _resource(self.verb, self.group, "groups")
        if self.constrained:
            if "" in groups:
                message = "impersonating the empty string group is not allowed"
                raise forbidden(checker.requestor.name, base, message)
            if MASTERS_GROUP in groups:
                message = "impersonating the system:masters group is not allowed"
                raise forbidden(checker.requestor.name, replace(base, name=MASTERS_GROUP), message)
            if len(groups) >= _MANY and await checker.allowed(replace(base, name="*")):
                return
        for group in groups:
            await checker.check(replace(base, name=group))

    async def _extra(
        self, checker: _Checker, extra: tuple[tuple[str, tuple[str, ...]], ...]
    ) -> None:
        if not extra:
            return
        base = _resource(self.verb, AUTH_GROUP, "userextras")
        if self.constrained:
            problem = _validate_extra(extra)
            if problem:
                raise forbidden(checker.requestor.name, base, problem)
            many = len(extra) >= _MANY or sum(len(v) for _, v in extra) >= _MANY
            if many and await checker.allowed(replace(base, subresource="*", name="*")):
                return
        for key, values in extra:
            for value in values:
                await checker.check(replace(base, subresource=key, name=value))


_MODES = tuple(
    _Mode(name)
    for name in ("associated-node", "arbitrary-node", "serviceaccount", "user-info", "legacy")
)


class Impersonation:
    """kube-apiserver's impersonation filter: remembers, per requestor, the mode that last
    succeeded and tries it first (so that its error, when it now fails, is the one given)."""

    def __init__(self, authorizer: Authorizer, *, maxsize: int = 10_000) -> None:
        self.authorizer = authorizer
        self._last_mode: LRUCache[str, int] = LRUCache(maxsize)

    async def resolve(
        self, requestor: UserInfo, headers: Iterable[tuple[str, str]], attrs: Attributes
    ) -> UserInfo:
        """The user the request runs as: ``requestor`` when no impersonation is asked for,
        the impersonated user when every check allows it; else kube's 400 or 403."""
        wanted = wanted_user(headers)
        if wanted is None:
            return requestor
        last = self._last_mode.get(requestor.name)
        order = list(range(len(_MODES)))
        if last is not None:
            order.remove(last)
            order.insert(0, last)
        first_error: StatusError | None = None
        for index in order:
            mode = _MODES[index]
            node_wildcard = "impersonate:associated-node" if mode.name == "associated-node" else ""
            checker = _Checker(self.authorizer, requestor, node_wildcard=node_wildcard)
            try:
                user = await mode.resolve(checker, wanted, attrs)
            except StatusError as exc:
                if exc.code != 403:
                    raise  # the authorizer could not answer: not a denial
                first_error = first_error or exc
                continue
            if user is not None:
                self._last_mode[requestor.name] = index
                return user
        raise first_error or forbidden(requestor.name, attrs, "all impersonation modes failed")


async def resolve_impersonation(
    user: UserInfo,
    headers: Iterable[tuple[str, str]],
    authorizer: Authorizer,
    attrs: Attributes,
) -> UserInfo:
    """One-off ``Impersonation(authorizer).resolve``, without the per-requestor mode memory."""
    return await Impersonation(authorizer).resolve(user, headers, attrs)
