"""``--workers N``: one supervisor, N complete watchcache processes on one port.

The supervisor binds one set of listening sockets per worker, all on the one port with
``SO_REUSEPORT``, and re-executes ``python -m watchcache serve`` N times with the same flags
and ``--worker-of DIR --worker-index I --listen-fd FD``; worker I inherits its own sockets
(``pass_fds``; nothing is forked after an event loop or a thread exists) and accepts on them
with its own loop. The kernel spreads new connections over the sockets by their addresses:
on one shared socket a burst (a client's pool opening at once) would go to whichever worker
is awake first. Each worker is a whole watchcache: its own caches, its own upstream watches.
A worker that dies is started again after a backoff (doubling to 30 s, reset once a worker
has lived 30 s), logged; its sockets are closed meanwhile, so the others take every new
connection (those queued on it when it died are lost with the ones it held), and bound
again for its successor. SIGTERM or SIGINT is forwarded to every worker, which then stops
as one server does (``Server.stop``: /readyz fails for --shutdown-delay, accepting stops,
watches end, requests in flight finish within --shutdown-grace); the supervisor closes its
copies of the sockets, so that the port closes with the last worker's, waits for them
(killing what outlives the delay and grace by 10 s) and exits. A worker whose supervisor is
gone stops itself.

DIR, a private temporary directory the supervisor creates and removes, holds what workers
share without a network hop: ``written`` (cache.shared, read-your-writes across workers),
and ``metrics-I.prom``, the /metrics text each worker renders of itself every second. A scrape
on any worker answers every worker's series with a ``worker="I"`` label (its own fresh, the
others' at most about a second old), each family once, plus ``watchcache_workers`` and
``watchcache_worker_restarts_total`` (from the supervisor's ``supervisor.prom``). Counters
of a restarted worker start again from zero, which Prometheus' rate() reads as a reset.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("watchcache.workers")

BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 0.5, 30.0, 30.0
METRICS_EVERY = 1.0  # seconds between two writes of a worker's metrics file
STOP_MARGIN = 10.0  # seconds past the shutdown grace before a worker is killed


# ---- how many ------------------------------------------------------------------------------
def cgroup_cpu_limit(proc_cgroup: Path, cgroup_root: Path) -> float | None:
    """CPUs allowed by the cgroup v2 ``cpu.max`` quotas of this process's cgroup and its
    ancestors (the lowest); None when none is set or cgroup v2 is not there."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    limit: float | None = None
    here = (cgroup_root / path.lstrip("/")).resolve()
    root = cgroup_root.resolve()
    while True:
        try:
            quota, period = (here / "cpu.max").read_text().split()[:2]
            if quota != "max" and float(period) > 0:
                cpus = float(quota) / float(period)
                limit = cpus if limit is None else min(limit, cpus)
        except (OSError, ValueError):
            pass
        if here == root or root not in here.parents:
            return limit
        here = here.parent


def available_cpus(
    proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """The CPUs this process may use: its affinity and its cgroup quota, the lower, >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(proc_cgroup, cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def workers_count(text: str) -> int:
    """``--workers``: a positive number or ``auto``."""
    if text == "auto":
        return available_cpus()
    count = int(text)
    if count < 1:
        raise ValueError(f"--workers must be at least 1 or auto, not {text}")
    return count


# ---- the worker's side -----------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows of its place: the shared directory, its index, how many."""

    directory: Path
    index: int
    count: int

    @property
    def written_path(self) -> Path:
        return self.directory / "written"

    def metrics_path(self, index: int) -> Path:
        return self.directory / f"metrics-{index}.prom"

    def publish(self, text: bytes) -> None:
        """This worker's /metrics text, for the others to include (replaced atomically)."""
        tmp = self.directory / f".metrics-{self.index}.tmp"
        tmp.write_bytes(text)
        os.replace(tmp, self.metrics_path(self.index))

    def merged(self, own: bytes) -> bytes:
        """Every worker's series, labelled, each family once; ``own`` is this one's text."""
        texts: list[tuple[int, str]] = []
        for i in range(self.count):
            if i == self.index:
                texts.append((i, own.decode()))
                continue
            try:
                texts.append((i, self.metrics_path(i).read_text()))
            except OSError:
                continue  # not started yet, or restarting
        try:
            supervisor = (self.directory / "supervisor.prom").read_text()
        except OSError:
            supervisor = ""
        return merge(texts, supervisor).encode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (.*)$")


def merge(texts: Sequence[tuple[int, str]], extra: str = "") -> str:
    """Prometheus texts of several workers as one: each sample gets ``worker="I"``, each
    family's HELP and TYPE appear once, before its samples."""
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for index, text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3:
                    family = parts[2]
                    heads.setdefault(family, [])
                    samples.setdefault(family, [])
                    if len(heads[family]) < 2 and line not in heads[family]:
                        heads[family].append(line)
                continue
            match = SAMPLE.match(line)
            if match is None:
                continue
            name, labels, value = match.groups()
            inner = f'worker="{index}"' + ("," + labels[1:-1] if labels and labels != "{}" else "")
            samples.setdefault(family or name, []).append(f"{name}{{{inner}}} {value}")
    out = [line for f in heads for line in (*heads[f], *samples.get(f, []))]
    return "\n".join(out) + "\n" + extra


# ---- the supervisor ----------------------------------------------------------------------------
class Supervisor:
    """Starts N workers on inherited sockets, restarts the dead, stops them all on a signal."""

    def __init__(
        self,
        argv: Sequence[str],
        count: int,
        listen: Callable[[], list[socket.socket]],
        grace: float,
    ) -> None:
        """``listen``: binds one worker's listening sockets (``SO_REUSEPORT``, all on the one
        port); ``grace``: how long workers may take to stop (delay and grace)."""
        self.argv = list(argv)
        self.count = count
        self.listen = listen
        # Each worker's own sockets, the supervisor's copies. None while the worker is dead:
        # closed, so that the kernel sends its share of new connections to the others
        # meanwhile, and bound anew for its successor.
        self.listening: list[list[socket.socket] | None] = [None] * count
        self.grace = grace
        self.directory = Path(tempfile.mkdtemp(prefix="watchcache-workers-"))
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.started = [0.0] * count
        self.backoff = [BACKOFF_FIRST] * count
        self.due = [0.0] * count  # when a dead worker may start again
        self.restarts = [0] * count
        self.stopping: int | None = None

    def command(self, index: int, fds: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "watchcache",
            "serve",
            *self.argv,
            "--worker-of",
            str(self.directory),
            "--worker-index",
            str(index),
            "--worker-count",
            str(self.count),
            "--listen-fd",
            fds,
        ]

    def start(self, index: int) -> None:
        sockets = self.listening[index]
        if sockets is None:
            sockets = self.listening[index] = self.listen()
            for sock in sockets:
                os.set_inheritable(sock.fileno(), True)
        fds = [sock.fileno() for sock in sockets]
        proc = subprocess.Popen(
            self.command(index, ",".join(map(str, fds))), pass_fds=fds, stdin=subprocess.DEVNULL
        )
        self.procs[index] = proc
        self.started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, proc.pid)

    def write_status(self) -> None:
        lines = [
            "# HELP watchcache_workers Worker processes configured (--workers).",
            "# TYPE watchcache_workers gauge",
            f"watchcache_workers {self.count}",
            "# HELP watchcache_worker_restarts_total Workers started again after they died.",
            "# TYPE watchcache_worker_restarts_total counter",
            *(
                f'watchcache_worker_restarts_total{{worker="{i}"}} {n}'
                for i, n in enumerate(self.restarts)
            ),
        ]
        tmp = self.directory / ".supervisor.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.directory / "supervisor.prom")

    def _signalled(self, signum: int, _frame: object) -> None:
        self.stopping = signum

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signalled)
        try:
            self.write_status()
            for i in range(self.count):
                self.start(i)
            while self.stopping is None:
                self.tend()
                time.sleep(0.1)
            log.info("shutting down %d workers", self.count)
            return self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def tend(self) -> None:
        """Notices dead workers and starts each again once its backoff has passed."""
        now = time.monotonic()
        for i, proc in enumerate(self.procs):
            if proc is None:
                if now >= self.due[i]:
                    self.restarts[i] += 1
                    self.write_status()
                    self.start(i)
                continue
            code = proc.poll()
            if code is None:
                if now - self.started[i] > HEALTHY_AFTER:
                    self.backoff[i] = BACKOFF_FIRST
                continue
            delay = self.backoff[i]
            log.warning(
                "worker %d (pid %d) exited with %d; starting it again in %.1fs",
                i,
                proc.pid,
                code,
                delay,
            )
            self.procs[i] = None
            self.close(i)  # what was queued on it is lost with the connections it held
            self.due[i] = now + delay
            self.backoff[i] = min(delay * 2, BACKOFF_MAX)

    def close(self, index: int) -> None:
        for sock in self.listening[index] or ():
            sock.close()
        self.listening[index] = None

    def stop(self) -> int:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        # The port closes once the last worker stops accepting, not when the supervisor exits.
        for i in range(self.count):
            self.close(i)
        deadline = time.monotonic() + self.grace + STOP_MARGIN
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d outlived the shutdown grace; killing it", proc.pid)
                proc.kill()
                proc.wait()
        return 0


def supervise(argv: Sequence[str], count: int, bind: str, port: int, grace: float) -> int:
    """Binds, then runs the supervisor until a signal; its exit code."""
    from tornado.netutil import bind_sockets

    # The first set picks the port (it may be 0) and goes to worker 0; see the module's doc.
    first = bind_sockets(port, bind, reuse_port=True)
    chosen = first[0].getsockname()[1]
    spare = [first]

    def listen() -> list[socket.socket]:
        return spare.pop() if spare else bind_sockets(chosen, bind, reuse_port=True)

    log.info("watchcache supervisor on %s:%d, %d workers", bind, chosen, count)
    return Supervisor(argv, count, listen, grace).run()
