"""The server's own bounds under hostile clients, against the real control plane.

Each test attacks one watchcache process and then checks that it is still healthy
(``assert_healthy``: a probe GET answered, RSS under the shared budget, no traceback in its
log). Where kube-apiserver answers the same input, the answers are compared (code and Status
reason). The probe's latency during an attack is measured and printed (the issue asks for
100 ms); only a generous timeout is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import population
from support.controlplane import ControlPlane
from support.metrics import metric

from watchcache.config import ServerLimits

from .conftest import assert_healthy

if TYPE_CHECKING:
    from conftest import Proxy

PROBE = "/apis/ray.io/v1/rayclusters"
PROBE_TIMEOUT = 5.0  # generous: the issue asks for 100 ms, which each test measures and prints

# Runs watchcache with a descriptor limit of 256 (soft and hard): `python -c LIMITED serve ...`.
LIMITED_FDS = 256
LIMITED = (
    "import resource, runpy, sys;"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMITED_FDS}, {LIMITED_FDS}));"
    "sys.argv = ['watchcache', *sys.argv[1:]];"
    "runpy.run_module('watchcache', run_name='__main__')"
)


# ---- helpers -------------------------------------------------------------------------------
def port_of(proxy: Proxy) -> int:
    return int(proxy.base.rsplit(":", 1)[1])


def connect(proxy: Proxy, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=timeout)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length (all watchcache's refusals have one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return code, headers, body[:length]


def raw(proxy: Proxy, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    with connect(proxy, timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def kube_raw(cp: ControlPlane, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The same bytes sent to kube-apiserver over TLS, with the admin's token added."""
    auth = f"\r\nAuthorization: Bearer {cp.admin.token}\r\n\r\n".encode()
    data = data.replace(b"\r\n\r\n", auth, 1)
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    plain = socket.create_connection(("127.0.0.1", cp.port), timeout=30)
    with ctx.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
        sock.sendall(data)
        return read_answer(sock)


def request_bytes(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def reason_of(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("reason") if isinstance(doc, dict) and doc.get("kind") == "Status" else None


def cpu_seconds(proxy: Proxy) -> float:
    fields = Path(f"/proc/{proxy.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def probe(proxy: Proxy) -> float:
    """Milliseconds a probe GET took; fails unless it is answered 200 within PROBE_TIMEOUT."""
    started = time.monotonic()
    code, _, body = proxy.request("GET", PROBE, timeout=PROBE_TIMEOUT)
    assert code == 200, body[:300]
    return 1000 * (time.monotonic() - started)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@contextlib.contextmanager
def half_open(proxy: Proxy, count: int, partial: bytes = b"") -> Iterator[list[socket.socket]]:
    """``count`` connections that send ``partial`` (part of a request) and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(proxy)
            if partial:
                sock.sendall(partial)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(proxy_factory: Callable[..., Proxy]) -> Proxy:
    """Short header and idle timeouts, so that the tests see them act."""
    return proxy_factory("--header-timeout", "3", "--idle-timeout", "4")


# ---- metric labels -------------------------------------------------------------------------
def test_distinct_method_names_do_not_grow_metrics(limited: Proxy) -> None:
    """3,000 requests, each with its own 60 KB method name: /metrics stays small (an unknown
    method is counted as OTHER), so does the log, and the server keeps its memory."""
    log_from = len(limited.log())
    path = "/apis/ray.io/v1/namespaces/default/rayclusters"
    for i in range(3000):
        method = f"M{i}" + "X" * 60_000
        code, _, body = raw(limited, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert code == 405 and reason_of(body) == "MethodNotAllowed", body[:200]
    _, _, text = limited.request("GET", "/metrics")
    assert len(text) < 64 * 1024, len(text)
    assert 'watchcache_http_requests_total{method="OTHER",code="405"} 3000' in text.decode()
    assert len(limited.log()) - log_from < 2 * 1024 * 1024
    assert_healthy(limited, PROBE)


# ---- slow and idle clients -----------------------------------------------------------------
def test_slowloris_connections_do_not_starve_a_probe_and_are_cut(limited: Proxy) -> None:
    """500 connections trickling their headers: a probe GET is still answered, and each of
    them is closed once the header timeout (3 s here) has passed."""
    with half_open(limited, 500, b"GET /apis HTTP/1.1\r\nHost: x\r\n") as socks:
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(b"X-a: b\r\n")

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            latencies = [probe(limited) for _ in range(5)]
            print(f"probe latency during slowloris: {max(latencies):.1f} ms (max of 5)")
            wait_for(
                lambda: all(closed_by_server(s) for s in socks),
                timeout=30,
                what="slowloris connections cut by the header timeout",
            )
        finally:
            stop.set()
            feeder.join()
    assert_healthy(limited, PROBE)


def test_idle_keepalive_connection_is_closed(limited: Proxy) -> None:
    """A kept-alive connection that sends nothing more is closed after the idle timeout."""
    with connect(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # still open: answered
        assert read_answer(sock)[0] == 200
        wait_for(lambda: closed_by_server(sock), timeout=30, what="idle connection closed")
    assert_healthy(limited, PROBE)


# ---- the descriptor limit ------------------------------------------------------------------
def test_half_open_flood_at_the_descriptor_limit(proxy_factory: Callable[..., Proxy]) -> None:
    """With 256 descriptors, 400 half-open connections: the connection cap is below the
    limit, the accept loop does not spin (CPU and log stay small), and a probe is answered
    because the longest-waiting half-open connection makes room for it."""
    proxy = proxy_factory(command=("-c", LIMITED, "serve"))
    cap = int(re.search(r"at most (\d+) connections", proxy.log()).group(1))  # type: ignore[union-attr]
    assert cap < LIMITED_FDS - 64
    log_from = len(proxy.log())
    cpu_before = cpu_seconds(proxy)
    with half_open(proxy, 400) as socks:
        time.sleep(3)  # what the issue saw was a spinning accept loop: give it time to show
        latencies = [probe(proxy) for _ in range(5)]
        print(f"probe latency with {len(socks)} half-open connections: {max(latencies):.1f} ms")
        cpu_used = cpu_seconds(proxy) - cpu_before
        print(f"CPU used during the flood: {cpu_used:.2f} s")
        assert cpu_used < 3.0  # the issue saw 8 CPU-seconds in 10 s
        assert metric(proxy, "watchcache_http_connections") <= cap
        assert metric(proxy, "watchcache_http_connections_evicted_total") > 0
    assert len(proxy.log()) - log_from < 512 * 1024
    assert "Too many open files" not in proxy.log()
    assert_healthy(proxy, PROBE)


def test_out_of_descriptors_pauses_accepting_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EMFILE from accept() pauses the listener with a backoff instead of spinning on it,
    logs once (not once per attempt), and accepting resumes when descriptors are back.
    In-process: the failing accept is a listening socket whose accept() raises EMFILE."""
    from tornado import web

    from watchcache.http.serving import BoundedHTTPServer

    failures = {"left": 12, "calls": 0}

    class Exhausted(socket.socket):
        def accept(self):  # type: ignore[override]
            failures["calls"] += 1
            if failures["left"] > 0:
                failures["left"] -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    class Hello(web.RequestHandler):
        def get(self) -> None:
            self.write(b"hello")

    async def scenario() -> bytes:
        listener = Exhausted(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        server = BoundedHTTPServer(web.Application([(r"/", Hello)]), ServerLimits())
        server.add_sockets([listener])
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        server.stop()
        assert server.stats.accept_pauses == 12
        return answer

    with caplog.at_level(logging.WARNING, logger="watchcache.http"):
        answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
    # One attempt per pause, then the accept and the attempt that finds the queue empty.
    assert failures["calls"] == 12 + 2
    emfile_lines = [r for r in caplog.records if "pausing accept" in r.getMessage()]
    assert len(emfile_lines) == 1


# ---- tornado's own limits ------------------------------------------------------------------
def test_tornados_limits_are_answered_with_a_status(
    controlplane: ControlPlane, limited: Proxy
) -> None:
    """Inputs tornado refuses itself get a Status, never an empty 400 or a closed socket;
    where kube-apiserver refuses them too, with the same code."""
    limits = ServerLimits()
    too_big = "X-Big: " + "a" * (limits.max_header_bytes + 10)
    code, _, body = raw(limited, request_bytes("GET", PROBE, too_big))
    assert (code, reason_of(body)) == (431, "BadRequest")
    # kube-apiserver allows 1 MiB (and Go 4 KiB over it): beyond, both answer 431.
    huge = "X-Big: " + "a" * (2 * 1024 * 1024)
    assert raw(limited, request_bytes("GET", PROBE, huge))[0] == 431
    assert kube_raw(controlplane, request_bytes("GET", PROBE, huge))[0] == 431
    # Query fields: more than tornado's default 1,000 are served, as kube-apiserver does ...
    many = PROBE + "?" + "&".join(f"a{i}=1" for i in range(1500))
    assert raw(limited, request_bytes("GET", many))[0] == 200
    assert kube_raw(controlplane, request_bytes("GET", many))[0] == 200
    # ... and beyond --max-query-params, a 400 Status (kube-apiserver ignores the query).
    too_many = PROBE + "?" + "&".join("a" for _ in range(limits.max_query_params + 1))
    code, _, body = raw(limited, request_bytes("GET", too_many))
    assert (code, reason_of(body)) == (400, "BadRequest")
    # Unparsable requests: 400 from both, a Status from watchcache.
    for bad in (
        b"GARBAGE\r\n\r\n",
        b"GET /apis HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
        b"GET /apis HTTP/1.1\r\n\r\n",  # HTTP/1.1 needs its Host ...
        b"GET /apis HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  # ... and only one
        b"GET /apis HTTP/1.1\r\nHost: x y\r\n\r\n",
        b"POST /apis/ray.io/v1/namespaces/default/rayclusters HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n",
    ):
        code, _, body = raw(limited, bad)
        assert (code, reason_of(body)) == (400, "BadRequest"), (bad[:60], body[:200])
        assert kube_raw(controlplane, bad)[0] == 400
    # A Content-Length over tornado's own body bound: watchcache's 413, and nothing after it.
    with connect(limited) as sock:
        sock.sendall(
            f"POST {PROBE} HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n".encode()
        )
        code, _, body = read_answer(sock)
        assert (code, reason_of(body)) == (413, "RequestEntityTooLarge")
        sock.settimeout(10)
        assert sock.recv(65536) == b""
    assert_healthy(limited, PROBE)


# ---- shutdown ------------------------------------------------------------------------------
def test_write_in_flight_during_sigterm_gets_its_answer(
    controlplane: ControlPlane, proxy_factory: Callable[..., Proxy]
) -> None:
    """SIGTERM while a create is in flight (its body half sent): the server stops taking
    connections but finishes the create, answers it, and then exits by itself."""
    proxy = proxy_factory("--shutdown-grace", "20")
    name = "sigterm-in-flight"
    obj = population.raycluster(name, "default", {}, controlplane.samples_dir, state=None)
    body = json.dumps(obj).encode()
    path = "/apis/ray.io/v1/namespaces/default/rayclusters"
    head = request_bytes("POST", path, "Content-Type: application/json")
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    try:
        with connect(proxy, timeout=30) as sock:
            sock.sendall(head + body[:10])
            time.sleep(0.5)  # the headers are in: the request is in flight
            proxy.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "shutting down" in proxy.log(), timeout=10, what="shutdown begun")
            sock.sendall(body[10:])
            code, _, answer = read_answer(sock)
        assert code == 201, answer[:300]
        assert controlplane.request("GET", f"{path}/{name}")[0] == 200
        assert proxy.proc.wait(30) == 0
        assert "Traceback" not in proxy.log()
    finally:
        controlplane.request("DELETE", f"{path}/{name}")


# ---- methods per path, as kube-apiserver answers them ---------------------------------------
METHOD_PATHS = (
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/version",
    "/api",
    "/apis",
    "/apis/ray.io",
    "/apis/ray.io/v1",
    "/apis/events.k8s.io/v1",
    "/openapi/v2",
    "/openapi/v3",
    "/openapi/v3/apis/ray.io/v1",
    "/apis/ray.io/v1/rayclusters",
    "/apis/ray.io/v1/namespaces/default/rayclusters",
    "/apis/ray.io/v1/namespaces/default/rayclusters/missing",
    "/apis/ray.io/v1/namespaces/default/rayclusters/missing/status",
    "/no/such/path",
)
METHODS = ("GET", "HEAD", "OPTIONS", "TRACE", "CONNECT", "FOO", "POST", "PUT", "PATCH", "DELETE")


def test_methods_per_path_answer_as_kube_apiserver(
    controlplane: ControlPlane, limited: Proxy
) -> None:
    """Every method on every kind of path: the same code as kube-apiserver, and the same
    Status reason where kube-apiserver gives a Status (it answers some 404s in plain text;
    watchcache with a Status unless it relays kube-apiserver's answer to a write). HEAD is
    answered where GET is, except on /version and /api, which kube-apiserver serves on GET
    alone."""
    differences = []
    for method in METHODS:
        for path in METHOD_PATHS:
            data = request_bytes(method, path)
            kube_code, _, kube_body = kube_raw(controlplane, data)
            code, _, body = raw(limited, data)
            kube_reason = reason_of(kube_body) if method != "HEAD" else None
            if code != kube_code or (kube_reason and reason_of(body) != kube_reason):
                differences.append((method, path, kube_code, kube_reason, code, reason_of(body)))
            if method != "HEAD" and code >= 400 and body != kube_body:
                # watchcache's own answers are Statuses; a write it forwards gets kube's.
                assert reason_of(body), (method, path, body[:200])
    assert not differences, "\n".join(map(str, differences))
    assert_healthy(limited, PROBE)


# ---- failures watchcache cannot classify ---------------------------------------------------
def test_unclassified_failure_is_a_500_status_with_an_id_the_log_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that raises something unexpected: the client gets a 500 Status naming an
    error id, and the log has that id with the traceback (and nothing else does).
    In-process, since no client input is known to cause one."""
    from watchcache.http.adapter import Route, Router, Served
    from watchcache.http.serving import BoundedHTTPServer
    from watchcache.middleware.core import Request, Response, compose

    async def broken(request: Request) -> Response:
        raise RuntimeError("unexpected")

    served = Served(compose([]), lambda method, code: None)

    async def scenario() -> bytes:
        fallback = Route(broken)
        app = Router([(r"/", fallback)], served, fallback=fallback, undecodable=fallback)
        server = BoundedHTTPServer(app, ServerLimits())
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        server.add_sockets([listener])
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        server.stop()
        return answer

    with caplog.at_level(logging.ERROR, logger="watchcache.http"):
        answer = asyncio.run(scenario())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500")
    status = json.loads(body)
    assert status["kind"] == "Status" and status["reason"] == "InternalError"
    error_id = re.search(r"error id ([0-9a-f]+)", status["message"]).group(1)  # type: ignore[union-attr]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
