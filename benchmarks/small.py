"""Scenarios 11 and 12: small answers. Workers (req/s and CPU per request of ``--workers 1``
and ``--workers 2``), and the small-answer ceiling (a bare Tornado server, same bytes).

Both load the cached path with wrk at c=16. In scenario 11 wrk shares the two cores with the
servers, so req/s alone favours whichever setup leaves wrk more CPU: CPU seconds per 1,000
requests (every process of the server: supervisor and workers) is the fairer comparison.
Scenario 12 pins each server to one core and wrk to the other, and alternates its four
runs (get and name-selector list, watchcache and the ceiling), three rounds, medians kept.
"""

from __future__ import annotations

from typing import Any

from benchmarks.context import Bench
from benchmarks.procs import pinned, rss_bytes, split_cores, start_workers, stop
from benchmarks.reads import API, ceiling_run, log
from benchmarks.wrk import ROUNDS, LoadResult, median_run, run_wrk


def _get_path(bench: Bench) -> tuple[str, str]:
    """The one RayCluster of scenario 4, and the name-selector list that finds only it."""
    name = bench.names[bench.ns][len(bench.names[bench.ns]) // 2]
    base = f"{API}/namespaces/{bench.ns}/rayclusters"
    return f"{base}/{name}", f"{base}?fieldSelector=metadata.name%3D{name}"


def share(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or not a number (a run with no request)."""
    return a / b if b and b == b else float("nan")


def scenario_11(bench: Bench) -> None:
    """``--workers 1`` against ``--workers 2`` on a get of one RayCluster."""
    res = bench.results
    path, _ = _get_path(bench)
    raw: dict[str, dict[str, float]] = {}
    for count in (1, 2):
        target = start_workers(bench.cp, f"workers-{count}", bench.workdir, count)
        try:
            code, _, body = target.get(path)
            assert code == 200, (code, body[:300])
            r = run_wrk(
                target,
                [path],
                connections=16,
                seconds=bench.sizes.seconds,
                quiet=[*bench.server_pids, *target.own_pids],
            )
            workers = target.own_pids[1:] or target.own_pids
            rss = rss_bytes(workers) / len(workers) / 1e6
        finally:
            stop(target)
        own_cpu = r.server_cpu_per_1k - r.api_cpu_per_1k
        case = f"get one RayCluster, c=16, --workers {count}"
        res.add("11", case, "req/s", "higher", {"cached": r.rps})
        res.add("11", case, "p99", "lower", {"cached": r.p99_ms}, "ms")
        res.add("11", case, "watchcache CPU / 1k req", "lower", {"cached": own_cpu}, "s")
        res.add("11", case, "RSS per worker", "lower", {"cached": rss}, "MB")
        raw[str(count)] = r.as_dict() | {"watchcache_cpu_per_1k": own_cpu, "rss_per_worker_mb": rss}
        log(
            f"11 --workers {count}: {r.rps:.0f} req/s, p99 {r.p99_ms:.1f} ms,"
            f" {own_cpu:.3f} CPU s / 1k req, {rss:.0f} MB RSS per worker"
        )
    res.raw["workers"] = raw
    res.notes.append(
        "Scenario 11: watchcache CPU / 1k req counts the supervisor and every worker (not the"
        " API server); wrk runs on the same two cores, so req/s with two workers is bounded by"
        " what wrk leaves them."
    )


def scenario_12(bench: Bench) -> None:
    """Small answers of the cached target next to a bare Tornado server's, same bytes."""
    res = bench.results
    cached = bench.targets["cached"]
    get_path, sel_path = _get_path(bench)
    n = bench.sizes.per_namespace
    cases = [
        ("get one RayCluster, c=16", get_path),
        (f"list fieldSelector=metadata.name, one namespace of {n:,}, c=16", sel_path),
    ]
    # Each server on one core and wrk on the other, for both: a ratio to the ceiling
    # moves less when neither server shares its core with the load generator. Every case
    # alternates with the others, three runs each, medians kept: a passing busy spell of
    # the machine or the API server then falls on all of them, not on one.
    cores = split_cores()
    answers: dict[str, tuple[bytes, str]] = {}
    for case, path in cases:
        code, headers, body = cached.get(path)
        assert code == 200, (code, body[:300])
        answers[case] = (body, headers.get("content-type", "application/json"))
    rounds: dict[tuple[str, str], list[LoadResult]] = {}
    seconds = bench.sizes.seconds / 2
    for _ in range(ROUNDS):
        for case, path in cases:
            with pinned(cached.own_pids, cores and cores[0]):
                mine = run_wrk(
                    cached,
                    [path],
                    connections=16,
                    seconds=seconds,
                    quiet=bench.server_pids,
                    cpus=cores and cores[1],
                )
            body, content_type = answers[case]
            ceiling = ceiling_run(
                bench,
                body,
                path,
                16,
                "benchmarks.tornado_ceiling",
                "--content-type",
                content_type,
                cores=cores,
                seconds=seconds,
            )
            rounds.setdefault((case, "cached"), []).append(mine)
            rounds.setdefault((case, "tornado"), []).append(ceiling)
    runs: dict[str, dict[str, LoadResult]] = {}
    for case, _ in cases:
        body = answers[case][0]
        r = median_run(rounds[case, "cached"])
        ceiling = median_run(rounds[case, "tornado"])
        runs[case] = {"cached": r, "tornado": ceiling}
        res.add("12", case, "req/s", "higher", {"cached": r.rps})
        res.add("12", case, "p99", "lower", {"cached": r.p99_ms}, "ms")
        res.add("12", case, "server CPU / 1k req", "lower", {"cached": r.server_cpu_per_1k}, "s")
        ceil_case = f"{case}: bare Tornado, same {len(body):,} B"
        res.add("12", ceil_case, "req/s", "higher", {"cached": ceiling.rps})
        res.add("12", ceil_case, "p99", "lower", {"cached": ceiling.p99_ms}, "ms")
        log(
            f"12 {case}: cached {r.rps:.0f} req/s (p99 {r.p99_ms:.1f} ms),"
            f" Tornado {ceiling.rps:.0f} req/s (p99 {ceiling.p99_ms:.1f} ms)"
        )
    (get_case, _), (sel_case, _) = cases
    get, sel = runs[get_case], runs[sel_case]
    g = share(get["cached"].rps, get["tornado"].rps)
    s = share(sel["cached"].rps, sel["tornado"].rps)
    sg = share(sel["cached"].rps, get["cached"].rps)
    res.goal("12", f"{get_case}: ≥ 0.7x the Tornado ceiling", f"{g:.2f}x", g >= 0.7)
    res.goal("12", f"{sel_case}: ≥ 0.7x the Tornado ceiling", f"{s:.2f}x", s >= 0.7)
    res.goal("12", f"{sel_case}: ≥ 0.9x the cached get", f"{sg:.2f}x", sg >= 0.9)
    small: dict[str, Any] = {
        case: {
            "cached_rps": r["cached"].rps,
            "cached_rounds_rps": [x.rps for x in rounds[case, "cached"]],
            "ceiling_rounds_rps": [x.rps for x in rounds[case, "tornado"]],
            "watchcache_cpu_per_1k": r["cached"].server_cpu_per_1k - r["cached"].api_cpu_per_1k,
            "api_cpu_per_1k": r["cached"].api_cpu_per_1k,
            "ceiling_rps": r["tornado"].rps,
            "ceiling_p99_ms": r["tornado"].p99_ms,
            "cached_share": share(r["cached"].rps, r["tornado"].rps),
        }
        for case, r in runs.items()
    }
    res.raw["small_ceiling"] = small
    res.notes.append(
        "Scenario 12: watchcache and the Tornado ceiling each run on one core, wrk on the"
        " other (taskset-style affinity, both alike), so that neither ratio depends on how"
        " the scheduler shares a core between a server and its load generator; its four runs"
        " (get and name-selector list, watchcache and the ceiling) alternate, three rounds,"
        " and the medians are compared."
    )
