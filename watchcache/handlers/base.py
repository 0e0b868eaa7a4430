"""What every handler shares: Kubernetes ``Status`` errors and the server's collaborators."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tornado import web

from watchcache.status import StatusError, not_found_path

if TYPE_CHECKING:
    from watchcache.app import Runtime

log = logging.getLogger("watchcache.http")


class BaseHandler(web.RequestHandler):
    """Renders every failure as a Kubernetes ``Status``, never an HTML page or a traceback."""

    runtime: Runtime

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        origin = self.runtime.settings.cors_allow_origin if hasattr(self, "runtime") else None
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)

    def send_status(self, err: StatusError) -> None:
        if self._headers_written:
            # The response has begun (a stream): all that is left is to end it.
            self.finish()
            return
        self.clear()
        self.set_status(err.code, err.reason or None)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(err.body())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StatusError):
            err = exc
        elif status_code == 404:
            err = not_found_path()
        elif status_code == 405:
            err = StatusError(
                405, "the server does not allow this method on the requested resource"
            )
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            err = StatusError(status_code, exc.log_message or self._reason)
        else:
            err = StatusError(500, "an internal error occurred in watchcache; see its log")
        self.send_status(err)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, StatusError):
            if not self._finished:
                self.send_status(e)
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, StatusError):
            return
        super().log_exception(typ, value, tb)

    def data_received(self, chunk: bytes) -> None:  # pragma: no cover - only streaming handlers
        pass


class NotFoundHandler(BaseHandler):
    """Every path watchcache does not serve: a 404 Status, as the KubeRay APIServer gives."""

    def prepare(self) -> None:
        raise not_found_path()


class HealthHandler(BaseHandler):
    """``/healthz`` and ``/livez``: the process answers."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(b"ok")


class ReadyHandler(BaseHandler):
    """``/readyz``: ready once every cache has synced (at once in pass-through mode)."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        waiting = self.runtime.not_ready()
        if waiting:
            self.set_status(503)
            self.finish(("not ready: " + ", ".join(waiting)).encode())
        else:
            self.finish(b"ok")
