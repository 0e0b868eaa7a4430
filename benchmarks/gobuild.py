"""The watch load generator (benchmarks/watchload, a Go program), built at first use.

Python reading 10,000 watch streams spends more CPU per event than the machine has (scenario
10 then measures the reader, not the server); the Go reader spends a small fraction of it.
The binary goes to a cache outside the repository, named by a hash of its sources, so that it
is rebuilt only when they change. No Go, no fan-out benchmark: there is no silent fallback to
the Python reader, whose figures would not compare.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "watchload"
CACHE = Path.home() / ".cache" / "watchcache" / "bench"
# Where the official Go archive unpacks, for a shell whose PATH does not name it.
GO_HOME_BIN = Path("/usr/local/go/bin/go")


class GoMissing(RuntimeError):
    """No ``go`` to build the watch load generator with."""


def go_binary() -> str:
    found = shutil.which("go") or (str(GO_HOME_BIN) if GO_HOME_BIN.is_file() else None)
    if found is None:
        raise GoMissing(
            "the watch load generator (benchmarks/watchload) is a Go program and no `go` was"
            " found on PATH or in /usr/local/go/bin: install Go 1.22 or newer to run the watch"
            " benchmarks (scenarios 5 and 10) and their test"
        )
    return found


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "main.go"):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def watchload(cache: Path = CACHE) -> Path:
    """The path of the built binary, building it first when its sources changed."""
    binary = cache / f"watchload-{source_hash()}"
    if binary.is_file():
        return binary
    go = go_binary()
    cache.mkdir(parents=True, exist_ok=True)
    print(f"building the watch load generator with {go} into {binary}", flush=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
    done = subprocess.run(
        [go, "build", "-trimpath", "-o", str(partial), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {SOURCE} failed:\n{done.stderr[-3000:]}")
    partial.replace(binary)  # atomic: a concurrent build leaves one whole binary
    return binary
