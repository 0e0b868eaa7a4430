"""Scenario 9: authentication and authorization on, with a warm decision cache.

A third watchcache runs with ``--authentication kubernetes --authorization kubernetes`` and
is read with a bearer token; its requests per second sit next to the unauthenticated
server's, on the same reads, and
``/metrics`` shows how many TokenReviews and SubjectAccessReviews went upstream during the
steady-state runs (none is the goal: both answers come from their caches once warm).

How the two are compared: both servers pinned to one core, loaded at the same time by two
wrk on the other core, for several passes; each pass gives the ratio of their requests per
CPU second, and the figure is the median (``wrk.side_by_side``). Their requests per second
are reported per core (requests over the server's own CPU seconds): sharing a core, each
answers about half of what it would alone.
"""

from __future__ import annotations

from typing import Any

from benchmarks.context import Bench
from benchmarks.procs import Target, pinned, split_cores, start_watchcache, stop
from benchmarks.reads import API, log
from benchmarks.wrk import (
    PASS_SECONDS,
    PASSES,
    Job,
    median_per_core,
    median_ratio,
    median_run,
    pass_ratios,
    per_core,
    side_by_side,
)

REVIEWS = (
    "watchcache_authentication_upstream_reviews_total",
    "watchcache_authorization_upstream_reviews_total",
)


def upstream_reviews(target: Target) -> float:
    """TokenReviews and SubjectAccessReviews sent so far, from the target's /metrics."""
    code, _, body = target.get("/metrics")
    assert code == 200, (code, body[:200])
    total = 0.0
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in REVIEWS:
            total += float(value)
    return total


def scenario_9(bench: Bench) -> None:
    cp = bench.cp
    plain = bench.targets["cached"]
    secured = start_watchcache(
        cp,
        "secured",
        bench.workdir,
        "--authentication",
        "kubernetes",
        "--authorization",
        "kubernetes",
        # Longer than the scenario: its runs are the steady state, which a token's review
        # falling due mid-run (every 120 s by default) would not be.
        "--authentication-ttl",
        "600",
    )
    secured.headers = {"Authorization": f"Bearer {cp.admin.token}"}
    res = bench.results
    try:
        name = bench.names[bench.ns][len(bench.names[bench.ns]) // 2]
        cases = [
            (
                f"list {bench.sizes.per_namespace:,} (one namespace), c=16",
                f"{API}/namespaces/{bench.ns}/rayclusters",
            ),
            ("get one RayCluster, c=16", f"{API}/namespaces/{bench.ns}/rayclusters/{name}"),
        ]
        raw: dict[str, dict[str, Any]] = {}
        for case, path in cases:
            for target in (plain, secured):  # warm: the token's review, the decision
                code, _, body = target.get(path)
                assert code == 200, (target.name, code, body[:300])
            before = upstream_reviews(secured)
            # Both servers share one core, wrk runs on the other: each pass measures them at
            # the same moment, which runs one after the other did not (see side_by_side).
            # The secured server starts fresh here, the plain one has served every scenario
            # before: the first pass is not kept, since a new process costs more per request
            # for its first seconds (330 -> 280 µs of CPU a get here, over three runs),
            # which would count against authentication.
            cores = split_cores()
            with pinned(plain.own_pids + secured.own_pids, cores and cores[0]):
                done = side_by_side(
                    [Job(t.name, t, path) for t in (plain, secured)],
                    passes=3 if bench.quick else PASSES,
                    seconds=min(PASS_SECONDS, bench.sizes.seconds),
                    quiet=bench.server_pids + secured.own_pids,
                    cpus=cores and cores[1],
                )
            share = median_ratio(done[secured.name], done[plain.name])
            runs = {name: median_run(rs) for name, rs in done.items()}
            plain_rps = median_per_core(done[plain.name])
            secured_rps = median_per_core(done[secured.name])
            calls = upstream_reviews(secured) - before
            log(
                f"9 {case}: {plain_rps:.1f} req/s per core plain, {secured_rps:.1f} secured"
                f" ({share:.2f}), {calls:g} upstream reviews"
            )
            res.add(
                "9", f"{case}, no authentication", "req/s per core", "higher", {"cached": plain_rps}
            )
            res.add(
                "9",
                f"{case}, authn + authz (warm)",
                "req/s per core",
                "higher",
                {"cached": secured_rps},
            )
            res.add(
                "9",
                f"{case}, authn + authz (warm)",
                "p99 (sharing a core)",
                "lower",
                {"cached": runs["secured"].p99_ms},
                "ms",
            )
            res.goal(
                "9",
                f"{case}: authenticated ≥ 0.9x unauthenticated req/s",
                f"{share:.2f}x",
                share >= 0.9,
            )
            res.goal(
                "9", f"{case}: no upstream review in the steady state", f"{calls:g}", calls == 0
            )
            raw[case] = {
                "plain_rps": plain_rps,
                "secured_rps": secured_rps,
                "pass_per_core": {n: [per_core(r) for r in rs] for n, rs in done.items()},
                "pass_ratios": pass_ratios(done[secured.name], done[plain.name]),
                "pass_rps": {n: [r.rps for r in rs] for n, rs in done.items()},
                "share": share,
                "upstream_reviews": calls,
            }
        res.raw["secured"] = raw
        res.notes.append(
            f"Scenario 9: both servers share one core, loaded at once by two wrk on the other;"
            f" after a warm-up pass, {PASSES} passes of {PASS_SECONDS:g} s; the ratio is the"
            " median of the passes' ratios of requests per CPU second, and req/s per core is"
            " each server's median of those."
        )
    finally:
        stop(secured)
