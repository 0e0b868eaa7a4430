"""Scenario 5: watch fan-out. N watchers on one namespace while a writer patches its objects.

The watchers (one asyncio process) watch from the namespace's current resourceVersion, so
no initial state is sent and every event they receive is a write of this run. The writer (a
second process) patches the API server directly at a steady rate, whichever target is
watched: the figure is the delay from an upstream write to each watcher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from benchmarks.context import TARGETS, Bench
from benchmarks.fill import KeepAliveClient, plan_rayclusters
from benchmarks.procs import Target, cpu_seconds, rss_bytes
from benchmarks.reads import API, log
from tests.support import population as pop

WATCH_NS = "bench-watch"
WATCH_OBJECTS = 20


class PeakRSS:
    """Samples the resident memory of some processes in a thread, keeping the highest."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self.pids, self.interval = pids, interval
        self.base = rss_bytes(pids)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pids))

    def stop(self) -> float:
        """Growth over the starting value, in MB."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pids))
        return (self.peak - self.base) / 1e6


def _env(bench: Bench, target: Target | None) -> dict[str, str]:
    env = {**os.environ, "BENCH_CA": str(bench.cp.ca_file)}
    if target is None or target.name == "direct":
        env["BENCH_TOKEN"] = bench.cp.admin.token
    return env


def _prepare(bench: Bench) -> list[str]:
    client = KeepAliveClient(bench.cp.server, bench.cp.admin.token, bench.cp.ssl_context())
    plans = plan_rayclusters(WATCH_OBJECTS, [WATCH_NS], seed=99)
    pop.populate(client, [pop.build(p, bench.cp.samples_dir) for p in plans], workers=8)
    return [p.name for p in plans]


def _one(bench: Bench, target: Target, count: int, names: list[str]) -> dict[str, float]:
    sizes = bench.sizes
    _, body = bench.cp.request("GET", f"{API}/namespaces/{WATCH_NS}/rayclusters?limit=1")
    rv = json.loads(body)["metadata"]["resourceVersion"]
    url = f"{target.base}{API}/namespaces/{WATCH_NS}/rayclusters?watch=true&resourceVersion={rv}"
    tag = f"{target.name}-{count}"
    writes = bench.workdir / f"writes-{tag}.json"
    out = bench.workdir / f"watch-{tag}.json"
    # Memory from before the watchers connect: their connections and queues are the growth.
    front = target.own_pids or target.api_pids[:1]  # watchcache, or kube-apiserver
    rss_front, rss_api = PeakRSS(front), PeakRSS(target.api_pids)
    argv = [sys.executable, "-m", "benchmarks.fanout", "watch", "--url", url]
    argv += ["--count", str(count), "--writes", str(writes), "--out", str(out)]
    writer_argv = [sys.executable, "-m", "benchmarks.fanout", "write", "--server", bench.cp.server]
    writer_argv += ["--namespace", WATCH_NS, "--names", ",".join(names), "--out", str(writes)]
    writer_argv += ["--rate", str(sizes.write_rate), "--seconds", str(sizes.write_seconds)]
    watchers = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(bench, target),
    )
    assert watchers.stdin is not None and watchers.stdout is not None
    try:
        ready = watchers.stdout.readline().decode().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"watchers of {target.name} did not start")
        cpu0 = cpu_seconds(target.all_pids)
        writer = subprocess.run(
            writer_argv,
            env=_env(bench, None),
            capture_output=True,
            timeout=sizes.write_seconds * 4 + 60,
        )
        if writer.returncode != 0:
            raise RuntimeError(f"writer failed: {writer.stderr.decode()[-1000:]}")
        watchers.stdin.write(b"stop\n")
        watchers.stdin.flush()
        watchers.wait(120)
        cpu = cpu_seconds(target.all_pids) - cpu0
        summary = json.loads(out.read_text())
        summary.update(
            connect_s=float(ready[2]),
            rss_growth_mb=rss_front.stop(),
            api_rss_growth_mb=rss_api.stop(),
            server_cpu_s=cpu,
            writer=json.loads(writer.stdout.decode().strip().splitlines()[-1]),
        )
    finally:
        rss_front.stop()
        rss_api.stop()
        if watchers.poll() is None:
            watchers.kill()
            watchers.wait()
    log(
        f"5 {count} watchers {target.name}: delivered {summary['delivered']}/{summary['expected']}"
        f" p50 {summary['p50_ms']:.1f} ms p99 {summary['p99_ms']:.1f} ms,"
        f" RSS +{summary['rss_growth_mb']:.1f} MB (API server +{summary['api_rss_growth_mb']:.1f})"
    )
    return summary


def scenario_5(bench: Bench) -> None:
    names = _prepare(bench)
    res = bench.results
    raw: dict[str, dict[str, dict[str, float]]] = {}
    for count in bench.sizes.watchers:
        per = {name: _one(bench, bench.targets[name], count, names) for name in TARGETS}
        raw[str(count)] = per
        case = f"{count:,} watchers, {bench.sizes.write_rate:g} writes/s"

        def vals(key: str, per: dict[str, dict[str, float]] = per) -> dict[str, float]:
            return {n: float(s[key]) for n, s in per.items()}

        delivered = {n: 100.0 * s["delivered"] / max(1, s["expected"]) for n, s in per.items()}
        res.add("5", case, "delivery p50", "lower", vals("p50_ms"), "ms")
        res.add("5", case, "delivery p99", "lower", vals("p99_ms"), "ms")
        res.add("5", case, "events delivered", "higher", delivered, "%")
        res.add("5", case, "front process RSS growth", "lower", vals("rss_growth_mb"), "MB")
        res.add("5", case, "API server RSS growth", "lower", vals("api_rss_growth_mb"), "MB")
        if count == max(bench.sizes.watchers):
            c = per["cached"]
            all_in = c["delivered"] == c["expected"] and c["connected"] == count
            res.goal("5", f"{case}: every event delivered", f"{delivered['cached']:.2f}%", all_in)
            res.goal("5", f"{case}: p99 < 200 ms", f"{c['p99_ms']:.1f} ms", c["p99_ms"] < 200)
            grow = c["rss_growth_mb"]
            res.goal("5", f"{case}: memory growth < 100 MB", f"{grow:.1f} MB", grow < 100)
    res.raw["watch"] = raw
    res.notes.append(
        "Scenario 5: memory growth is the highest RSS during the run less the RSS just before"
        " the watchers connected; a process first reuses memory it freed in earlier scenarios,"
        " so a small growth is a lower bound. Delivery latency runs from the writer's answer to"
        " each watcher's receipt (negative when the event arrives first). The writer patches"
        " the API server directly, whichever target the watchers use."
    )
