"""Scenarios 1-4 and 8: polling reads under wrk, for each target, and the ceiling."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

from benchmarks.context import TARGETS, Bench
from benchmarks.fill import SHARD_LABEL
from benchmarks.procs import Target
from benchmarks.wrk import LoadResult, run_wrk
from tests.support.controlplane import free_port

API = "/apis/ray.io/v1"
NOISY_CORES = 0.5  # other processes busier than this during a run: its figures are marked
MIN_REQUESTS = 4  # fewer in a run, and it is run again for longer


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _duration(bench: Bench, single_s: float, connections: int) -> float:
    """Long enough that a slow target completes a few rounds of its ``connections``."""
    wanted = 4 * single_s * max(1.0, connections / 2)
    return max(bench.sizes.seconds, min(bench.sizes.max_seconds, wanted))


def load_case(
    bench: Bench,
    scenario: str,
    case: str,
    paths: list[str],
    connections: int,
    *,
    conditional: bool = False,
) -> dict[str, LoadResult]:
    """Runs one case against the three targets and records req/s, p50, p99 and CPU."""
    out: dict[str, LoadResult] = {}
    checks: dict[str, str] = {}
    for name in TARGETS:
        target = bench.targets[name]
        t = time.monotonic()
        code, headers, body = target.get(paths[0])
        single = time.monotonic() - t
        if code != 200:
            raise RuntimeError(f"{name} GET {paths[0]}: HTTP {code}: {body[:300]!r}")
        extra: dict[str, str] = {}
        if conditional:
            etag = headers.get("etag")
            if etag:
                extra["If-None-Match"] = etag
                code, _, _ = target.get(paths[0], extra)
            checks[name] = f"ETag {'given' if etag else 'not given'}, polled answer {code}"
        seconds = _duration(bench, single, connections)
        for _ in range(2):
            result = run_wrk(
                target,
                paths,
                connections=connections,
                seconds=seconds,
                headers=extra,
                quiet=bench.server_pids,
            )
            if result.requests >= MIN_REQUESTS:
                break
            # Too slow to finish a few requests in time: once more, for longer.
            limit = 4 * bench.sizes.max_seconds
            seconds = min(limit, max(3 * seconds, 3 * single * connections))
            log(f"{scenario} {case} {name}: {result.requests} requests; again for {seconds:.0f} s")
        out[name] = result
        log(
            f"{scenario} {case} {name}: {result.rps:.1f} req/s p50 {result.p50_ms:.2f} ms "
            f"p99 {result.p99_ms:.2f} ms ({result.requests} requests, {result.errors} errors, "
            f"{len(body) / 1e6:.2f} MB body; other processes {result.other_cores:.2f} cores)"
        )
    res = bench.results
    res.raw.setdefault("load", {})[f"{scenario} {case}"] = {
        n: r.as_dict() for n, r in out.items()
    } | ({"checks": checks} if checks else {})
    if checks:
        res.notes.append(
            f"Scenario {scenario} ({case}): " + "; ".join(f"{n}: {c}" for n, c in checks.items())
        )

    def vals(attr: str) -> dict[str, float]:
        return {n: getattr(r, attr) for n, r in out.items()}

    noisy = max(r.other_cores for r in out.values()) > NOISY_CORES
    for metric, better, attr, unit in (
        ("req/s", "higher", "rps", ""),
        ("p50", "lower", "p50_ms", "ms"),
        ("p99", "lower", "p99_ms", "ms"),
        ("server CPU / 1k req", "lower", "server_cpu_per_1k", "s"),
        ("API server CPU / 1k req", "lower", "api_cpu_per_1k", "s"),
    ):
        res.add(scenario, case, metric, better, vals(attr), unit, noisy=noisy)
    return out


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}x"


def scenario_1(bench: Bench) -> None:
    n_ns = bench.sizes.per_namespace
    n_all = bench.sizes.objects
    ns_path = f"{API}/namespaces/{bench.ns}/rayclusters"
    for path, what in ((ns_path, f"list {n_ns:,} (one namespace)"), (f"{API}/rayclusters", None)):
        what = what or f"list {n_all:,} (all namespaces)"
        for c in (1, 16):
            r = load_case(bench, "1", f"{what}, c={c}", [path], c)
            if path != ns_path:
                continue
            # The targets are for the 1,000-object list.
            rps = r["cached"].rps / r["direct"].rps
            p99 = r["cached"].p99_ms / r["direct"].p99_ms
            cpu = r["cached"].server_cpu_per_1k / r["direct"].server_cpu_per_1k
            res = bench.results
            res.goal("1", f"{what}, c={c}: ≥10x direct req/s", _fmt(rps), rps >= 10)
            res.goal("1", f"{what}, c={c}: p99 ≤ 1/10 direct", f"{p99:.3f}x", p99 <= 0.1)
            res.goal("1", f"{what}, c={c}: CPU/req < 1/10 direct", f"{cpu:.3f}x", cpu < 0.1)


def scenario_2(bench: Bench) -> None:
    shard = quote(f"{SHARD_LABEL}=s07")
    matches = sum(1 for i in range(bench.sizes.objects) if i % 100 == 7)
    target_ns = bench.namespaces[len(bench.namespaces) // 2]
    one = bench.names[target_ns][0]
    cases = [
        (f"label selector, {matches} of {bench.sizes.objects:,} (1%)", [f"?labelSelector={shard}"]),
        ("field selector metadata.name, same name", [f"?fieldSelector=metadata.name%3D{one}"]),
    ]
    names = [n for ns in bench.namespaces for n in bench.names[ns]][
        :: max(1, bench.sizes.objects // 1000)
    ]
    cases.append(
        (
            f"field selector metadata.name, {len(names)} names in turn",
            [f"?fieldSelector=metadata.name%3D{n}" for n in names],
        )
    )
    for case, queries in cases:
        r = load_case(bench, "2", f"{case}, c=16", [f"{API}/rayclusters{q}" for q in queries], 16)
        ratio = r["cached"].rps / r["direct"].rps
        bench.results.goal("2", f"{case}: ≥20x direct req/s", _fmt(ratio), ratio >= 20)


def scenario_3(bench: Bench) -> None:
    path = f"{API}/namespaces/{bench.ns}/rayclusters"
    case = f"list {bench.sizes.per_namespace:,} with If-None-Match, c=16"
    r = load_case(bench, "3", case, [path], 16, conditional=True)
    ratio = r["cached"].rps / r["direct"].rps
    bench.results.goal("3", "unchanged polling: ≥50x direct req/s", _fmt(ratio), ratio >= 50)


def scenario_4(bench: Bench) -> None:
    name = bench.names[bench.ns][len(bench.names[bench.ns]) // 2]
    load_case(
        bench,
        "4",
        "get one RayCluster, c=16",
        [f"{API}/namespaces/{bench.ns}/rayclusters/{name}"],
        16,
    )


@contextlib.contextmanager
def ceiling_server(
    bench: Bench, body: bytes, module: str = "benchmarks.ceiling", *args: str
) -> Iterator[Target]:
    """A fixed-body server (``module``: benchmarks.ceiling or tornado_ceiling) answering
    every GET with ``body``, for the block."""
    port = free_port()
    body_file = bench.workdir / f"ceiling-body-{port}.json"
    body_file.write_bytes(body)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), "--body", str(body_file), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the ceiling server did not start")
        yield Target("ceiling", f"http://127.0.0.1:{port}", {}, [proc.pid], [])
    finally:
        proc.terminate()
        proc.wait(10)


def ceiling_run(bench: Bench, body: bytes, path: str, connections: int) -> LoadResult:
    """wrk against a fresh benchmarks.ceiling server answering with ``body``."""
    with ceiling_server(bench, body) as target:
        return run_wrk(
            target,
            [path],
            connections=connections,
            seconds=bench.sizes.seconds,
            quiet=[*bench.server_pids, *target.own_pids],
        )


def scenario_8(bench: Bench) -> None:
    """The same list bytes as the cached target serves, from a fixed buffer."""
    res = bench.results
    cached = bench.targets["cached"]
    ceiling: dict[str, dict[str, float]] = {}
    for path, what in (
        (
            f"{API}/namespaces/{bench.ns}/rayclusters",
            f"list {bench.sizes.per_namespace:,} (one namespace)",
        ),
        (f"{API}/rayclusters", f"list {bench.sizes.objects:,} (all namespaces)"),
    ):
        code, _, body = cached.get(path)
        assert code == 200, code
        for c in (1, 16):
            case = f"{what}, c={c}"
            r = ceiling_run(bench, body, path, c)
            cached_rps = next(
                row.values["cached"]
                for row in res.rows
                if row.scenario == "1" and row.case == case and row.metric == "req/s"
            )
            ceiling[case] = {
                "ceiling_rps": r.rps,
                "ceiling_p99_ms": r.p99_ms,
                "ceiling_cpu_per_1k": r.server_cpu_per_1k,
                "cached_rps": cached_rps,
                "cached_share": cached_rps / r.rps,
            }
            log(f"8 {case}: ceiling {r.rps:.1f} req/s, cached {cached_rps:.1f} req/s")
            share = cached_rps / r.rps
            res.goal("8", f"{case}: cached ≥ ½ of the ceiling", f"{share:.2f}", share >= 0.5)
    res.raw["ceiling"] = ceiling
