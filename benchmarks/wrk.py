"""HTTP load with wrk (a separate process, one thread, bounded in time), plus server CPU.

Headers and the request rotation go in a generated Lua script, whose ``done`` hook prints
the summary as one JSON line. wrk does not verify TLS certificates, so the API server's
self-signed one needs nothing more.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.procs import Target, cpu_seconds, machine_busy, settle

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class LoadResult:
    """One wrk run against one target."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    mb_per_s: float
    server_cpu_per_1k: float  # the target's processes and the API server's, per 1,000 requests
    api_cpu_per_1k: float  # kube-apiserver + etcd only
    # Cores kept busy by processes outside the benchmark during the run (a shared machine).
    other_cores: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run of median req/s."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


@dataclass(frozen=True)
class Job:
    """One side of a comparison: ``path`` loaded on ``target``, its runs kept under ``key``."""

    key: str
    target: Target
    path: str


PASSES = 8  # kept passes of a side-by-side comparison (3 with --quick)
PASS_SECONDS = 4.0  # one pass: every job's wrk at once


def per_core(run: LoadResult) -> float:
    """Requests per CPU second of the target's own processes: what one core of it answers."""
    own = run.server_cpu_per_1k - run.api_cpu_per_1k
    return 1000.0 / own if own > 0 else math.nan


def side_by_side(
    jobs: Sequence[Job],
    *,
    passes: int,
    seconds: float,
    quiet: list[int],
    cpus: set[int] | None,
    connections: int = 16,
) -> dict[str, list[LoadResult]]:
    """Every job's wrk at once, ``passes`` times, after a first pass that is not kept (it
    warms every server up). Meant for servers pinned to one core together (``pinned``), wrk
    on another, each job on a server of its own (a server's CPU is counted whole for its
    job): they share the core, so each is measured on the same machine at the same moment.

    That is what makes a ratio of two servers worth reading here: one server's CPU per
    request moves by ±15 % from one run to the next (194-272 µs a get, the same server, two
    seconds apart), and so did the ratio of runs taken one after the other (0.65-1.22 for
    neighbouring 2 s runs), while the ratio of two servers sharing a core stays within a
    few percent (0.91-0.97 over nine passes). ``per_core`` of each run is the figure to
    compare: it does not depend on how the scheduler split the core."""
    out: dict[str, list[LoadResult]] = {job.key: [] for job in jobs}
    for n in range(-1, passes):
        runs = _concurrent(jobs, connections=connections, seconds=seconds, quiet=quiet, cpus=cpus)
        if n >= 0:
            for job, run in zip(jobs, runs, strict=True):
                out[job.key].append(run)
    return out


def median_per_core(runs: list[LoadResult]) -> float:
    return statistics.median(map(per_core, runs))


def pass_ratios(a: list[LoadResult], b: list[LoadResult]) -> list[float]:
    """Pass by pass, a's ``per_core`` over b's."""
    return [per_core(x) / per_core(y) for x, y in zip(a, b, strict=True)]


def median_ratio(a: list[LoadResult], b: list[LoadResult]) -> float:
    """The median over passes of a's ``per_core`` over b's in the same pass."""
    return statistics.median(pass_ratios(a, b))


def _lua(headers: dict[str, str], paths: list[str]) -> str:
    lines = [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if len(paths) > 1:
        quoted = ",\n  ".join(json.dumps(p) for p in paths)
        lines += [
            f"local paths = {{\n  {quoted}\n}}",
            "local i = 0",
            "request = function()",
            "  i = i % #paths + 1",
            "  return wrk.format(nil, paths[i])",
            "end",
        ]
    return "\n".join(lines) + "\n" + LUA_DONE


def run_wrk(
    target: Target,
    paths: list[str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    timeout_s: int = 60,
    quiet: list[int] | None = None,
    cpus: set[int] | None = None,
) -> LoadResult:
    """Load ``target`` with GETs of ``paths`` (rotated) for ``seconds``, once the ``quiet``
    processes have finished what earlier runs left them (their CPU would count here).
    ``cpus``: the cores wrk may run on (see ``pinned``)."""
    job = _Load(target, paths, {**target.headers, **(headers or {})})
    (run,) = _concurrent(
        [job],
        connections=connections,
        seconds=seconds,
        quiet=quiet or target.all_pids,
        cpus=cpus,
        timeout_s=timeout_s,
    )
    return run


@dataclass(frozen=True)
class _Load:
    target: Target
    paths: list[str]
    headers: dict[str, str]


def _concurrent(
    jobs: Sequence[Job | _Load],
    *,
    connections: int,
    seconds: float,
    quiet: list[int],
    cpus: set[int] | None,
    timeout_s: int = 60,
) -> list[LoadResult]:
    """One wrk per job, all started together; the API server's CPU is shared among the
    results by their requests."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does)")
    loads = [
        j if isinstance(j, _Load) else _Load(j.target, [j.path], j.target.headers) for j in jobs
    ]
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        argvs = []
        for i, load in enumerate(loads):
            script = Path(tmp) / f"load-{i}.lua"
            script.write_text(_lua(load.headers, load.paths))
            argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s"]
            argv += [f"--timeout={timeout_s}s", "-s", str(script)]
            argvs.append([*argv, load.target.base + load.paths[0]])
        settle(quiet)
        api = loads[0].target.api_pids
        own0 = [cpu_seconds(load.target.own_pids) for load in loads]
        cpu_api0 = cpu_seconds(api)
        busy0, kids0 = machine_busy(), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
            for argv in argvs
        ]
        try:
            outs = [proc.communicate(timeout=seconds + 120) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        wall = time.monotonic() - t0
        owns = [cpu_seconds(load.target.own_pids) - c for load, c in zip(loads, own0, strict=True)]
        cpu_api = cpu_seconds(api) - cpu_api0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
        other = machine_busy() - busy0 - sum(owns) - cpu_api - wrk_cpu
    summaries = []
    for proc, (stdout, stderr) in zip(procs, outs, strict=True):
        line = next((x for x in stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout[-800:]} {stderr}")
        summaries.append(json.loads(line.removeprefix("WRKJSON ")))
    total = sum(s["requests"] for s in summaries) or 1
    return [
        _result(s, wall, own, cpu_api * s["requests"] / total, other / wall)
        for s, own in zip(summaries, owns, strict=True)
    ]


def _result(
    s: dict[str, int], wall: float, cpu_own: float, cpu_api: float, other: float
) -> LoadResult:
    n = s["requests"]
    dur = s["duration_us"] / 1e6 or wall
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    per_1k = 1000.0 / n if n else math.nan
    return LoadResult(
        requests=n,
        seconds=dur,
        rps=n / dur,
        p50_ms=s["p50_us"] / 1000 if n else math.nan,
        p99_ms=s["p99_us"] / 1000 if n else math.nan,
        max_ms=s["max_us"] / 1000 if n else math.nan,
        errors=errors,
        mb_per_s=s["bytes"] / dur / 1e6,
        server_cpu_per_1k=(cpu_own + cpu_api) * per_1k,
        api_cpu_per_1k=cpu_api * per_1k,
        other_cores=max(0.0, other),
    )
