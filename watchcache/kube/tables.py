"""``meta.k8s.io`` Tables of custom resources, rendered from cached objects.

``kubectl get`` asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints
the cells it gets back. For a custom resource kube-apiserver builds that Table from the CRD's
``additionalPrinterColumns`` (``apiextensions-apiserver``'s tableconvertor); this module does
the same from the cache's bytes, so ``kubectl get`` costs the API server nothing. Everything
here is pure: the clock (``now``, for the ``date`` cells) is a parameter.

A CRD whose columns use JSONPath beyond the subset compiled here raises ``Unsupported``; the
caller then passes such Table requests through, so the answer is always the API server's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from watchcache.kube.jsonpath import Unsupported, compile_jsonpath
from watchcache.kube.status import StatusError

# The descriptions kube-apiserver gives its own columns (ObjectMeta's swagger docs).
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
CREATION_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
INCLUDE_OBJECT = ("Metadata", "Object", "None")

# ObjectMeta's fields in the order Go serializes them; a PartialObjectMetadata lists them so.
_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)
_MANAGED_ORDER: tuple[str, ...] = (
    "manager",
    "operation",
    "apiVersion",
    "time",
    "fieldsType",
    "fieldsV1",
)
_MANAGED_ORDER += ("subresource",)
_OWNER_ORDER = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")


def include_object(query: Mapping[str, Sequence[str]]) -> str:
    """The ``includeObject`` Table option; a value kube-apiserver rejects is a 400 here too."""
    values = query.get("includeObject") or [""]
    value = values[0]
    if value in ("", *INCLUDE_OBJECT):
        return value or "Metadata"
    raise StatusError(
        400,
        "Unable to convert to Table as requested: includeObject: Invalid value: "
        f"{orjson.dumps(value).decode()}: must be 'Metadata', 'Object', 'None', or empty",
    )


# ---- columns -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    format: str
    description: str
    priority: int
    find: Callable[[Any], list[Any]]


@dataclass(frozen=True, slots=True)
class TableSpec:
    """The printer columns of one version of a CRD, compiled once; ``definitions`` is the
    ``columnDefinitions`` array as JSON, the same for every Table."""

    columns: tuple[Column, ...]
    definitions: bytes

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any], version: str) -> TableSpec:
        """As kube-apiserver does: ``Name`` first, then the version's printer columns, or
        ``Age`` alone when it has none."""
        versions = (crd.get("spec") or {}).get("versions") or []
        found = [v for v in versions if v.get("name") == version]
        if not found:
            raise Unsupported(f"version {version} not in the CRD")
        cols = found[0].get("additionalPrinterColumns") or [
            {
                "name": "Age",
                "type": "date",
                "description": CREATION_DESCRIPTION,
                "jsonPath": ".metadata.creationTimestamp",
            }
        ]
        columns = tuple(
            Column(
                name=c["name"],
                type=c.get("type", ""),
                format=c.get("format", ""),
                description=c.get("description")
                or f"Custom resource definition column (in JSONPath format): {c['jsonPath']}",
                priority=int(c.get("priority", 0)),
                find=compile_jsonpath(c["jsonPath"]),
            )
            for c in cols
        )
        head = {"name": "Name", "type": "string", "format": "name"}
        defs = [{**head, "description": NAME_DESCRIPTION, "priority": 0}]
        defs += [
            {
                "name": c.name,
                "type": c.type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ]
        return cls(columns, orjson.dumps(defs))

    def cells(self, obj: Mapping[str, Any], now: float) -> list[Any]:
        meta = obj.get("metadata") or {}
        out: list[Any] = [meta.get("name", "")]
        for col in self.columns:
            found = col.find(obj)
            out.append(_cell(col.type, found[0], now) if found else None)
        return out


def _cell(kind: str, value: Any, now: float) -> Any:
    """One cell, as tableconvertor's cellForJSONValue (and, for strings, JSONPath's text)."""
    if value is None:
        return None
    if kind == "string":
        return _text(value)
    if kind == "integer":
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) else None
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value) if float(value).is_integer() and abs(value) < 1e21 else float(value)
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "date":
        return _age(value, now) if isinstance(value, str) else None
    return None


def _text(value: Any) -> str:
    """How client-go's JSONPath prints one value: Go's fmt for scalars, JSON for the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if value is None:
        return "null"
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    for char, escaped in ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026")):
        raw = raw.replace(char, escaped)
    return raw.decode()


def go_float(value: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits, exponent form below 1e-4 or from 1e6."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp = len(text) + int(exponent) - 1
    neg = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    point = exp + 1
    if point <= 0:
        return f"{neg}0.{'0' * -point}{text}"
    if point >= len(text):
        return neg + text + "0" * (point - len(text))
    return f"{neg}{text[:point]}.{text[point:]}"


def _age(stamp: str, now: float) -> str:
    if stamp in ("", "null"):
        return "<unknown>"
    if not _RFC3339.match(stamp):
        return "<invalid>"
    try:
        then = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return "<invalid>"
    return human_duration(now - then)


def human_duration(seconds_f: float) -> str:
    """apimachinery's ``duration.HumanDuration``: the Age column's text."""
    seconds = int(seconds_f)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


# ---- the Table -----------------------------------------------------------------------------
def partial_metadata(meta: Mapping[str, Any], version: str = "v1") -> bytes:
    """The PartialObjectMetadata kube-apiserver puts in a row, fields in its order."""
    out: dict[str, Any] = {}
    for key in _META_ORDER:
        value = meta.get(key)
        # Go's omitempty: zero values go, except behind a pointer (a grace period of 0).
        if value is None or (value in ("", 0, {}, []) and key != "deletionGracePeriodSeconds"):
            continue
        if key in ("labels", "annotations"):
            value = dict(sorted(value.items()))
        elif key == "managedFields":
            value = [_ordered(e, _MANAGED_ORDER) for e in value]
        elif key == "ownerReferences":
            value = [_ordered(e, _OWNER_ORDER) for e in value]
        out[key] = value
    return (
        b'{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/'
        + version.encode()
        + b'","metadata":'
        + orjson.dumps(out)
        + b"}"
    )


def _ordered(entry: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    out = {k: entry[k] for k in order if k in entry and entry[k] not in (None, "")}
    out.update((k, v) for k, v in entry.items() if k not in out and k not in order)
    return out


def render(
    spec: TableSpec,
    raws: Iterable[bytes],
    *,
    list_meta: Mapping[str, Any],
    include: str = "Metadata",
    version: str = "v1",
    now: float,
) -> bytes:
    """A Table of objects given as their JSON bytes (one row each, in the given order)."""
    rows: list[bytes] = []
    for raw in raws:
        obj = orjson.loads(raw)
        if include == "Object":
            payload = raw
        elif include == "None":
            payload = b"null"
        else:
            payload = partial_metadata(obj.get("metadata") or {}, version)
        rows.append(b'{"cells":' + orjson.dumps(spec.cells(obj, now)) + b',"object":' + payload)
    return b"".join(
        (
            b'{"kind":"Table","apiVersion":"meta.k8s.io/',
            version.encode(),
            b'","metadata":',
            orjson.dumps(list_meta),
            b',"columnDefinitions":',
            spec.definitions,
            b',"rows":[',
            b"},".join(rows),
            b"}]}" if rows else b"]}",
        )
    )
