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
import subprocess
import tempfile
import time
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


ROUNDS = 3  # alternated runs per case where a ratio of two runs is the figure


def median_run(runs: list[LoadResult]) -> LoadResult:
    """The run of median req/s."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


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
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does)")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "load.lua"
        script.write_text(_lua({**target.headers, **(headers or {})}, paths))
        argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s"]
        argv += [f"--timeout={timeout_s}s", "-s", str(script), target.base + paths[0]]
        settle(quiet or target.all_pids)
        cpu_own0, cpu_api0 = cpu_seconds(target.own_pids), cpu_seconds(target.api_pids)
        busy0, kids0 = machine_busy(), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        wall = time.monotonic() - t0
        cpu_own = cpu_seconds(target.own_pids) - cpu_own0
        cpu_api = cpu_seconds(target.api_pids) - cpu_api0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
        other = machine_busy() - busy0 - cpu_own - cpu_api - wrk_cpu
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-800:]} {proc.stderr}")
    s = json.loads(line.removeprefix("WRKJSON "))
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
        other_cores=max(0.0, other / wall),
    )
