"""The public middleware API: what a user writes to extend watchcache.

See ``core`` for the protocol; the built-in KubeRay features are written on the same API.
"""

from watchcache.middleware.core import Middleware, Next, Request, Response, compose
from watchcache.status import StatusError

__all__ = ["Middleware", "Next", "Request", "Response", "StatusError", "compose"]
