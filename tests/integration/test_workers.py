"""``--workers 2`` against the real control plane: one port, two complete watchcaches.

Reads, writes and watches go through the shared port; a write then a read on a new
connection is never stale (read-your-writes across workers, cache.shared); a worker killed
with SIGKILL is started again and no client meanwhile sees a 5xx; SIGTERM stops it all.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from support import population
from support.controlplane import ControlPlane

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-workers"
API = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
ROUNDS = 1000


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def fresh(proxy: Proxy, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request on a NEW connection (so that it may land on either worker)."""
    url = urlsplit(proxy.base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        conn.request(method, path, data, headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], what: str, bound: int = 600) -> None:
    for _ in range(bound):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def workers(controlplane: ControlPlane, proxy_factory: Callable[..., Proxy]) -> Proxy:
    population.ensure_namespaces(controlplane.request, (NS,))
    proxy = proxy_factory("--workers", "2", "--namespace", NS)
    wait_for(lambda: len(children(proxy.proc.pid)) == 2, "two workers")
    return proxy


def cluster(controlplane: ControlPlane, name: str) -> dict[str, Any]:
    obj = population.raycluster(
        name, NS, {"t": "workers"}, controlplane.samples_dir, variant=1, state=None
    )
    del obj["metadata"]["namespace"]
    return obj


def test_reads_writes_and_watches_through_the_shared_port(
    workers: Proxy, controlplane: ControlPlane
) -> None:
    code, created = fresh(workers, "POST", API, cluster(controlplane, "wk-basic"))
    assert code == 201, created
    watch_url = urlsplit(workers.base)
    conn = http.client.HTTPConnection(watch_url.hostname or "", watch_url.port, timeout=30)
    rv = created["metadata"]["resourceVersion"]
    conn.request("GET", f"{API}?watch=true&resourceVersion={rv}&timeoutSeconds=10")
    resp = conn.getresponse()
    assert resp.status == 200
    code, patched = fresh(workers, "PATCH", f"{API}/wk-basic", {"metadata": {"labels": {"x": "1"}}})
    assert code == 200, patched
    event = json.loads(resp.readline())
    assert event["type"] == "MODIFIED"
    assert event["object"]["metadata"]["labels"]["x"] == "1"
    conn.close()
    code, listed = fresh(workers, "GET", API)
    assert code == 200
    assert "wk-basic" in {i["metadata"]["name"] for i in listed["items"]}
    assert fresh(workers, "DELETE", f"{API}/wk-basic")[0] == 200
    assert fresh(workers, "GET", f"{API}/wk-basic")[0] == 404


def test_a_write_then_a_read_on_a_new_connection_is_never_stale(
    workers: Proxy, controlplane: ControlPlane
) -> None:
    code, obj = fresh(workers, "POST", API, cluster(controlplane, "wk-ryw"))
    assert code == 201, obj
    for i in range(ROUNDS):
        code, obj = fresh(
            workers, "PATCH", f"{API}/wk-ryw", {"metadata": {"labels": {"round": str(i)}}}
        )
        assert code == 200, obj
        code, got = fresh(workers, "GET", f"{API}/wk-ryw")
        assert code == 200, got
        assert got["metadata"]["labels"]["round"] == str(i), f"stale read at round {i}"
        assert int(got["metadata"]["resourceVersion"]) >= int(obj["metadata"]["resourceVersion"])
    _, metrics = fresh_text(workers, "/metrics")
    assert 'worker="0"' in metrics and 'worker="1"' in metrics
    assert "watchcache_workers 2" in metrics
    fresh(workers, "DELETE", f"{API}/wk-ryw")


def fresh_text(proxy: Proxy, path: str) -> tuple[int, str]:
    url = urlsplit(proxy.base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def accepted_by(pid: int, port: int) -> int:
    """How many client connections to ``port`` the process holds (its accepted sockets)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(f"socket:[{fields[9]}]")  # ESTABLISHED, on the server's side
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) in inodes
    return count


def test_a_burst_of_connections_is_spread_over_the_workers(workers: Proxy) -> None:
    """A client's pool opens its connections at once; were they all given to the worker
    awake first, the other would serve none of that client's requests."""
    wait_for(lambda: fresh_text(workers, "/readyz")[0] == 200, "ready")
    pids = sorted(children(workers.proc.pid))
    url = urlsplit(workers.base)
    port = url.port or 80
    burst = [socket.create_connection((url.hostname or "", port)) for _ in range(32)]
    try:
        wait_for(
            lambda: sum(accepted_by(pid, port) for pid in pids) >= len(burst),
            "every connection accepted",
        )
        held = {pid: accepted_by(pid, port) for pid in pids}
        assert all(n >= 4 for n in held.values()), held  # about 16 each, by address
    finally:
        for sock in burst:
            sock.close()


def test_a_killed_worker_is_started_again_and_no_client_sees_a_5xx(workers: Proxy) -> None:
    before = children(workers.proc.pid)
    victim = min(before)
    statuses: list[int] = []
    errors = 0
    for i in range(400):
        if i == 50:
            os.kill(victim, signal.SIGKILL)
        try:
            statuses.append(fresh(workers, "GET", API)[0])
        except (OSError, http.client.HTTPException):
            errors += 1  # a connection the killed worker held
    assert not [s for s in statuses if s >= 500], statuses
    wait_for(
        lambda: len(children(workers.proc.pid)) == 2 and victim not in children(workers.proc.pid),
        "the killed worker started again",
    )
    wait_for(lambda: fresh_text(workers, "/readyz")[0] == 200, "ready again")
    assert errors < 400


def test_sigterm_stops_the_supervisor_and_every_worker(
    controlplane: ControlPlane, proxy_factory: Callable[..., Proxy]
) -> None:
    proxy = proxy_factory("--workers", "2", "--namespace", NS)
    wait_for(lambda: len(children(proxy.proc.pid)) == 2, "two workers")
    pids = children(proxy.proc.pid)
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(60) == 0
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or zombie(pid), f"{pid} gone")


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
