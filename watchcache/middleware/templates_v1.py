"""KubeRay's v1 compute-template protocol, as its APIServer speaks it on the wire.

The KubeRay APIServer serves templates through a grpc-gateway: bodies are protobuf JSON
(``ComputeTemplate`` of KubeRay's ``config.proto``), read with field names in either casing
and unknown fields dropped, written in lowerCamelCase with every empty field left out; errors
are gRPC statuses, ``{"code": <gRPC code>, "message": ...}`` under the HTTP status the gateway
maps that code to. Templates are stored as ConfigMaps, in the format KubeRay writes and reads,
so that either server reads what the other wrote. This module is that format and nothing
else: the middleware in ``templates`` serves it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

LABEL = "ray.io/config-type"
LABEL_VALUE = "compute-template"
NAME_LABEL = "ray.io/compute-template"  # KubeRay labels each template with its own name too
UINT32_MAX = 2**32 - 1

# gRPC codes, and the HTTP status grpc-gateway answers each with (runtime.HTTPStatusFromCode).
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED = 3, 5, 6, 7
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 8, 12, 13, 14, 16
HTTP_STATUS = {
    1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip


class V1Error(Exception):
    """A gRPC status, as the gateway renders it: the code's HTTP status, code and message."""

    def __init__(self, code: int, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict[str, Any]:
        # KubeRay's marshaler does not emit unpopulated fields: no empty "details".
        return {"code": self.code, "message": self.message}


# ---- the errors KubeRay's handlers give, worded as its util.UserError renders them --------
# A UserError's gRPC message is its external message, ": ", then its internal error chain.
def invalid_input(message: str, *wrapped: str) -> V1Error:
    chain = "".join(f"{w}: " for w in wrapped)
    return V1Error(INVALID_ARGUMENT, f"{message}: {chain}Invalid input error: {message}")


def invalid_create(message: str) -> V1Error:
    return invalid_input(message, "Validate compute template runtime request failed.")


EMPTY_NAME = "Compute template name is empty. Please specify a valid value."


def not_found(name: str, *, deleting: bool) -> V1Error:
    external = f"Compute template {name} not found"
    wrap = "Get compute template failure" if deleting else "Get compute template failed."
    return V1Error(
        NOT_FOUND, f'{external}: {wrap}: NotFoundError: {external}: configmaps "{name}" not found'
    )


def already_exists(name: str, namespace: str) -> V1Error:
    external = f"Compute template with name {name} already exists in namespace {namespace}"
    return V1Error(
        ALREADY_EXISTS,
        f"{external}: Create compute template failed.: Already exist error: {external}",
    )


def route_not_found() -> V1Error:
    return V1Error(NOT_FOUND, "Not Found")


def method_not_allowed() -> V1Error:
    # The gateway's routing error: gRPC Unimplemented, so HTTP 501 rather than 405.
    return V1Error(UNIMPLEMENTED, "Method Not Allowed")


def unavailable(message: str, retry_after: str | None = None) -> V1Error:
    return V1Error(UNAVAILABLE, message, retry_after=retry_after or "1")


def from_kube(code: int, kube_message: str, retry_after: str | None, action: str) -> V1Error:
    """kube-apiserver's refusal of a template write, as a gRPC status. (KubeRay answers
    every such failure 500 Internal; a refusal of the client's input is not a server error.)"""
    message = f"{action} compute template failed: {kube_message}"
    if code in (400, 422):
        return V1Error(INVALID_ARGUMENT, message)
    if code == 401:
        return V1Error(UNAUTHENTICATED, message)
    if code == 403:
        return V1Error(PERMISSION_DENIED, message)
    if code == 404:
        return V1Error(NOT_FOUND, message)
    if code == 409:
        return V1Error(ALREADY_EXISTS, message)
    if code == 429:
        return V1Error(RESOURCE_EXHAUSTED, message, retry_after=retry_after or "1")
    return unavailable(message, retry_after)


# ---- the template --------------------------------------------------------------------------
@dataclass
class Template:
    """KubeRay's ``ComputeTemplate`` message; proto3 zero values mean "not set"."""

    name: str = ""
    namespace: str = ""
    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    gpu_accelerator: str = ""
    tolerations: list[dict[str, str]] = field(default_factory=list)
    # None: never given (KubeRay then stores "null"); {} given empty (stored "{}").
    extended_resources: dict[str, int] | None = None
    memory_unit: str = ""


# (JSON name, proto name, kind) in field-number order, which is also the order written.
FIELDS = (
    ("name", "name", "string"),
    ("namespace", "namespace", "string"),
    ("cpu", "cpu", "uint32"),
    ("memory", "memory", "uint32"),
    ("gpu", "gpu", "uint32"),
    ("gpuAccelerator", "gpu_accelerator", "string"),
    ("tolerations", "tolerations", "tolerations"),
    ("extendedResources", "extended_resources", "map"),
    ("memoryUnit", "memory_unit", "string"),
)
_BY_NAME = {n: f for f in FIELDS for n in (f[0], f[1])}
TOLERATION_FIELDS = ("key", "operator", "value", "effect")


def render(tpl: Template) -> dict[str, Any]:
    """The template as KubeRay answers it: lowerCamelCase, empty fields omitted."""
    out: dict[str, Any] = {}
    for json_name, attr, kind in FIELDS:
        value = getattr(tpl, attr)
        if kind == "tolerations":
            value = [{k: t[k] for k in TOLERATION_FIELDS if t.get(k)} for t in value]
        elif kind == "map":
            value = dict(sorted((value or {}).items()))
        if value:
            out[json_name] = value
    return out


# ---- reading a request body as protojson does ----------------------------------------------
class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (protojson refuses duplicates)."""


def _no_constant(name: str) -> Any:
    raise V1Error(INVALID_ARGUMENT, f"proto: syntax error: unexpected token {name}")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Pairs, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constant
)
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad(message: str) -> V1Error:
    return V1Error(INVALID_ARGUMENT, f"proto: {message}")


def decode(body: bytes) -> Template:
    """The template a create's body holds, read as KubeRay's gateway reads it: the first JSON
    value only (whatever follows is never read), any Content-Type, no body as an empty
    template, field names in proto or JSON casing, unknown fields ignored, integers that are
    uint32 (numbers, or numbers in strings), and nothing protojson refuses."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"invalid UTF-8 in the body at byte {exc.start}") from exc
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        return Template()  # the gateway takes an empty body (io.EOF) as an empty message
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise _bad(f"syntax error (line {exc.lineno}:{exc.colno}): {exc.msg}") from exc
    except RecursionError as exc:
        raise _bad("exceeded max recursion depth") from exc
    _check_strings(value)
    if not isinstance(value, _Pairs):
        raise _bad(f"syntax error: unexpected token {_shown(value)}")
    tpl = Template()
    for key, member in _members(value):
        spec = _BY_NAME.get(key)
        if spec is None or member is None:
            continue  # unknown fields are dropped; null leaves a field unset
        json_name, attr, kind = spec
        if kind == "string":
            setattr(tpl, attr, _string(json_name, member))
        elif kind == "uint32":
            setattr(tpl, attr, _uint32(json_name, member))
        elif kind == "map":
            tpl.extended_resources = _resource_map(member)
        else:
            tpl.tolerations = _tolerations(member)
    return tpl


def _members(obj: _Pairs, names: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """The object's members, refusing a field given twice (in either casing)."""
    seen: set[str] = set()
    for key, _ in obj:
        spec = (names or _BY_NAME).get(key)
        if spec is None:
            continue
        ident = spec if isinstance(spec, str) else spec[1]
        if ident in seen:
            raise _bad(f"duplicate field {json.dumps(key)}")
        seen.add(ident)
    return list(obj)


def _check_strings(value: Any) -> None:
    """protojson refuses a lone surrogate (an escape that is not a pair) anywhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _bad("syntax error: invalid escape code in string (a lone surrogate)")
        elif isinstance(item, _Pairs):
            stack.extend(k for k, _ in item)
            stack.extend(v for _, v in item)
        elif isinstance(item, list):
            stack.extend(item)


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Decimal) else value


def _shown(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)[:80]
    try:
        return json.dumps(_plain(value))[:80]
    except RecursionError:
        return "(a deeply nested value)"


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(f"invalid value for string field {name}: {_shown(value)}")
    return value


def _uint32(name: str, value: Any, kind: str = "field") -> int:
    number: Decimal | None = None
    if isinstance(value, Decimal) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        number = Decimal(value)
    try:
        ok = number is not None and number == number.to_integral_value()
    except InvalidOperation:
        ok = False
    if not ok or number is None or not 0 <= number <= UINT32_MAX:
        raise _bad(f"invalid value for uint32 {kind} {name}: {_shown(value)}")
    return int(number)


def _resource_map(value: Any) -> dict[str, int]:
    if not isinstance(value, _Pairs):
        raise _bad(f"invalid value for map field extendedResources: {_shown(value)}")
    out: dict[str, int] = {}
    for key, amount in value:
        if key in out:
            raise _bad(f"duplicate map key {json.dumps(key)}")
        out[key] = _uint32(f"extendedResources[{json.dumps(key)}]", amount, "value")
    return out


def _tolerations(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or isinstance(value, _Pairs):
        raise _bad(f"invalid value for list field tolerations: {_shown(value)}")
    out = []
    for item in value:
        if not isinstance(item, _Pairs):
            raise _bad(f"invalid value for message field tolerations: {_shown(item)}")
        names = {k: k for k in TOLERATION_FIELDS}
        toleration: dict[str, str] = {}
        for key, member in _members(item, names):
            if key in names and member is not None:
                toleration[key] = _string(key, member)
        out.append(toleration)
    return out


# ---- the ConfigMap KubeRay stores ------------------------------------------------------------
_MEMORY_UNIT = re.compile(r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


def _go_json(value: object, *, sort_keys: bool) -> str:
    """JSON as Go's encoding/json writes it: compact, HTML characters escaped, a map's keys
    sorted and a struct's fields in their declared order."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def to_configmap(tpl: Template) -> dict[str, Any]:
    """The ConfigMap KubeRay's APIServer would write for ``tpl`` (util.NewComputeTemplate)."""
    unit = tpl.memory_unit or "Gi"
    if not _MEMORY_UNIT.fullmatch(unit):
        # KubeRay answers this 500 Internal; it is the client's input, so 400 here.
        raise V1Error(
            INVALID_ARGUMENT,
            f'invalid memory quantity "{tpl.memory}{unit}": memoryUnit must be a Kubernetes '
            "quantity suffix such as Mi or Gi",
        )
    data = {
        "name": tpl.name,
        "namespace": tpl.namespace,
        "cpu": str(tpl.cpu),
        "memory": str(tpl.memory),
        "memory_unit": unit,
        "gpu": str(tpl.gpu),
        "gpu_accelerator": tpl.gpu_accelerator,
        "extended_resources": _go_json(tpl.extended_resources, sort_keys=True),
    }
    if tpl.tolerations:
        data["tolerations"] = _go_json(
            [{k: t[k] for k in TOLERATION_FIELDS if t.get(k)} for t in tpl.tolerations],
            sort_keys=False,
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": tpl.name,
            "namespace": tpl.namespace,
            "labels": {LABEL: LABEL_VALUE, NAME_LABEL: tpl.name},
        },
        "data": data,
    }


def _go_uint32(text: str) -> int:
    """strconv.ParseUint(text, 10, 32), with KubeRay's 0 for anything it cannot parse."""
    if len(text) <= 10 and text.isascii() and text.isdigit() and int(text) <= UINT32_MAX:
        return int(text)
    return 0


def from_configmap(obj: dict[str, Any]) -> Template:
    """What KubeRay's APIServer makes of a template ConfigMap (FromKubeToAPIComputeTemplate):
    name and namespace from its metadata, numbers that do not parse as 0, and a malformed
    ``extended_resources`` or ``tolerations`` read as far as Go's json.Unmarshal reads it."""
    meta = obj.get("metadata") or {}
    data = obj.get("data") or {}
    tpl = Template(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        cpu=_go_uint32(str(data.get("cpu", ""))),
        memory=_go_uint32(str(data.get("memory", ""))),
        gpu=_go_uint32(str(data.get("gpu", ""))),
        gpu_accelerator=str(data.get("gpu_accelerator", "")),
        memory_unit=str(data.get("memory_unit", "")),
    )
    resources = _loads(data.get("extended_resources"))
    if isinstance(resources, dict):
        # Entries Go cannot store in a uint32 are skipped; the rest are kept.
        tpl.extended_resources = {
            k: v
            for k, v in resources.items()
            if type(v) is int and 0 <= v <= UINT32_MAX  # JSON integers only (not 1.0)
        }
    tolerations = _loads(data.get("tolerations"))
    if isinstance(tolerations, list):
        tpl.tolerations = [_go_toleration(t) for t in tolerations]
    return tpl


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Go's decoder knows no NaN or Infinity


def _loads(text: object) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None


def _go_toleration(item: object) -> dict[str, str]:
    """One toleration as Go decodes it into KubeRay's PodToleration: names matched without
    regard to case, values that are not strings skipped, anything else ignored."""
    out: dict[str, str] = {}
    if isinstance(item, dict):
        for key, value in item.items():
            name = key.lower()
            if name in TOLERATION_FIELDS and isinstance(value, str):
                out[name] = value
    return out
