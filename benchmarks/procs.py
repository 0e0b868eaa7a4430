"""Processes under test: the three targets, and what /proc says about their CPU and memory."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.controlplane import ControlPlane, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (their threads included), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every process, every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of the processes, from /proc/<pid>/statm."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def children(pid: int) -> list[int]:
    """The direct children of a process (a supervisor's workers), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(x) for x in task.read_text().split()]
    return sorted(found)


def start_workers(
    cp: ControlPlane, name: str, logdir: Path, workers: int, *args: str, ready_timeout: float = 120
) -> Target:
    """``watchcache serve --workers N``: its pids are the supervisor's and every worker's.
    Ready once every worker runs and a run of fresh connections (which the kernel spreads
    among the workers) all find /readyz answering 200."""
    target = start_watchcache(
        cp, name, logdir, "--workers", str(workers), *args, ready_timeout=ready_timeout
    )
    sup = target.own_pids[0]
    deadline = time.monotonic() + ready_timeout
    while True:
        kids = children(sup) if workers > 1 else []
        if len(kids) == (workers if workers > 1 else 0):
            ok = sum(1 for _ in range(8 * workers) if target.get("/readyz", timeout=5)[0] == 200)
            if ok == 8 * workers:
                break
        if time.monotonic() > deadline:
            stop(target)
            raise RuntimeError(f"watchcache {name}: {len(kids)} of {workers} workers ready")
        time.sleep(0.2)
    target.own_pids = [sup, *kids]
    return target


def split_cores() -> tuple[set[int], set[int]] | None:
    """One core for the servers, another for the load generator, when there are two."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, {cores[1]}) if len(cores) >= 2 else None


@contextlib.contextmanager
def pinned(pids: list[int], cpus: set[int] | None) -> Iterator[None]:
    """Every thread of ``pids`` on ``cpus`` for the block, then back on every core: a ratio
    of two servers moves less when neither shares its core with the load generator."""

    def pin(cores: set[int]) -> None:
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.sched_setaffinity(int(task.name), cores)

    if cpus is None:
        yield
        return
    pin(cpus)
    try:
        yield
    finally:
        pin(os.sched_getaffinity(0))


def settle(pids: list[int], *, busy: float = 0.1, window: float = 0.3, limit: float = 60) -> float:
    """Waits until the processes together use under ``busy`` of a core (a server may still
    be working on requests a finished load run left in flight). Returns the time waited."""
    started = time.monotonic()
    last = cpu_seconds(pids)
    while time.monotonic() - started < limit:
        time.sleep(window)
        now = cpu_seconds(pids)
        if now - last < busy * window:
            break
        last = now
    return time.monotonic() - started


@dataclass
class Target:
    """One server the load is pointed at, and the processes whose cost is its cost.

    ``own_pids``: the process the client talks to (watchcache), empty for the API server
    itself; ``api_pids``: kube-apiserver and etcd, whose load watchcache exists to take away.
    """

    name: str
    base: str
    headers: dict[str, str]
    own_pids: list[int]
    api_pids: list[int]
    ssl_context: ssl.SSLContext | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def all_pids(self) -> list[int]:
        return self.own_pids + self.api_pids

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 120
    ) -> tuple[int, dict[str, str], bytes]:
        """One synchronous GET (set-up and checks, never the measured load); header names
        in lower case."""
        req = urllib.request.Request(self.base + path, headers={**self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                return resp.status, _lower(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, _lower(exc.headers.items()), exc.read()


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in items}


def direct_target(cp: ControlPlane) -> Target:
    return Target(
        name="direct",
        base=cp.server,
        headers={"Authorization": f"Bearer {cp.admin.token}"},
        own_pids=[],
        api_pids=cp.pids(),
        ssl_context=cp.ssl_context(),
    )


def start_watchcache(
    cp: ControlPlane, name: str, logdir: Path, *args: str, ready_timeout: float = 120
) -> Target:
    """Starts ``watchcache serve`` and waits for /readyz; records how long that took."""
    port = free_port()
    log_path = logdir / f"watchcache-{name}.log"
    started = time.monotonic()
    argv = [sys.executable, "-m", "watchcache", "serve", "--kubeconfig", str(cp.kubeconfig)]
    argv += ["--port", str(port), "--log-level", "WARNING", *args]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    target = Target(
        name=name,
        base=f"http://127.0.0.1:{port}",
        headers={},
        own_pids=[proc.pid],
        api_pids=cp.pids(),
        proc=proc,
        log_path=log_path,
    )
    deadline = started + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"watchcache {name} exited: {log_path.read_text()[-3000:]}")
        try:
            if target.get("/readyz", timeout=2)[0] == 200:
                target.extra["ready_s"] = time.monotonic() - started
                target.extra["rss_at_ready"] = rss_bytes([proc.pid])
                return target
        except OSError:
            pass
        time.sleep(0.02)
    stop(target)
    raise RuntimeError(f"watchcache {name} not ready after {ready_timeout}s")


def stop(target: Target) -> None:
    proc = target.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    info = {"nproc": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory"] = f"{kb / 1024 / 1024:.0f} GiB"
    info["python"] = sys.version.split()[0]
    return info
