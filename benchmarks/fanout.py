"""Watch fan-out load: N watchers per asyncio process, and a steady writer in another.

    python -m benchmarks.fanout watch --url URL --count N --writes FILE --out FILE
    python -m benchmarks.fanout write --server URL --namespace NS --names a,b --rate R
                                      --seconds S --out FILE

The watch process raises its descriptor limit to the hard one and opens N ``?watch=true``
streams (HTTP/1.1, TLS for the API server) as asyncio Protocols with a lean parser (no
coroutine per stream, no await per chunk: 10,000 streams take several such processes),
prints ``ready`` once every one has its response head, and records, per watcher, the
resourceVersion and arrival time (CLOCK_MONOTONIC, shared by all processes) of every
MODIFIED event. On ``stop`` on its standard input it waits until every written version has
arrived (or a grace period ends), matches arrivals to the writer's log and writes a summary
(and, with ``--latencies``, every delivery's latency, so that ``merge`` can take the
percentiles of several processes over all of their deliveries).

The benchmarks run ``benchmarks/watchload`` instead, a Go program with this same command line
and the same output (``watchload watch ...``; tests/unit/test_watchload.py runs both against
one stream server): this reader needs tens of µs of CPU per event, more than two cores have
for 10,000 watchers at 10 writes/s. It stays as the reference the Go one is held to.

The writer merge-patches an annotation of one object after another on the API server at
``rate`` per second, and logs each new resourceVersion with the time its response arrived:
delivery latency is measured from the write's answer to each watcher's receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import resource
import ssl
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MARK = b'"resourceVersion":"'


def _ssl(url: str) -> ssl.SSLContext | None:
    if not url.startswith("https"):
        return None
    ca = os.environ.get("BENCH_CA")
    return ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()


def _auth() -> str:
    token = os.environ.get("BENCH_TOKEN")
    return f"Authorization: Bearer {token}\r\n" if token else ""


class Dechunker:
    """HTTP/1.1 body bytes to complete lines, chunked or not: no await per chunk, no copy of
    the body beyond one join per read (a lean parser, so that one process can read 10,000
    streams)."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.raw = b""  # an incomplete chunk-size line
        self.left = 0  # >0: data bytes left in this chunk; <0: CRLF bytes still to skip
        self.partial = b""
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.chunked:
            raw = self.raw + data if self.raw else data
            pos, n, parts = 0, len(raw), []
            while pos < n and not self.done:
                if self.left > 0:
                    take = min(self.left, n - pos)
                    parts.append(raw[pos : pos + take])
                    pos += take
                    self.left -= take
                    if self.left == 0:
                        self.left = -2
                elif self.left < 0:
                    skip = min(-self.left, n - pos)
                    pos += skip
                    self.left += skip
                else:
                    end = raw.find(b"\r\n", pos)
                    if end < 0:
                        break
                    size = int(raw[pos:end].split(b";")[0], 16)
                    pos = end + 2
                    if size == 0:
                        self.done = True
                    self.left = size
            self.raw = raw[pos:] if not self.done else b""
            data = b"".join(parts)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return lines


class Watcher(asyncio.Protocol):
    """One watch stream; arrivals of MODIFIED events as (resourceVersion, time)."""

    def __init__(self, request: bytes, headed: asyncio.Event) -> None:
        self.request = request
        self.headed = headed
        self.rvs = array("q")
        self.times = array("d")
        self.status = 0
        self.closed_early = False
        self.error = ""
        self.head = b""
        self.body: Dechunker | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.body is None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            head, data = self.head[:i], self.head[i + 4 :]
            self.status = int(head.split(b" ", 2)[1])
            self.body = Dechunker(b"chunked" in head.lower())
            self.headed.set()
        lines = self.body.feed(data)
        if lines:
            self._take(lines, now)
        if self.body.done:
            self.closed_early = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_early = True
        if exc is not None and not self.error:
            self.error = f"{type(exc).__name__}: {exc}"
        self.headed.set()

    def _take(self, lines: list[bytes], now: float) -> None:
        for line in lines:
            if not line.startswith(b'{"type":"MODIFIED"'):
                continue
            i = line.find(MARK)
            if i < 0:
                continue
            j = line.index(b'"', i + len(MARK))
            self.rvs.append(int(line[i + len(MARK) : j]))
            self.times.append(now)


async def _open(url: str, watcher: Watcher, opened: asyncio.Semaphore) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    try:
        async with opened:
            await loop.create_connection(lambda: watcher, host, port, ssl=_ssl(url))
            await watcher.headed.wait()
    except Exception as exc:
        watcher.error = f"{type(exc).__name__}: {exc}"
        watcher.closed_early = True
        watcher.headed.set()


def raise_nofile() -> int:
    """The soft descriptor limit raised to the hard one: 10,000 sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def split(count: int, procs: int) -> list[int]:
    """``count`` watchers over ``procs`` processes, as evenly as can be (none empty)."""
    procs = max(1, min(procs, count))
    return [count // procs + (1 if i < count % procs else 0) for i in range(procs)]


def merge(summaries: list[dict[str, Any]], latencies: list[Sequence[float]]) -> dict[str, Any]:
    """One summary of several watch processes: counts added, percentiles over every
    delivery of every process (not an average of each process's percentiles)."""
    every = sorted(x for part in latencies for x in part)
    errors = sorted({e for s in summaries for e in s["errors"]})[:5]
    out: dict[str, Any] = {
        key: sum(s[key] for s in summaries)
        for key in ("watchers", "connected", "ended_early", "expected", "delivered", "cpu_s")
    }
    out.update(
        errors=errors,
        sent=max(s["sent"] for s in summaries),
        processes=len(summaries),
        p50_ms=_percentile(every, 50),
        p99_ms=_percentile(every, 99),
        max_ms=every[-1] if every else float("nan"),
    )
    return out


async def watch_main(args: argparse.Namespace) -> None:
    raise_nofile()
    parts = urlsplit(args.url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{_auth()}"
        "Accept: application/json\r\n\r\n"
    ).encode()
    watchers = [Watcher(request, asyncio.Event()) for _ in range(args.count)]
    opened = asyncio.Semaphore(64)
    t0 = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(_open(args.url, w, opened) for w in watchers)), args.connect_timeout
    )
    connected = sum(1 for w in watchers if w.status == 200 and not w.closed_early)
    print(f"ready {connected} {time.monotonic() - t0:.2f}", flush=True)
    cpu0 = time.process_time()

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    writes: dict[int, float] = {int(k): v for k, v in json.loads(args.writes.read_text()).items()}
    wanted = set(writes)
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline:
        if all(
            len(w.rvs) >= len(wanted) and wanted <= set(w.rvs)
            for w in watchers
            if not w.closed_early
        ):
            break
        await asyncio.sleep(0.1)
    ended_early = sum(1 for w in watchers if w.closed_early)
    cpu = time.process_time() - cpu0  # reading the streams, not the matching below
    for w in watchers:
        if w.transport is not None:
            w.transport.abort()  # type: ignore[attr-defined]

    latencies = array("d")
    delivered = 0
    for w in watchers:
        seen: set[int] = set()
        for rv, at in zip(w.rvs, w.times, strict=True):
            if rv in writes and rv not in seen:
                seen.add(rv)
                latencies.append((at - writes[rv]) * 1000)
        delivered += len(seen)
    ordered = sorted(latencies)
    summary = {
        "watchers": args.count,
        "connected": connected,
        "ended_early": ended_early,
        "errors": sorted({w.error for w in watchers if w.error})[:5],
        "sent": len(writes),
        "expected": len(writes) * args.count,
        "delivered": delivered,
        "p50_ms": _percentile(ordered, 50),
        "p99_ms": _percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "cpu_s": cpu,
    }
    if args.latencies is not None:
        args.latencies.write_bytes(array("d", ordered).tobytes())
    args.out.write_text(json.dumps(summary))


def write_main(args: argparse.Namespace) -> None:
    parts = urlsplit(args.server)
    conn = http.client.HTTPSConnection(
        parts.hostname or "127.0.0.1", parts.port or 443, context=_ssl(args.server), timeout=30
    )
    headers = {
        "Authorization": f"Bearer {os.environ['BENCH_TOKEN']}",
        "Content-Type": "application/merge-patch+json",
    }
    names = args.names.split(",")
    n = int(args.rate * args.seconds)
    log: dict[int, float] = {}
    patch_ms: list[float] = []
    start = time.monotonic()
    # Unique per run: a patch that sets the value an object already has changes nothing,
    # and the API server then sends no event.
    run = time.time_ns()
    for i in range(n):
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = f"/apis/ray.io/v1/namespaces/{args.namespace}/rayclusters/{names[i % len(names)]}"
        body = json.dumps({"metadata": {"annotations": {"bench.watchcache.io/seq": f"{run}-{i}"}}})
        t = time.monotonic()
        conn.request("PATCH", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        done = time.monotonic()
        if resp.status != 200:
            raise SystemExit(f"PATCH {path}: HTTP {resp.status}: {data[:300]!r}")
        log[int(json.loads(data)["metadata"]["resourceVersion"])] = done
        patch_ms.append((done - t) * 1000)
    args.out.write_text(json.dumps(log))
    patch_ms.sort()
    took = time.monotonic() - start
    print(json.dumps({"writes": n, "seconds": took, "p50_ms": _percentile(patch_ms, 50)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--url", required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--writes", type=Path, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--latencies", type=Path, default=None, help="sorted latencies, float64")
    w.add_argument("--grace", type=float, default=10.0)
    w.add_argument("--connect-timeout", type=float, default=120.0)
    p = sub.add_parser("write")
    p.add_argument("--server", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--names", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "watch":
        asyncio.run(watch_main(args))
    else:
        write_main(args)


if __name__ == "__main__":
    main()
