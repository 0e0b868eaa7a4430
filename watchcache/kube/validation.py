"""The checks kube-apiserver makes on the name and namespace of a read, with its answers.

A name must be usable as one path segment (``content.IsPathSegmentName``): not ``.`` or
``..``, no ``/`` or ``%``; else the registry's key function answers 400 BadRequest
``Name parameter invalid``. A namespace is not validated on reads (one that cannot exist
lists empty and gets 404), except that the storage refuses a key with a ``.`` or ``..``
segment: a plain Go error, served as a 500 with no reason, ``invalid key: "<key>"``. The
cache answers both exactly so, rather than 404 or an empty list.
"""

from __future__ import annotations

from watchcache.kube.listoptions import GoStatusError
from watchcache.kube.resources import ResourceSpec
from watchcache.kube.selectors import _go_quote
from watchcache.kube.status import StatusError

_NOT_BE = (".", "..")
_NOT_CONTAIN = ("/", "%")


def name_problems(name: str) -> list[str]:
    """IsPathSegmentName's messages, in its order; empty when the name is fine."""
    if "/" not in name and "%" not in name and name not in _NOT_BE:
        return []  # the usual answer, without building one
    if name in _NOT_BE:
        return [f"may not be '{name}'"]
    return [f"may not contain '{part}'" for part in _NOT_CONTAIN if part in name]


def check_read_target(spec: ResourceSpec, namespace: str | None, name: str | None) -> None:
    """Raises the API server's answer for a get (``name`` set) or list/watch of ``spec`` whose
    name or namespace the registry or storage refuses; returns for every other target."""
    if name is not None:
        problems = name_problems(name)
        if problems:
            message = f"Name parameter invalid: {_go_quote(name)}: {';'.join(problems)}"
            raise StatusError(400, message)
    if namespace in _NOT_BE:
        prefix = f"/{spec.group}/{spec.plural}" if spec.group else f"/{spec.plural}"
        key = f"{prefix}/{namespace}"
        if name is not None:
            key += f"/{name}"
        raise GoStatusError(500, f"invalid key: {_go_quote(key)}", reason="")
