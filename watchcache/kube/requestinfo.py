"""What kube-apiserver's outer filters decide from a request's URL alone, before
authentication and before any handler: whether it is long-running (a watch, a proxy), and
for every other request its ``?timeout=`` (400 when it is no Go duration, 504 once passed).

The API server checks ``timeout`` on every path, served or not (``/healthz``, ``/version``,
a 404 path), and on every method; so does watchcache, ahead of its routes and middleware.
"""

from __future__ import annotations

from collections.abc import Mapping

from watchcache.kube.listoptions import check_request_timeout, go_bool
from watchcache.kube.status import StatusError

# The API server's default --request-timeout: the deadline when none (or a larger one) is asked.
REQUEST_TIMEOUT_MAX_NS = 60 * 10**9
_LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
_LONG_RUNNING_SUBRESOURCES = frozenset({"attach", "exec", "proxy", "log", "portforward"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def is_long_running(method: str, path: str, query: Mapping[str, list[str]]) -> bool:
    """RequestInfoFactory's verb and subresource, as BasicLongRunningRequestCheck reads them
    (``path`` decoded, as Go's URL.Path)."""
    parts = path.strip("/").split("/") if path.strip("/") else []
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return False  # not a resource request
    grouped = parts[0] == "apis"
    parts = parts[1:]
    if grouped:
        if len(parts) < 3:
            return False
        parts = parts[1:]
    parts = parts[1:]  # the version
    verb = "get" if method in ("GET", "HEAD") else "other"
    if parts[0] in _LONG_RUNNING_VERBS:
        if len(parts) < 2:
            return False  # the API server cannot tell the resource: not a long request
        verb, parts = parts[0], parts[1:]
    if parts[0] == "namespaces" and len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
        parts = parts[2:]
    if len(parts) >= 3 and verb != "proxy" and parts[2] in _LONG_RUNNING_SUBRESOURCES:
        return True
    if verb == "get" and len(parts) < 2:
        watch = query.get("watch")
        verb = "watch" if watch and go_bool(watch[0]) else "list"
    return verb in _LONG_RUNNING_VERBS


def check_deadline(method: str, path: str, query: Mapping[str, list[str]], elapsed: float) -> None:
    """WithRequestDeadline and WithTimeoutForNonLongRunningRequests, for a request that has
    taken ``elapsed`` seconds so far: 400 for a ``timeout`` that is no Go duration; for a
    read, 504 once its deadline has passed. A write is left to the API server, which may
    carry it out even past its deadline."""
    if is_long_running(method, path, query):
        return
    timeout = check_request_timeout(query)
    if timeout is None or timeout <= 0 or timeout >= REQUEST_TIMEOUT_MAX_NS:
        return
    if method in ("GET", "HEAD") and elapsed * 1e9 >= timeout:
        raise deadline_exceeded()


def deadline_exceeded() -> StatusError:
    return StatusError(
        504, "Timeout: request did not complete within the allotted timeout", reason="Timeout"
    )
