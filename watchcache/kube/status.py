"""Kubernetes ``Status`` errors: the one shape every failure takes on the wire."""

from __future__ import annotations

from typing import Any

import orjson

from watchcache.kube.wire import go_escape, go_indent

# The reason the Kubernetes API server gives for each code (k8s.io/apimachinery/pkg/api/errors).
REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class StatusError(Exception):
    """A failure the client should see as a Kubernetes ``Status`` with this code and reason."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else REASONS.get(code, "")
        self.details = details
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:  # an empty {} is written: a 403 on a path has one
            body["details"] = self.details
        body["code"] = self.code
        return body

    def body(self, *, pretty: bool = False) -> bytes:
        """The Status as the API server writes it: compact with a final newline, or (for
        ``?pretty=true`` and human user agents) indented, without one."""
        compact = orjson.dumps(self.to_dict())
        return go_indent(compact) if pretty else go_escape(compact) + b"\n"


def not_found_path() -> StatusError:
    """What the Kubernetes API server says for a path it does not serve."""
    return StatusError(404, "the server could not find the requested resource")


def not_found(group: str, resource: str, name: str) -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        404,
        f'{qualified} "{name}" not found',
        details={"name": name, "group": group, "kind": resource},
    )


def method_not_allowed(details: dict[str, Any] | None = None) -> StatusError:
    return StatusError(
        405, "the server does not allow this method on the requested resource", details=details
    )


def too_many_requests(message: str, retry_after: int) -> StatusError:
    return StatusError(
        429,
        message,
        details={"retryAfterSeconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def expired(message: str) -> StatusError:
    return StatusError(410, message)


def internal(message: str) -> StatusError:
    return StatusError(500, message)


def unauthorized() -> StatusError:
    """kube-apiserver's one answer to any credential it does not accept (and, with anonymous
    authentication off, to no credential): the same body whatever the cause, so that a
    client learns nothing about why."""
    return StatusError(401, "Unauthorized")
