"""What kube-apiserver's authorizer is asked about a request: the RequestInfo its
RequestInfoFactory reads from the method, the decoded path and the query, the authorizer
attributes taken from it, and the 403 Forbidden it answers when they are denied.

watchcache must ask the same question the API server would ask for the same request, or a
cached answer could show a user what the API server would refuse them (or refuse what it
would allow): so the rules here are the API server's, down to its quirks (the legacy
``/watch/`` and ``/proxy/`` path verbs, a list with ``fieldSelector=metadata.name=x`` naming
its object, the ``namespaces`` special case).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from watchcache.kube.listoptions import _parse_int64, go_bool
from watchcache.kube.selectors import (
    SelectorError,
    _go_quote,
    parse_field_selector,
    parse_label_selector,
)
from watchcache.kube.status import StatusError

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_API_PREFIXES = frozenset({"api"})
# Verbs a path may carry instead of the method; "proxy" takes no subresource.
_PATH_VERBS = frozenset({"proxy", "watch"})
_PATH_VERBS_WITHOUT_SUBRESOURCES = frozenset({"proxy"})
# /api/v1/namespaces/x/status is the namespace's own subresource, not a resource "status".
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_VERBS_WITH_SELECTORS = frozenset({"list", "watch", "deletecollection"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
# The list options whose decoding can fail (a bad selector, a bad integer); a failure makes
# the API server forget the fieldSelector's name (see _list_options_decode).
_INT_OPTIONS = ("timeoutSeconds", "limit")


@dataclass(frozen=True, slots=True)
class Attributes:
    """What an authorizer decides on (kube's authorizer.AttributesRecord without the user).

    Hashable, and only what a SubjectAccessReview carries: a resource request has no path
    (the review does not send it), so two URLs that differ only beyond the subresource (a
    proxied path) share one cached decision, as they do in kube's webhook cache.
    """

    resource_request: bool
    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""  # non-resource requests only

    @classmethod
    def non_resource(cls, path: str, verb: str) -> Attributes:
        return cls(resource_request=False, verb=verb, path=path)

    def review_spec(self) -> dict[str, Any]:
        """The attributes part of a SubjectAccessReview spec, empty fields left out as the
        API server's own JSON leaves them out."""
        if not self.resource_request:
            return {"nonResourceAttributes": {"path": self.path, "verb": self.verb}}
        pairs = (
            ("namespace", self.namespace),
            ("verb", self.verb),
            ("group", self.group),
            ("version", self.version),
            ("resource", self.resource),
            ("subresource", self.subresource),
            ("name", self.name),
        )
        return {"resourceAttributes": {k: v for k, v in pairs if v}}


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """k8s.io/apiserver's RequestInfo: everything RequestInfoFactory reads from a URL."""

    resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    # The path's parts from the resource on: resource/name/subresource/anything/further.
    parts: tuple[str, ...] = ()
    # The raw selectors, for verbs that honour them (list, watch, deletecollection) and not
    # for the legacy /watch/ path; selector-aware authorizers would read them.
    field_selector: str = ""
    label_selector: str = ""
    # The request could not be told apart (the API server's 500 "failed to create RequestInfo").
    error: str = field(default="", compare=False)

    @property
    def attributes(self) -> Attributes:
        if not self.resource_request:
            return Attributes.non_resource(self.path, self.verb)
        return Attributes(
            resource_request=True,
            verb=self.verb,
            group=self.group,
            version=self.version,
            resource=self.resource,
            subresource=self.subresource,
            namespace=self.namespace,
            name=self.name,
        )


def _split_path(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _list_options_decode(query: Mapping[str, list[str]]) -> tuple[bool, str | None]:
    """(watch, the fieldSelector's metadata.name) as the API server's ListOptions decoding
    gives them. When any option fails to decode, kube falls back to reading ``watch`` alone
    (only "false" and "0" are false) and takes no name from the selector."""
    watch_text = _first(query, "watch")
    try:
        for option in _INT_OPTIONS:
            text = _first(query, option)
            if text is not None:
                _parse_int64(text)
        parse_label_selector(_first(query, "labelSelector") or "")
        fields = parse_field_selector(_first(query, "fieldSelector") or "")
    except (ValueError, SelectorError):
        return watch_text is not None and watch_text.lower() not in ("false", "0"), None
    return go_bool(watch_text), fields.value_for("metadata.name")


def _is_path_segment_name(name: str) -> bool:
    """apimachinery's IsPathSegmentName: a name that can stand as one URL path segment."""
    return name not in (".", "..") and "/" not in name and "%" not in name


def request_info(method: str, path: str, query: Mapping[str, list[str]]) -> RequestInfo:
    """RequestInfoFactory.NewRequestInfo for ``method`` on ``path`` (decoded, as Go's
    URL.Path) with ``query`` (every parameter's values, decoded, blanks kept)."""
    verb = method.lower()
    parts = _split_path(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return RequestInfo(resource_request=False, path=path, verb=verb)
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_API_PREFIXES:
        if len(parts) < 3:
            return RequestInfo(resource_request=False, path=path, verb=verb)
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]

    verb_from_path = parts[0] in _PATH_VERBS
    if verb_from_path:
        if len(parts) < 2:
            return RequestInfo(
                resource_request=True,
                path=path,
                verb=verb,
                api_prefix=prefix,
                group=group,
                version=version,
                error="unable to determine kind and namespace from url",
            )
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method, "")

    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]

    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = ""
    if len(parts) >= 3 and verb not in _PATH_VERBS_WITHOUT_SUBRESOURCES:
        subresource = parts[2]

    if not name and verb == "get":
        watch, selected = _list_options_decode(query)
        verb = "watch" if watch else "list"
        if selected is not None and _is_path_segment_name(selected):
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"

    field_selector = label_selector = ""
    if not verb_from_path and verb in _VERBS_WITH_SELECTORS:
        field_selector = _first(query, "fieldSelector") or ""
        label_selector = _first(query, "labelSelector") or ""

    return RequestInfo(
        resource_request=True,
        path=path,
        verb=verb,
        api_prefix=prefix,
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        parts=tuple(parts),
        field_selector=field_selector,
        label_selector=label_selector,
    )


def request_attributes(method: str, path: str, query: Mapping[str, list[str]]) -> Attributes:
    """The authorizer attributes of a request; a URL the API server cannot resolve raises
    the 500 it answers (a Status here, where kube writes plain text)."""
    info = request_info(method, path, query)
    if info.error:
        raise StatusError(500, f"failed to create RequestInfo: {info.error}, {path}")
    return info.attributes


# --- 403 Forbidden --------------------------------------------------------------------------


def _sanitize(text: str) -> str:
    """What kube does to its own part of the message, so that it never reads as HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def forbidden_message(user_name: str, attrs: Attributes, reason: str = "") -> str:
    """The message of kube-apiserver's 403: who cannot do what, then the authorizer's reason
    (``: reason``, only when there is one)."""
    who = f"User {_go_quote(user_name)} cannot {attrs.verb}"
    if not attrs.resource_request:
        what = f"{who} path {_go_quote(attrs.path)}"
    else:
        resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
        what = f"{who} resource {_go_quote(resource)} in API group {_go_quote(attrs.group)}"
        if attrs.namespace:
            what += f" in the namespace {_go_quote(attrs.namespace)}"
        else:
            what += " at the cluster scope"
    text = _sanitize(what)
    if reason:
        text += f": {reason}"
    if not attrs.group and not attrs.resource:
        return f"forbidden: {text}"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    if not attrs.name:
        return f"{qualified} is forbidden: {text}"
    return f"{qualified} {_go_quote(attrs.name)} is forbidden: {text}"


def forbidden(user_name: str, attrs: Attributes, reason: str = "") -> StatusError:
    """kube-apiserver's 403 Forbidden Status for ``attrs`` denied to ``user_name``; details
    carry the name, group and resource (as ``kind``), each only when not empty."""
    pairs = (("name", attrs.name), ("group", attrs.group), ("kind", attrs.resource))
    details = {k: v for k, v in pairs if v}
    return StatusError(403, forbidden_message(user_name, attrs, reason), details=details)
