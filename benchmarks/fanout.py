"""Watch fan-out load: N watchers in one asyncio process, and a steady writer in another.

    python -m benchmarks.fanout watch --url URL --count N --writes FILE --out FILE
    python -m benchmarks.fanout write --server URL --namespace NS --names a,b --rate R
                                      --seconds S --out FILE

The watch process opens N ``?watch=true`` streams (HTTP/1.1, TLS for the API server),
prints ``ready`` once every one has its response head, and records, per watcher, the
resourceVersion and arrival time (CLOCK_MONOTONIC, shared by all processes) of every
MODIFIED event. On ``stop`` on its standard input it waits until every written version has
arrived (or a grace period ends), matches arrivals to the writer's log and prints a summary.

The writer merge-patches an annotation of one object after another on the API server at
``rate`` per second, and logs each new resourceVersion with the time its response arrived:
delivery latency is measured from the write's answer to each watcher's receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import ssl
import sys
import time
from array import array
from pathlib import Path
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


class Watcher:
    """One watch stream; arrivals of MODIFIED events as (resourceVersion, time)."""

    def __init__(self) -> None:
        self.rvs = array("q")
        self.times = array("d")
        self.status = 0
        self.closed_early = False
        self.error = ""

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

    async def run(self, url: str, headed: asyncio.Event, opened: asyncio.Semaphore) -> None:
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        try:
            async with opened:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=_ssl(url), limit=1 << 24
                )
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{_auth()}"
                    "Accept: application/json\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            headed.set()
            chunked = b"chunked" in head.lower()
            partial = b""
            while True:
                if chunked:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                else:
                    data = await reader.read(1 << 20)
                    if not data:
                        break
                now = time.monotonic()
                *lines, partial = (partial + data).split(b"\n")
                if lines:
                    self._take(lines, now)
            self.closed_early = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.closed_early = True
            headed.set()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def watch_main(args: argparse.Namespace) -> None:
    watchers = [Watcher() for _ in range(args.count)]
    opened = asyncio.Semaphore(64)
    events = [asyncio.Event() for _ in watchers]
    tasks = [
        asyncio.create_task(w.run(args.url, ev, opened))
        for w, ev in zip(watchers, events, strict=True)
    ]
    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), args.connect_timeout)
    connected = sum(1 for w in watchers if w.status == 200 and not w.closed_early)
    print(f"ready {connected} {time.monotonic() - t0:.2f}", flush=True)

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    writes: dict[int, float] = {int(k): v for k, v in json.loads(args.writes.read_text()).items()}
    wanted = set(writes)
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline:
        if all(wanted <= set(w.rvs) for w in watchers if not w.closed_early):
            break
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    latencies: list[float] = []
    delivered = 0
    for w in watchers:
        seen: set[int] = set()
        for rv, at in zip(w.rvs, w.times, strict=True):
            if rv in writes and rv not in seen:
                seen.add(rv)
                latencies.append((at - writes[rv]) * 1000)
        delivered += len(seen)
    latencies.sort()
    summary = {
        "watchers": args.count,
        "connected": connected,
        "ended_early": sum(1 for w in watchers if w.closed_early),
        "errors": sorted({w.error for w in watchers if w.error})[:5],
        "sent": len(writes),
        "expected": len(writes) * args.count,
        "delivered": delivered,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else float("nan"),
    }
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
