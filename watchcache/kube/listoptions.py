"""The query of a get, list or watch, parsed and refused exactly as kube-apiserver v1.36 does.

A client must not tell us from the API server by a malformed query: the same parameters are
accepted, and a refusal has the same code, reason and message. The order of the checks is the
apiserver's, because with several faults only the first is reported:

1. ``timeout`` (lists and gets only; a filter that runs before authentication): 400.
2. Parameter conversion, in field order: ``timeoutSeconds`` then ``limit`` (strconv.ParseInt),
   then ``labelSelector`` then ``fieldSelector`` grammar: 400 with the bare Go error text.
3. Defaulting, then ValidateListOptions: 422 ``ListOptions.meta.k8s.io "" is invalid: ...``.
4. Field labels the resource does not support: 400 ``field label not supported: <path>``.
5. The storage layer: a list's ``continue`` token and ``resourceVersion`` (400); a watch's or
   get's non-numeric ``resourceVersion`` is a plain Go error there, hence 500 with no reason.

Only the first value of a repeated parameter counts; unknown parameters (and ``shardSelector``,
an alpha gate that is off) are ignored. Booleans: absent, ``0`` or any case of ``false`` is
false, anything else, even ``x`` or an empty value, is true.

Semantics the store must implement (cacher + CacheDelegator, WatchList, ConsistentListFromCache
and ListFromCacheSnapshot on, as by default in 1.36), with the one place watchcache departs
from them on purpose (rv unset). "Wait" is at most 3 s for the cache to reach an RV, then the
504 of too_large_resource_version(N, current) with Retry-After 1:

LIST (limit <= 0 is no limit; rv "00" is numerically 0 but not the literal "0" below)
- rv unset: the apiserver makes a consistent read (its cache first waits until it reaches
  etcd's current RV, else etcd answers). watchcache deliberately does not ask etcd's RV (that
  would cost the upstream request the cache exists to save): it answers from the cache as it
  is, at once. That state trails etcd by the watch's latency (while the watch is down, by
  the outage: the last state seen), and every write made through this watchcache process is
  in it, since a write's answer is held until the cache shows it (handlers.read
  wait_for_cache; bounded by write_wait, past which the answer goes and the miss is counted
  and logged). Writes made elsewhere show within the watch latency. ``limit`` honoured; the
  continue token carries the list's RV.
- rv="0" (match unset or NotOlderThan): the cache as it is, no wait. ``limit`` is IGNORED
  whenever rv is the literal "0": the whole list, no continue token.
- rv=N, match unset, no limit; or match NotOlderThan: wait until cache RV >= N, serve the
  latest state; list RV = the cache's RV. ``limit`` honoured.
- rv=N, match unset, limit > 0 (legacy) or match Exact: the state at exactly N, from the
  newest snapshot <= N (wait first if N is ahead of the cache). No snapshot: the apiserver
  asks etcd, which answers list_too_old() (410) once N is compacted; watchcache should
  forward upstream, or answer list_too_old(). Exact with rv="0": 422 (validation).
- continue: rv must be unset or "0" (else 400), match must be unset (else 422). Token RV > 0:
  the snapshot at that RV from the token's start key; RV -1: latest state from that key.
  Expired: continue_expired(start) (410, with a fresh -1 token in metadata.continue).
- Paging: a page stops at ``limit`` matching items; "more" means unfiltered items remain, so
  a selective list may end on an empty page. remainingItemCount only with no selectors.

WATCH (continue and limit ignored). A plain watch with rv unset or "0" and neither
sendInitialEvents nor resourceVersionMatch is DEFAULTED to sendInitialEvents=true +
NotOlderThan; the parsed options below already carry those defaults.
- sendInitialEvents=true: ADDED for every matching object, then, only if
  allowWatchBookmarks, a BOOKMARK annotated ``k8s.io/initial-events-end: "true"`` at the
  cache RV the state was taken at, then changes. rv unset: first wait until the cache reaches
  etcd's current RV; rv "0": no wait; rv N: wait until >= N. A failed wait is the 504 Status
  as a watch ERROR event (HTTP 200), not an HTTP error.
- sendInitialEvents=false: no initial state. rv unset: changes after etcd's current RV;
  "0": after the cache's RV; N: as legacy below.
- rv=N without sendInitialEvents (legacy): the history after N. N older than the window
  (N < oldest event RV - 1, or < list RV after a relist): one ERROR event watch_too_old()
  (410 Expired) and the stream ends. N ahead of the cache: no error; events <= N skipped.
- timeoutSeconds: absent or 0: the server picks [minRequestTimeout, 2x) (1800 s default);
  > 0: that many seconds; < 0: HTTP 200, then one ERROR event, 500 InternalError "context
  deadline exceeded".

GET: rv unset: the apiserver reads etcd; watchcache answers from the cache, as for a LIST with
rv unset (above). "0": the cache as is; N: wait until >= N, else the 504.
A list's or get's ``timeout`` is its deadline: past it, 504 Timeout "Timeout: request did not
complete within the allotted timeout" (details {}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from watchcache.kube.continuetokens import ContinueToken, decode_continue, encode_continue
from watchcache.kube.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    _go_quote,  # Go's strconv.Quote; shared rather than copied
    parse_field_selector,
    parse_label_selector,
)
from watchcache.kube.status import StatusError

NOT_OLDER_THAN, EXACT = "NotOlderThan", "Exact"
INITIAL_EVENTS_END_ANNOTATION = "k8s.io/initial-events-end"
_LIST_TOO_OLD = "The resourceVersion for the provided list is too old."
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter"
)
_INCONSISTENT_CONTINUE = (
    ", or use the continue token in this response to retrieve the remainder of the results. "
    "Continuing with the provided token results in an inconsistent list - objects that were "
    "created, modified, or deleted between the time the first chunk was returned and now may "
    "show up in the list."
)
_MAX_UINT64 = 2**64 - 1


class GoStatusError(StatusError):
    """A StatusError rendered as Go renders metav1.Status: an empty reason is omitted, and a
    list's continue token may ride in metadata (the etcd 410 for an expired continue)."""

    def __init__(self, *args: Any, continue_token: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.continue_token = continue_token

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.continue_token:
            body["metadata"] = {"continue": self.continue_token}
        if not body["reason"]:
            del body["reason"]
        return body


# --- the Status errors ------------------------------------------------------------------------


def too_large_resource_version(requested: int, current: int, retry_after: int = 1) -> StatusError:
    """storage.NewTooLargeResourceVersionError: the cacher waits 3 s, then asks for a retry
    after 1 s (etcd, for an Exact list ahead of it, passes 0: no Retry-After at all)."""
    details: dict[str, Any] = {
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]
    }
    headers = {}
    if retry_after > 0:
        details["retryAfterSeconds"] = retry_after
        headers["Retry-After"] = str(retry_after)
    message = f"Timeout: Too large resource version: {requested}, current: {current}"
    return StatusError(504, message, reason="Timeout", details=details, headers=headers)


def list_too_old(requested: int | None = None) -> StatusError:
    """etcd's 410 for a list at a compacted RV. The cacher's own "too old resource version: N"
    never reaches clients (it falls back to etcd), and etcd's message names no RV, so
    ``requested`` is accepted for the caller's convenience and not shown."""
    del requested
    return StatusError(410, _LIST_TOO_OLD, reason="Expired")


def continue_expired(start_key: str | None = None) -> StatusError:
    """etcd's 410 for a continue token whose RV is compacted. Given the token's start key, the
    answer carries (as etcd's does) a token to go on from that key at the latest RV (-1)."""
    if start_key is None:
        return GoStatusError(410, _CONTINUE_EXPIRED + ".", reason="Expired")
    return GoStatusError(
        410,
        _CONTINUE_EXPIRED + _INCONSISTENT_CONTINUE,
        reason="Expired",
        continue_token=encode_continue(start_key, -1),
    )


def watch_too_old(requested: int, oldest: int) -> dict[str, Any]:
    """The Status in the ERROR event of a watch from an RV older than the history window.

    ``oldest`` is the RV of the oldest event held (or the list RV + 1 right after a relist);
    like the cacher, the message shows oldest - 1, the smallest RV a watch may resume from.
    """
    message = f"too old resource version: {requested} ({oldest - 1})"
    return StatusError(410, message, reason="Expired").to_dict()


def invalid_continue(detail: str) -> StatusError:
    """The 400 for an undecodable token; ``detail`` is a decode_continue message."""
    return StatusError(400, f"invalid continue token: {detail}")


def resource_version_int(rv: str, *, verb: str = "list") -> int:
    """APIObjectVersioner.ParseResourceVersion: "" and "0" are 0, else a uint64.

    A list checks it in storage.ValidateListOptions (400 "invalid resource version: ...");
    a watch or get hits it as a bare storage error, which the apiserver serves as a 500.
    """
    if rv in ("", "0"):
        return 0
    try:
        return _parse_uint(rv)
    except ValueError as exc:
        message = f"resourceVersion: Invalid value: {_go_quote(rv)}: {exc}"
    if verb == "list":
        raise StatusError(400, f"invalid resource version: {message}") from None
    raise GoStatusError(500, message, reason="") from None


# --- Go number and duration parsing -----------------------------------------------------------


def _scan_uint(text: str) -> int | str:
    """strconv.ParseUint(text, 10, 64)'s result or its error kind. An overflow is reported
    where it happens, even if a bad character follows."""
    number = 0
    for ch in text:
        if not "0" <= ch <= "9":
            return "invalid syntax"
        number = number * 10 + ord(ch) - 48
        if number > _MAX_UINT64:
            return "value out of range"
    return number if text else "invalid syntax"


def _parse_uint(text: str) -> int:
    result = _scan_uint(text)
    if isinstance(result, str):
        raise ValueError(f"strconv.ParseUint: parsing {_go_quote(text)}: {result}")
    return result


def _parse_int64(text: str) -> int:
    """strconv.ParseInt(text, 10, 64): an optional sign, then ASCII digits; errors quote the
    whole text, sign included."""
    negative = text[:1] == "-"
    result = _scan_uint(text[1:] if text[:1] in ("+", "-") else text)
    if isinstance(result, int) and result >= 2**63 + negative:
        result = "value out of range"
    if isinstance(result, str):
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(text)}: {result}")
    return -result if negative else result


def _time_quote(text: str) -> str:
    """time's own quote(): bytes of non-ASCII or control characters as \\xHH."""
    out = ['"']
    for ch in text:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{byte:02x}" for byte in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    return "".join(out) + '"'


_UNITS = {b"ns": 1, b"us": 10**3, "µs".encode(): 10**3, "μs".encode(): 10**3, b"ms": 10**6}
_UNITS |= {b"s": 10**9, b"m": 60 * 10**9, b"h": 3600 * 10**9}


def parse_go_duration(text: str) -> int:
    """time.ParseDuration in nanoseconds, with its error messages (as ValueError)."""
    invalid = ValueError(f"time: invalid duration {_time_quote(text)}")
    data = text.encode("utf-8", "surrogatepass")
    negative = data[:1] == b"-"
    if data[:1] in (b"-", b"+"):
        data = data[1:]
    if data == b"0":
        return 0
    if not data:
        raise invalid
    total = 0
    while data:
        if not (data[:1] == b"." or data[:1].isdigit()):
            raise invalid
        i = 0
        whole = 0
        while i < len(data) and 48 <= data[i] <= 57:
            whole = whole * 10 + data[i] - 48
            if whole > 2**63:
                raise invalid
            i += 1
        pre, data = i > 0, data[i:]
        frac, scale, post = 0, 1.0, False
        if data[:1] == b".":
            i, overflow = 1, False
            while i < len(data) and 48 <= data[i] <= 57:
                if not overflow and frac <= (2**63 - 1) // 10 and frac * 10 + data[i] - 48 <= 2**63:
                    frac, scale = frac * 10 + data[i] - 48, scale * 10
                else:
                    overflow = True
                i += 1
            post, data = i > 1, data[i:]
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(data) and not (data[i] == 46 or 48 <= data[i] <= 57):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {_time_quote(text)}")
        unit_text, data = data[:i], data[i:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            name = _time_quote(unit_text.decode("utf-8", "surrogateescape"))
            raise ValueError(f"time: unknown unit {name} in duration {_time_quote(text)}")
        if whole > 2**63 // unit:
            raise invalid
        whole *= unit
        if frac:
            whole += int(frac * (unit / scale))
            if whole > 2**63:
                raise invalid
        total += whole
        if total > 2**63:
            raise invalid
    if not negative and total > 2**63 - 1:
        raise invalid
    return -total if negative else total


def check_request_timeout(query: Mapping[str, list[str]]) -> int | None:
    """The ``timeout`` of a list or get in ns, or None; watches never look at it. The
    apiserver checks it in a filter ahead of authentication, so call this first. The request's
    deadline is this value, or the server maximum (60 s) when it is <= 0 or larger."""
    values = query.get("timeout")
    if not values or not values[0]:
        return None
    try:
        return parse_go_duration(values[0])
    except ValueError as exc:
        raise StatusError(400, f"invalid timeout specified in the request URL - {exc}") from None


# --- list, watch and get options --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ListOptions:
    """A list or watch query after the apiserver's conversion, defaulting and validation."""

    label_selector: LabelSelector
    field_selector: FieldSelector
    label_selector_text: str  # raw, for cache keys
    field_selector_text: str
    watch: bool
    allow_watch_bookmarks: bool
    resource_version: str | None  # None when absent or ""; the raw text otherwise ("00" too)
    resource_version_match: str | None  # NotOlderThan | Exact | None (after defaulting)
    send_initial_events: bool | None  # after defaulting: a plain watch from unset/"0" is True
    timeout_seconds: int | None  # may be 0 or negative, see the module docstring
    limit: int  # 0 = no limit (a negative limit means none too)
    continue_token: str | None
    continue_at: ContinueToken | None  # a list's apiserver-format token, decoded

    @property
    def is_list_watch(self) -> bool:
        """A watch that ends its initial events with the initial-events-end bookmark."""
        return self.watch and bool(self.send_initial_events) and self.allow_watch_bookmarks


def go_bool(value: str | None) -> bool:
    """runtime.Convert_Slice_string_To_bool: only absent, "0" and any-case "false" are false
    (Go's EqualFold, which casefold matches here)."""
    return value is not None and value != "0" and value.casefold() != "false"


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _int_param(query: Mapping[str, list[str]], name: str) -> int | None:
    text = _first(query, name)
    if text is None:
        return None
    try:
        return _parse_int64(text)
    except ValueError as exc:
        raise StatusError(400, str(exc)) from None


def _forbidden(detail: str, field: str = "resourceVersionMatch") -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field}


def _not_supported(value: str, supported: tuple[str, ...]) -> dict[str, str]:
    shown = ", ".join(_go_quote(item) for item in supported)
    message = f"Unsupported value: {_go_quote(value)}: supported values: {shown}"
    return {"reason": "FieldValueNotSupported", "message": message, "field": "resourceVersionMatch"}


_RVM = "resourceVersionMatch is forbidden"
_NEEDS_INITIAL_EVENTS = f"{_RVM} for watch unless sendInitialEvents is provided"
_WITH_CONTINUE = f"{_RVM} when continue is provided"
_NEEDS_RV = f"{_RVM} unless resourceVersion is provided"
_EXACT_ZERO = 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'


def _validation_causes(
    *, watch: bool, rv: str, match: str, cont: str, initial: bool | None
) -> list[dict[str, str]]:
    """ValidateListOptions (WatchList enabled), cause by cause, in its order."""
    causes = []
    if watch:
        if initial is not None and match != NOT_OLDER_THAN:
            detail = f"sendInitialEvents requires setting resourceVersionMatch to {NOT_OLDER_THAN}"
            causes.append(_forbidden(detail))
        if match:
            if initial is None:
                causes.append(_forbidden(_NEEDS_INITIAL_EVENTS))
            if match != NOT_OLDER_THAN:
                causes.append(_not_supported(match, (NOT_OLDER_THAN,)))
            if cont:
                causes.append(_forbidden(_WITH_CONTINUE))
        return causes
    if match:
        if not rv:
            causes.append(_forbidden(_NEEDS_RV))
        if cont:
            causes.append(_forbidden(_WITH_CONTINUE))
        if match not in (EXACT, NOT_OLDER_THAN):
            causes.append(_not_supported(match, (EXACT, NOT_OLDER_THAN, "")))
        if match == EXACT and rv == "0":
            causes.append(_forbidden(_EXACT_ZERO))
    if initial is not None:
        causes.append(_forbidden("sendInitialEvents is forbidden for list", "sendInitialEvents"))
    return causes


def _invalid_list_options(causes: list[dict[str, str]]) -> StatusError:
    """errors.NewInvalid for ListOptions: the message joins the distinct "field: body" texts."""
    texts = list(dict.fromkeys(f"{cause['field']}: {cause['message']}" for cause in causes))
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}
    return StatusError(422, f'ListOptions.meta.k8s.io "" is invalid: {joined}', details=details)


def parse_list_options(
    query: Mapping[str, list[str]],
    *,
    allowed_field: Callable[[str], bool] | None = None,
    own_token: Callable[[str], bool] | None = None,
) -> ListOptions:
    """The options of a list or watch of a custom resource, or the StatusError the apiserver
    answers (see the module docstring for the order of the checks).

    query: every parameter's values, blank ones kept (tornado's query_arguments, decoded).
    allowed_field: the field-selector paths the resource supports; None allows any.
    own_token: tells the caller's own continue tokens, which are left undecoded (continue_at
    None) for the caller to check; every other token must decode as an apiserver token.
    """
    watch = go_bool(_first(query, "watch"))
    if not watch:
        check_request_timeout(query)
    timeout_seconds = _int_param(query, "timeoutSeconds")
    limit = _int_param(query, "limit") or 0
    label_text = _first(query, "labelSelector") or ""
    field_text = _first(query, "fieldSelector") or ""
    try:
        label_selector = parse_label_selector(label_text)
        field_selector = parse_field_selector(field_text)
    except SelectorError as exc:
        raise StatusError(400, str(exc)) from None
    rv = _first(query, "resourceVersion") or ""
    match = _first(query, "resourceVersionMatch") or ""
    cont = _first(query, "continue") or ""
    initial_text = _first(query, "sendInitialEvents")
    initial = None if initial_text is None else go_bool(initial_text)
    if watch and initial is None and not match and rv in ("", "0"):
        initial, match = True, NOT_OLDER_THAN  # SetListOptionsDefaults, WatchList on
    causes = _validation_causes(watch=watch, rv=rv, match=match, cont=cont, initial=initial)
    if causes:
        raise _invalid_list_options(causes)
    if allowed_field is not None:
        try:
            parse_field_selector(field_text, allowed=allowed_field)
        except SelectorError as exc:
            raise StatusError(400, str(exc)) from None
    continue_at = None
    if watch:
        resource_version_int(rv, verb="watch")
    elif cont:
        if own_token is None or not own_token(cont):
            try:
                continue_at = decode_continue(cont)
            except ValueError as exc:
                raise invalid_continue(str(exc)) from None
        if rv not in ("", "0"):
            raise StatusError(400, "specifying resource version is not allowed when using continue")
    else:
        resource_version_int(rv, verb="list")
    return ListOptions(
        label_selector=label_selector,
        field_selector=field_selector,
        label_selector_text=label_text,
        field_selector_text=field_text,
        watch=watch,
        allow_watch_bookmarks=go_bool(_first(query, "allowWatchBookmarks")),
        resource_version=rv or None,
        resource_version_match=match or None,
        send_initial_events=initial,
        timeout_seconds=timeout_seconds,
        limit=max(limit, 0),
        continue_token=cont or None,
        continue_at=continue_at,
    )


_EXPORT_UNSUPPORTED = "the export parameter, deprecated since v1.14, is no longer supported"


def parse_get_options(query: Mapping[str, list[str]]) -> str | None:
    """The resourceVersion of a get (None when absent or ""), or the apiserver's refusal:
    a bad ``timeout`` (400), ``export`` set true (400), a non-numeric RV (500, no reason)."""
    check_request_timeout(query)
    if go_bool(_first(query, "export")):
        raise StatusError(400, _EXPORT_UNSUPPORTED)
    rv = _first(query, "resourceVersion") or ""
    resource_version_int(rv, verb="get")
    return rv or None
