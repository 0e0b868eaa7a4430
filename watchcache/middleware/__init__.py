"""The public middleware API: what a user writes to extend watchcache.

See ``core`` for the protocol; the built-in KubeRay features are written on the same API.
"""

from watchcache.kube.status import StatusError
from watchcache.middleware.core import (
    Endpoint,
    Headers,
    Middleware,
    Next,
    Request,
    Response,
    Stream,
    Writer,
    compose,
)

__all__ = [
    "Endpoint",
    "Headers",
    "Middleware",
    "Next",
    "Request",
    "Response",
    "StatusError",
    "Stream",
    "Writer",
    "compose",
]
