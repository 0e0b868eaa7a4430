"""``make bench``: watchcache against the Kubernetes API server and its pass-through mode.

Starts the local control plane, fills it with RayClusters, starts ``watchcache serve
--no-cache`` and ``watchcache serve`` on it, runs every scenario against the three targets
and writes ``benchmarks/results/latest.{md,json,png}``.

    python -m benchmarks.run [--quick] [--only 1,5] [--out DIR]

``--quick`` (CI) writes to ``benchmarks/results/quick/``, which git ignores, so that it never
replaces the committed results of a full run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import reads, report, secured, small, watching, writing
from benchmarks.context import FULL, QUICK, Bench, Results
from benchmarks.fill import KeepAliveClient, fill, plan_rayclusters
from benchmarks.procs import direct_target, machine, rss_bytes, start_watchcache, stop
from benchmarks.reads import API, log
from tests.support.controlplane import ControlPlane

RESULTS = Path(__file__).resolve().parent / "results"


def scenario_7(bench: Bench) -> None:
    """Footprint: memory per cached object next to its JSON, and time to ready."""
    res = bench.results
    t = bench.targets
    n = bench.sizes.objects
    code, _, body = t["direct"].get(f"{API}/rayclusters")
    assert code == 200, code
    items = len(json.loads(body)["items"])
    raw_per_object = len(body) / items
    at_ready = {name: t[name].extra["rss_at_ready"] for name in ("no-cache", "cached")}
    per_object = (at_ready["cached"] - at_ready["no-cache"]) / items
    now = {name: float(rss_bytes(tgt.own_pids or tgt.api_pids)) for name, tgt in t.items()}
    case = f"{items:,} RayClusters"
    ready = {name: t[name].extra["ready_s"] for name in ("no-cache", "cached")}
    res.add("7", case, "start to /readyz", "lower", ready, "s")
    res.add("7", case, "RSS at ready", "lower", {k: v / 1e6 for k, v in at_ready.items()}, "MB")
    res.add(
        "7", case, "RSS after scenarios 1-4", "lower", {k: v / 1e6 for k, v in now.items()}, "MB"
    )
    res.add("7", case, "RSS per cached object", "lower", {"cached": per_object}, "B")
    res.add("7", case, "raw JSON per object", "lower", {"cached": raw_per_object}, "B")
    res.raw["footprint"] = {
        "objects": items,
        "raw_json_bytes": len(body),
        "rss_at_ready": at_ready,
        "rss_after_reads": now,
        "ready_s": ready,
    }
    ratio = per_object / raw_per_object
    res.goal("7", "memory ≤ 3x raw JSON", f"{ratio:.2f}x ({per_object:,.0f} B/object)", ratio <= 3)
    full = n >= 10_000
    res.goal(
        "7",
        f"ready < 10 s with 10,000 objects ({items:,} here)",
        f"{ready['cached']:.2f} s",
        ready["cached"] < 10 if full else None,
    )
    log(
        f"7: {per_object:,.0f} B/object vs {raw_per_object:,.0f} B of JSON;"
        f" ready in {ready['cached']:.2f} s"
    )


SCENARIOS: list[tuple[str, Callable[[Bench], None]]] = [
    ("1", reads.scenario_1),
    ("2", reads.scenario_2),
    ("3", reads.scenario_3),
    ("4", reads.scenario_4),
    ("8", reads.scenario_8),
    ("7", scenario_7),
    ("5", watching.scenario_5),
    ("6", writing.scenario_6),
    ("9", secured.scenario_9),
    ("10", watching.scenario_10),
    ("11", small.scenario_11),
    ("12", small.scenario_12),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs (CI)")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. 1,5")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: results/, results/quick/)"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (make bench does)", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    only = set(filter(None, args.only.split(",")))
    started = time.monotonic()
    results = Results()
    meta: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "sizes": sizes.__dict__,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    workdir = Path(tempfile.mkdtemp(prefix="watchcache-bench-"))
    failed: list[str] = []
    with ControlPlane() as cp:
        meta["controlplane_start_s"] = time.monotonic() - started
        namespaces = [f"bench-{i:02d}" for i in range(sizes.namespaces)]
        plans = plan_rayclusters(sizes.per_namespace, namespaces)
        log(f"creating {len(plans):,} RayClusters in {len(namespaces)} namespaces, 16 at a time")
        filled = fill(
            KeepAliveClient(cp.server, cp.admin.token, cp.ssl_context()), plans, cp.samples_dir
        )
        meta["population"] = {
            "objects": filled.objects,
            "requests": filled.requests,
            "seconds": round(filled.seconds, 1),
            "objects_per_s": round(filled.per_second, 1),
            "json_bytes_per_object": round(filled.json_bytes / filled.objects),
        }
        log(
            f"created {filled.objects:,} objects in {filled.seconds:.1f} s"
            f" ({filled.per_second:.0f}/s)"
        )
        names: dict[str, list[str]] = {}
        for p in plans:
            names.setdefault(p.namespace, []).append(p.name)
        targets = {"direct": direct_target(cp)}
        try:
            targets["no-cache"] = start_watchcache(cp, "no-cache", workdir, "--no-cache")
            targets["cached"] = start_watchcache(cp, "cached", workdir)
            bench = Bench(cp, sizes, args.quick, targets, workdir, results, namespaces, names)
            for key, scenario in SCENARIOS:
                if only and key not in only:
                    continue
                t = time.monotonic()
                try:
                    scenario(bench)
                except Exception as exc:
                    traceback.print_exc()
                    failed.append(key)
                    results.notes.append(f"Scenario {key} failed: {type(exc).__name__}: {exc}")
                log(f"scenario {key} took {time.monotonic() - t:.0f} s")
        finally:
            for name in ("no-cache", "cached"):
                if name in targets:
                    stop(targets[name])
    meta["total_s"] = round(time.monotonic() - started)
    others = [
        r["other_cores"]
        for case in results.raw.get("load", {}).values()
        for name, r in case.items()
        if name != "checks"
    ]
    if others:
        meta["other_cores"] = {"mean": sum(others) / len(others), "max": max(others)}
    meta["failed"] = failed
    paths = report.write(out, meta, results)
    print(paths["md"].read_text())
    log(f"wrote {', '.join(str(p) for p in paths.values())} in {meta['total_s']} s")
    if failed:
        log(f"scenarios {', '.join(failed)} failed; logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
