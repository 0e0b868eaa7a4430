"""watchcache in this process, on a real socket, over a recorded upstream.

For middleware and adapter tests that need no Kubernetes behaviour (what a middleware sees,
what the chain answers, the headers a feature adds): no Go, no control plane. The upstream
answers every list with what was recorded for it (by default an empty list at version 1),
holds every watch open without an event, and answers anything else 404 unless recorded.
Kubernetes behaviour is never judged here: that is the real API server's job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tornado import httpserver, web
from tornado.netutil import bind_sockets

from watchcache import Server, Settings
from watchcache.middleware.core import Middleware
from watchcache.middleware.features import Feature
from watchcache.upstream.client import Credentials

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Recorded:
    """Canned upstream answers by (method, path); ``requests`` logs what was asked."""

    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def answer(self, method: str, path: str) -> Answer:
        if (method, path) in self.answers:
            return self.answers[(method, path)]
        if method == "GET":  # a list nobody recorded: empty, at version 1
            body = {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}}
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps(body | {"items": []}).encode(),
            )
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
        return 404, {"Content-Type": "application/json"}, json.dumps(status).encode()


class _Upstream(web.RequestHandler):
    def initialize(self, recorded: Recorded) -> None:
        self.recorded = recorded

    async def _any(self) -> None:
        req = self.request
        self.recorded.requests.append((req.method or "", req.uri or ""))
        if req.method == "GET" and self.get_query_argument("watch", "") in ("true", "1"):
            self.set_header("Content-Type", "application/json")
            self.flush()
            await asyncio.Event().wait()  # open, silent, until the connection goes
            return
        code, headers, body = self.recorded.answer(req.method or "", req.path)
        self.set_status(code)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(body)

    get = post = put = patch = delete = _any  # type: ignore[assignment]

    def on_connection_close(self) -> None:
        pass


@dataclass
class Client:
    base: str
    recorded: Recorded
    # Begins the server's shutdown (as SIGTERM does) and returns at once; the future ends
    # with it. The context's exit then only waits for it.
    begin_shutdown: Callable[[], concurrent.futures.Future[None]] | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until /readyz answers 200: every cache has listed the recorded upstream."""
        deadline = time.monotonic() + timeout
        while self.request("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.02)


@contextmanager
def in_process(
    *,
    middleware: Sequence[Middleware] = (),
    features: Sequence[Feature] | None = (),
    recorded: Recorded | None = None,
    **settings: Any,
) -> Iterator[Client]:
    """A started Server (port chosen by the system) over a recorded upstream; stopped after."""
    recorded = recorded or Recorded()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application([(r".*", _Upstream, {"recorded": recorded})])
        sockets = bind_sockets(0, "127.0.0.1")
        upstream = httpserver.HTTPServer(app)
        upstream.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        creds = Credentials(f"http://127.0.0.1:{port}", None, lambda: None)
        server = Server(
            Settings(port=0, **settings),
            middleware=middleware,
            features=features,
            credentials=creds,
        )
        await server.start()
        state.update(server=server, upstream=upstream)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in state:
        raise state["error"]
    server: Server = state["server"]
    stopping: list[concurrent.futures.Future[None]] = []

    def begin_shutdown() -> concurrent.futures.Future[None]:
        if not stopping:
            stopping.append(asyncio.run_coroutine_threadsafe(server.stop(), loop))
        return stopping[0]

    try:
        yield Client(f"http://127.0.0.1:{server.port}", recorded, begin_shutdown)
    finally:
        begin_shutdown().result(30)

        async def stop_upstream() -> None:
            state["upstream"].stop()

        asyncio.run_coroutine_threadsafe(stop_upstream(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
