"""Scenario 6: write-through latency (create, merge-patch, delete) for each target."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.context import TARGETS, Bench
from benchmarks.fill import plan_rayclusters
from benchmarks.reads import log
from tests.support import population as pop

WRITE_NS = "bench-writes"


def scenario_6(bench: Bench) -> None:
    pop.ensure_namespaces(bench.cp.request, [WRITE_NS])
    template = pop.build(plan_rayclusters(1, [WRITE_NS], seed=5)[0], bench.cp.samples_dir)
    template.pop("status", None)
    body = bench.workdir / "write-body.json"
    body.write_text(json.dumps(template))
    per: dict[str, dict[str, dict[str, float]]] = {}
    for name in TARGETS:
        target = bench.targets[name]
        out = bench.workdir / f"writes-{name}.json"
        env = {**os.environ, "BENCH_CA": str(bench.cp.ca_file)}
        if name == "direct":
            env["BENCH_TOKEN"] = bench.cp.admin.token
        argv = [sys.executable, "-m", "benchmarks.writes", "--base", target.base]
        argv += ["--namespace", WRITE_NS, "--prefix", f"w-{name}", "--body", str(body)]
        argv += ["--count", str(bench.sizes.writes), "--out", str(out)]
        proc = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"writes to {name} failed: {proc.stderr.decode()[-1000:]}")
        per[name] = json.loads(out.read_text())
        log(
            f"6 {name}: "
            + ", ".join(
                f"{op} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms"
                for op, v in per[name].items()
            )
        )
    res = bench.results
    res.raw["writes"] = per
    for op in ("create", "patch", "delete"):
        case = f"{op}, one at a time ({bench.sizes.writes})"
        p50 = {n: per[n][op]["p50_ms"] for n in TARGETS}
        res.add("6", case, "p50", "lower", p50, "ms")
        res.add("6", case, "p99", "lower", {n: per[n][op]["p99_ms"] for n in TARGETS}, "ms")
        extra = p50["cached"] - p50["direct"]
        res.goal("6", f"{op}: p50 within 3 ms of direct", f"+{extra:.2f} ms", extra <= 3)
