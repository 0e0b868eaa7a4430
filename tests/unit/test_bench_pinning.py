"""The benchmarks' core pinning: every thread of a server on its core, then back on all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.procs import pinned, split_cores

THREADS = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\n"


def affinities(pid: int) -> set[frozenset[int]]:
    return {
        frozenset(os.sched_getaffinity(int(t.name))) for t in Path(f"/proc/{pid}/task").iterdir()
    }


def test_pinned_moves_every_thread_and_restores_every_core() -> None:
    every = frozenset(os.sched_getaffinity(0))
    one = {min(every)}
    proc = subprocess.Popen(
        [sys.executable, "-c", THREADS + "print('up', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        with pinned([proc.pid], one):
            assert affinities(proc.pid) == {frozenset(one)}
        assert affinities(proc.pid) == {every}
    finally:
        proc.kill()
        proc.wait()


def test_split_cores_gives_two_distinct_cores_or_none() -> None:
    cores = split_cores()
    if len(os.sched_getaffinity(0)) >= 2:
        assert cores is not None and len(cores[0]) == len(cores[1]) == 1 and not cores[0] & cores[1]
    else:
        assert cores is None


def test_pinned_without_cores_leaves_the_process_alone() -> None:
    before = os.sched_getaffinity(0)
    with pinned([os.getpid()], None):
        assert os.sched_getaffinity(0) == before
