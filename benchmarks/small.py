"""Scenarios 11 and 12: small answers. Workers (req/s and CPU per request of ``--workers 1``
and ``--workers 2``), and the small-answer ceiling (a bare Tornado server, same bytes).

Both load the cached path with wrk at c=16. In scenario 11 wrk shares the two cores with the
servers, so req/s alone favours whichever setup leaves wrk more CPU: CPU seconds per 1,000
requests (every process of the server: supervisor and workers) is the fairer comparison.
Scenario 12 pins the servers to one core and wrk to the other, and loads two servers at a
time sharing that core (``wrk.side_by_side``): watchcache and the ceiling on the get,
the same on the name-selector list, the two ceilings, which relates the list to the get
through them, and watchcache next to Tornado's HTTP layer alone (the layer it is built
on). Each ratio is of requests per CPU second, the median over the passes.
"""

from __future__ import annotations

import contextlib
from typing import Any

from benchmarks.context import Bench
from benchmarks.procs import pinned, rss_bytes, split_cores, start_workers, stop
from benchmarks.reads import API, ceiling_server, log
from benchmarks.wrk import (
    PASS_SECONDS,
    PASSES,
    Job,
    LoadResult,
    median_per_core,
    median_ratio,
    median_run,
    per_core,
    run_wrk,
    side_by_side,
)


def _get_path(bench: Bench) -> tuple[str, str]:
    """The one RayCluster of scenario 4, and the name-selector list that finds only it."""
    name = bench.names[bench.ns][len(bench.names[bench.ns]) // 2]
    base = f"{API}/namespaces/{bench.ns}/rayclusters"
    return f"{base}/{name}", f"{base}?fieldSelector=metadata.name%3D{name}"


WORKER_PASSES = 3  # per worker count, alternating: a slow spell of the host hits both


def scenario_11(bench: Bench) -> None:
    """``--workers 1`` against ``--workers 2`` on a get of one RayCluster. Both servers run
    at once (the idle one costs nothing) and are loaded in turn, pass after pass; each
    figure is its median pass, so that the two are taken over the same minutes."""
    res = bench.results
    path, _ = _get_path(bench)
    raw: dict[str, dict[str, object]] = {}
    counts = (1, 2)
    with contextlib.ExitStack() as stack:
        targets = {}
        for count in counts:
            target = start_workers(bench.cp, f"workers-{count}", bench.workdir, count)
            stack.callback(stop, target)
            code, _, body = target.get(path)
            assert code == 200, (code, body[:300])
            targets[count] = target
        quiet = [*bench.server_pids, *(pid for t in targets.values() for pid in t.own_pids)]
        passes: dict[int, list[LoadResult]] = {count: [] for count in counts}
        for _ in range(WORKER_PASSES):
            for count in counts:
                passes[count].append(
                    run_wrk(
                        targets[count],
                        [path],
                        connections=16,
                        seconds=bench.sizes.seconds,
                        quiet=quiet,
                    )
                )
        rss_of = {}
        for count, target in targets.items():
            workers = target.own_pids[1:] or target.own_pids
            rss_of[count] = rss_bytes(workers) / len(workers) / 1e6
    for count in counts:
        r = median_run(passes[count])
        rss = rss_of[count]
        own_cpu = r.server_cpu_per_1k - r.api_cpu_per_1k
        case = f"get one RayCluster, c=16, --workers {count}"
        res.add("11", case, "req/s", "higher", {"cached": r.rps})
        res.add("11", case, "p99", "lower", {"cached": r.p99_ms}, "ms")
        res.add("11", case, "watchcache CPU / 1k req", "lower", {"cached": own_cpu}, "s")
        res.add("11", case, "RSS per worker", "lower", {"cached": rss}, "MB")
        raw[str(count)] = r.as_dict() | {
            "watchcache_cpu_per_1k": own_cpu,
            "rss_per_worker_mb": rss,
            "passes_rps": [p.rps for p in passes[count]],
        }
        spread = ", ".join(f"{p.rps:.0f}" for p in passes[count])
        log(
            f"11 --workers {count}: {r.rps:.0f} req/s (passes {spread}), p99 {r.p99_ms:.1f} ms,"
            f" {own_cpu:.3f} CPU s / 1k req, {rss:.0f} MB RSS per worker"
        )
    res.raw["workers"] = raw
    res.notes.append(
        "Scenario 11: watchcache CPU / 1k req counts the supervisor and every worker (not the"
        " API server); wrk runs on the same two cores, so req/s with two workers is bounded by"
        f" what wrk leaves them. Both servers run at once and are loaded in turn,"
        f" {WORKER_PASSES} passes each; each figure is the pass of median req/s."
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
    # The servers share one core, wrk runs on the other; two servers are loaded at once, so
    # that each ratio is taken at one moment of the machine (see wrk.side_by_side).
    cores = split_cores()
    answers: dict[str, tuple[bytes, str]] = {}
    for case, path in cases:
        code, headers, body = cached.get(path)
        assert code == 200, (code, body[:300])
        answers[case] = (body, headers.get("content-type", "application/json"))
    (get_case, get_path), (sel_case, sel_path) = cases
    done: dict[str, list[LoadResult]] = {}
    with contextlib.ExitStack() as stack:
        ceilings = {}
        for case, _ in cases:
            body, content_type = answers[case]
            ceilings[case] = stack.enter_context(
                ceiling_server(
                    bench, body, "benchmarks.tornado_ceiling", "--content-type", content_type
                )
            )
        body, content_type = answers[get_case]
        # Tornado's HTTP layer alone, for the get: what watchcache's own layer costs.
        floor = stack.enter_context(
            ceiling_server(
                bench,
                body,
                "benchmarks.tornado_ceiling",
                "--content-type",
                content_type,
                "--layer",
                "http",
            )
        )
        servers = [
            *cached.own_pids,
            *floor.own_pids,
            *(pid for t in ceilings.values() for pid in t.own_pids),
        ]
        pairs = [
            [
                Job(f"{get_case}/cached", cached, get_path),
                Job(f"{get_case}/tornado", ceilings[get_case], get_path),
            ],
            [
                Job(f"{sel_case}/cached", cached, sel_path),
                Job(f"{sel_case}/tornado", ceilings[sel_case], sel_path),
            ],
            [Job(f"{get_case}/cached@http", cached, get_path), Job("http", floor, get_path)],
            # The two ceilings: how much more the list's bytes cost than the get's.
            [
                Job("ceilings/sel", ceilings[sel_case], sel_path),
                Job("ceilings/get", ceilings[get_case], get_path),
            ],
        ]
        with pinned(servers, cores and cores[0]):
            for jobs in pairs:
                done |= side_by_side(
                    jobs,
                    passes=3 if bench.quick else PASSES,
                    seconds=min(PASS_SECONDS, bench.sizes.seconds),
                    quiet=[*bench.server_pids, *servers],
                    cpus=cores and cores[1],
                )
    small: dict[str, Any] = {}
    for case, _ in cases:
        mine, theirs = done[f"{case}/cached"], done[f"{case}/tornado"]
        r = median_run(mine)
        small[case] = {
            "cached_rps": median_per_core(mine),
            "cached_pass_per_core": [per_core(x) for x in mine],
            "ceiling_pass_per_core": [per_core(x) for x in theirs],
            "watchcache_cpu_per_1k": r.server_cpu_per_1k - r.api_cpu_per_1k,
            "api_cpu_per_1k": r.api_cpu_per_1k,
            "ceiling_rps": median_per_core(theirs),
            "ceiling_p99_ms": median_run(theirs).p99_ms,
            "cached_share": median_ratio(mine, theirs),
        }
        c = small[case]
        res.add("12", case, "req/s per core", "higher", {"cached": c["cached_rps"]})
        res.add("12", case, "server CPU / 1k req", "lower", {"cached": r.server_cpu_per_1k}, "s")
        ceil_case = f"{case}: bare Tornado, same {len(answers[case][0]):,} B"
        res.add("12", ceil_case, "req/s per core", "higher", {"cached": c["ceiling_rps"]})
        log(
            f"12 {case}: cached {c['cached_rps']:.0f} req/s per core,"
            f" Tornado {c['ceiling_rps']:.0f}"
        )
    g, s = small[get_case]["cached_share"], small[sel_case]["cached_share"]
    h = median_ratio(done[f"{get_case}/cached@http"], done["http"])
    small[get_case] |= {"http_layer_rps": median_per_core(done["http"]), "http_layer_share": h}
    floor_case = f"{get_case}: Tornado's HTTP layer alone (no tornado.web), same bytes"
    res.add("12", floor_case, "req/s per core", "higher", {"cached": median_per_core(done["http"])})
    log(f"12 {get_case}: {h:.2f}x of Tornado's HTTP layer alone")
    # list/get = (list/its ceiling) / (get/its ceiling) x (list's ceiling / get's ceiling)
    t = median_ratio(done["ceilings/sel"], done["ceilings/get"])
    sg = s / g * t
    res.goal("12", f"{get_case}: ≥ 0.7x the Tornado ceiling", f"{g:.2f}x", g >= 0.7)
    res.goal("12", f"{sel_case}: ≥ 0.7x the Tornado ceiling", f"{s:.2f}x", s >= 0.7)
    res.goal("12", f"{sel_case}: ≥ 0.9x the cached get", f"{sg:.2f}x", sg >= 0.9)
    res.raw["small_ceiling"] = small
    res.notes.append(
        "Scenario 12: the servers share one core and wrk runs on the other; two servers are"
        " loaded at once (watchcache and the ceiling on the get, the same on the list, the"
        f" two ceilings), {PASSES} passes of {PASS_SECONDS:g} s after a warm-up pass; each"
        " ratio is the median of the passes' ratios of requests per CPU second (req/s per"
        " core), and the list's ratio to the get goes through the two ceilings' ratio."
        f" The get is also loaded next to Tornado's HTTP layer alone, which watchcache is"
        f" built on (no tornado.web): {h:.2f}x of it."
    )
