"""Shared fixtures: the real control plane (once per session) and watchcache processes on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.controlplane import ControlPlane, User, free_port

# A user with no permissions of its own; tests grant it what they need with RBAC.
LIMITED = User("limited-user", "limited-user-token-0123456789abcdef")


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with the KubeRay CRDs. Never skipped: a failure to start fails."""
    cp = ControlPlane(extra_users=[LIMITED])
    cp.start()
    pids = cp.pids()
    try:
        yield cp
    finally:
        cp.stop()
        survivors = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not survivors, f"control plane processes outlived the run: {survivors}"


@dataclass
class Proxy:
    """A `watchcache serve` process and plain-HTTP helpers to call it."""

    base: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def json(self, method: str, path: str, obj: object = None, **kw: object) -> tuple[int, dict]:
        body = json.dumps(obj).encode() if obj is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        headers.update(kw.pop("headers", {}) or {})  # type: ignore[arg-type]
        code, _, data = self.request(method, path, body, headers, **kw)  # type: ignore[arg-type]
        return code, (json.loads(data) if data else {})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_proxy(
    cp: ControlPlane,
    tmp: Path,
    *args: str,
    command: Sequence[str] = ("-m", "watchcache", "serve"),
    ready: str = "/readyz",
    port: int | None = None,
    executable: str = sys.executable,
    kubeconfig: Path | None = None,
    **popen: Any,
) -> Proxy:
    """Starts ``python COMMAND --kubeconfig K --port P --log-level DEBUG ARGS`` (by default
    `watchcache serve`; the examples' servers take the same flags) and waits until ``ready``
    answers 200 (``/healthz`` for a server that is not expected to sync). ``port``: a given
    one (a server started again where it was), else a free one; the log is appended to.
    ``executable``, ``kubeconfig`` and ``popen`` (cwd, env, user, ...) run another install
    than this venv's, e.g. the image's steps replayed on the host, as another user."""
    port = port or free_port()
    log_path = tmp / f"watchcache-{port}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                executable,
                *command,
                "--kubeconfig",
                str(kubeconfig or cp.kubeconfig),
                "--port",
                str(port),
                "--log-level",
                "DEBUG",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **popen,
        )
    proxy = Proxy(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"watchcache exited with {proc.returncode}:\n{proxy.log()}")
        try:
            code, _, _ = proxy.request("GET", ready, timeout=2)
            if code == 200:
                return proxy
        except OSError:
            pass
        time.sleep(0.1)
    stop_proxy(proxy)
    raise RuntimeError(f"watchcache not ready after 60s:\n{proxy.log()}")


def stop_proxy(proxy: Proxy) -> None:
    if proxy.proc.poll() is None:
        proxy.proc.send_signal(signal.SIGTERM)
        try:
            proxy.proc.wait(15)
        except subprocess.TimeoutExpired:
            proxy.proc.kill()
            proxy.proc.wait()


@pytest.fixture(scope="session")
def proxy_factory(
    controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Proxy]]:
    """Starts `watchcache serve` processes with the given flags; all stopped at session end."""
    started: list[Proxy] = []
    tmp = tmp_path_factory.mktemp("proxies")

    def factory(*args: str, **kw: Any) -> Proxy:
        proxy = start_proxy(controlplane, tmp, *args, **kw)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        stop_proxy(proxy)


@pytest.fixture(scope="session")
def passthrough(proxy_factory: Callable[..., Proxy]) -> Proxy:
    """watchcache in --no-cache mode: the reference's forward-everything behaviour."""
    return proxy_factory("--no-cache")


@pytest.fixture(scope="session")
def samples(controlplane: ControlPlane) -> Path:
    return controlplane.samples_dir


os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture(scope="session")
def cached(proxy_factory: Callable[..., Proxy]) -> Proxy:
    """watchcache with its cache: reads from the watch-fed store."""
    return proxy_factory()
