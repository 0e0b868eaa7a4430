"""Write-through latency: create, merge-patch and delete, one at a time over one keep-alive
connection, in a process of its own.

    python -m benchmarks.writes --base URL --namespace NS --prefix P --count N\
                                --body FILE --out FILE

Through watchcache with its cache, each answer includes the read-your-writes wait (the
answer is held until the cache has seen the write). ``BENCH_TOKEN`` and ``BENCH_CA``
authenticate to the API server directly.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

WARMUP = 3  # first operations of each kind, not counted: connection set-up, caches


def _connection(base: str) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "https":
        ca = os.environ.get("BENCH_CA")
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
        return http.client.HTTPSConnection(host, parts.port or 443, context=ctx, timeout=60)
    return http.client.HTTPConnection(host, parts.port or 80, timeout=60)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] if s else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="a RayCluster, JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    conn = _connection(args.base)
    token = os.environ.get("BENCH_TOKEN")
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    template = json.loads(args.body.read_text())
    collection = f"/apis/ray.io/v1/namespaces/{args.namespace}/rayclusters"
    names = [f"{args.prefix}-{i:04d}" for i in range(args.count + WARMUP)]

    def call(method: str, path: str, body: object, content_type: str, ok: int) -> float:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**auth, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        t = time.perf_counter()
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        took = (time.perf_counter() - t) * 1000
        if resp.status != ok:
            raise SystemExit(f"{method} {path}: HTTP {resp.status}: {payload[:300]!r}")
        return took

    results: dict[str, list[float]] = {"create": [], "patch": [], "delete": []}
    for i, name in enumerate(names):
        obj = {**template, "metadata": {**template["metadata"], "name": name}}
        obj["metadata"]["namespace"] = args.namespace
        took = call("POST", collection, obj, "application/json", 201)
        if i >= WARMUP:
            results["create"].append(took)
    for i, name in enumerate(names):
        patch = {"metadata": {"labels": {"bench.watchcache.io/patched": str(i)}}}
        took = call("PATCH", f"{collection}/{name}", patch, "application/merge-patch+json", 200)
        if i >= WARMUP:
            results["patch"].append(took)
    for i, name in enumerate(names):
        took = call("DELETE", f"{collection}/{name}", None, "", 200)
        if i >= WARMUP:
            results["delete"].append(took)
    summary = {
        op: {"n": len(v), "p50_ms": _percentile(v, 50), "p99_ms": _percentile(v, 99)}
        for op, v in results.items()
    }
    args.out.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
