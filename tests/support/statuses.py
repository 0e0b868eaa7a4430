"""Status bodies the tests expect word for word, where more than one test expects them."""

from __future__ import annotations

# A forwarded request that found every upstream connection busy past the pool's wait.
UPSTREAM_BUSY = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "too many requests in flight to the Kubernetes API server",
    "reason": "TooManyRequests",
    "details": {"retryAfterSeconds": 1},
    "code": 429,
}
