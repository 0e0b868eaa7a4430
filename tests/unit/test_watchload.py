"""The Go watch load generator (benchmarks/watchload) next to the Python reader it replaces,
both against a small loopback stream server: the same ready line, the same summary (written
as Python's json.dumps writes it) and a latencies file that ``fanout.merge`` reads.

Lines are sent cut at awkward places (inside a chunk-size line, inside the resourceVersion
mark, across chunks) with pauses between the sends, so that they reach the reader in
separate reads.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import fanout, gobuild

WRITTEN = (101, 102, 103)


def event(kind: str, rv: int) -> bytes:
    obj = {"kind": "RayCluster", "metadata": {"name": "a", "resourceVersion": str(rv)}}
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD_PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
HEAD_CHUNKED = HEAD_PLAIN[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"


def chunked_body() -> list[bytes]:
    """Sends of a chunked stream: 101, 102 twice, 103 and an unwritten 104 as MODIFIED."""
    m101, m102 = event("MODIFIED", 101), event("MODIFIED", 102)
    wire = chunk(event("ADDED", 100)) + chunk(m101[:30]) + chunk(m101[30:])
    wire += chunk(event("BOOKMARK", 101) + m102) + chunk(m102)
    wire += chunk(event("MODIFIED", 103) + event("MODIFIED", 104))
    cuts = [1, 40, 41, wire.index(b'"resourceVersion":"101') + 5, len(wire) - 3]
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


def plain_body() -> list[bytes]:
    wire = b"".join(event("MODIFIED", rv) for rv in WRITTEN)
    return [wire[:10], wire[10:75], wire[75:]]


def ending_body() -> list[bytes]:
    """101, then the terminal chunk: the watcher ends early with one delivery."""
    return [chunk(event("MODIFIED", 101)) + b"0\r\n\r\n"]


class StreamServer:
    """Accepts ``count`` watch requests, answers each head at once and, once ``go`` is set,
    its body: the first connection chunked, the second plain, the third ends early."""

    def __init__(self, count: int, bodies: bool = True) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=count)
        self.port = self.sock.getsockname()[1]
        self.count, self.bodies = count, bodies
        self.requests: list[bytes] = []
        self.go = threading.Event()
        self.sent = threading.Event()
        self.threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        for i in range(self.count):
            conn, _ = self.sock.accept()
            t = threading.Thread(target=self._serve, args=(i, conn), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, i: int, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            self.requests.append(request)
            kind = i % 3
            conn.sendall(HEAD_PLAIN if kind == 1 else HEAD_CHUNKED)
            self.go.wait(60)
            if self.bodies:
                for piece in (chunked_body, plain_body, ending_body)[kind]():
                    conn.sendall(piece)
                    time.sleep(0.02)
            if i == 0:
                self.sent.set()
            while conn.recv(4096):  # until the reader closes
                pass

    def close(self) -> None:
        self.go.set()
        self.sock.close()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def binary() -> Path:
    return gobuild.watchload()


@pytest.fixture(params=["go", "python"])
def reader(request: pytest.FixtureRequest, binary: Path) -> list[str]:
    if request.param == "go":
        return [str(binary)]
    return [sys.executable, "-m", "benchmarks.fanout"]


@pytest.fixture
def server() -> Iterator[StreamServer]:
    s = StreamServer(3)
    yield s
    s.close()


def run_reader(
    reader: list[str], port: int, count: int, tmp: Path, writes: dict[int, float], go: StreamServer
) -> tuple[str, dict[str, object], array[float]]:
    token = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}/apis/ray.io/v1/rayclusters?watch=true&resourceVersion=5"
    out, lat, log = tmp / "out.json", tmp / "out.lat", tmp / "writes.json"
    argv = [*reader, "watch", "--url", url, "--count", str(count), "--writes", str(log)]
    argv += ["--out", str(out), "--latencies", str(lat), "--grace", "30"]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"BENCH_TOKEN": token, "PATH": "/usr/bin:/bin"},
        cwd=Path(fanout.__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline().decode()
        go.go.set()
        go.sent.wait(60)
        log.write_text(json.dumps({str(rv): t for rv, t in writes.items()}))
        proc.stdin.write(b"stop\n")
        proc.stdin.flush()
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for request in go.requests:
        head = request.decode().split("\r\n")
        assert head[0] == "GET /apis/ray.io/v1/rayclusters?watch=true&resourceVersion=5 HTTP/1.1"
        assert f"Host: 127.0.0.1:{port}" in head and "Accept: application/json" in head
        assert f"Authorization: Bearer {token}" in head
    text = out.read_text()
    return ready, json.loads(text) | {"_text": text}, array("d", lat.read_bytes())


def test_reader_counts_each_written_version_once_per_watcher(
    reader: list[str], server: StreamServer, tmp_path: Path
) -> None:
    written = time.monotonic()  # before any event is sent: every latency is >= 0
    writes = dict.fromkeys(WRITTEN, written)
    ready, summary, latencies = run_reader(reader, server.port, 3, tmp_path, writes, server)
    word, connected, seconds = ready.split()
    assert word == "ready" and connected == "3" and float(seconds) >= 0
    text = summary.pop("_text")
    assert json.dumps(json.loads(str(text))) == text  # Python's own formatting, byte for byte
    assert list(summary) == [
        "watchers", "connected", "ended_early", "errors", "sent", "expected", "delivered",
        "p50_ms", "p99_ms", "max_ms", "cpu_s",
    ]  # fmt: skip
    assert summary["watchers"] == 3 and summary["connected"] == 3
    assert summary["ended_early"] == 1  # the stream that sent its terminal chunk
    assert summary["errors"] == [] and summary["sent"] == 3 and summary["expected"] == 9
    assert summary["delivered"] == 7  # 3 + 3 + 1: the duplicate and 104 not counted
    assert len(latencies) == 7 and list(latencies) == sorted(latencies)
    # Arrival and write times share CLOCK_MONOTONIC: no negative or absurd latency.
    assert all(0 <= x < 600_000 for x in latencies)
    assert summary["p50_ms"] == latencies[3] and summary["p99_ms"] == latencies[6]
    assert summary["max_ms"] == latencies[-1]
    assert isinstance(summary["cpu_s"], float) and summary["cpu_s"] >= 0
    merged = fanout.merge([summary, summary], [latencies, latencies])
    assert merged["delivered"] == 14 and merged["p50_ms"] == latencies[3]


def test_reader_with_nothing_delivered_writes_nan(reader: list[str], tmp_path: Path) -> None:
    quiet = StreamServer(1, bodies=False)
    quiet.sent.set()
    try:
        ready, summary, latencies = run_reader(reader, quiet.port, 1, tmp_path, {}, quiet)
    finally:
        quiet.close()
    assert ready.split()[:2] == ["ready", "1"]
    text = summary.pop("_text")
    assert json.dumps(json.loads(str(text))) == text and "NaN" in str(text)
    assert summary["delivered"] == 0 and summary["expected"] == 0
    assert math.isnan(float(str(summary["p50_ms"]))) and math.isnan(float(str(summary["max_ms"])))
    assert len(latencies) == 0
