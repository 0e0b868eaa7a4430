"""A real local control plane: etcd and kube-apiserver with the KubeRay CRDs.

Used by the tests, ``watchcache dev`` and the benchmarks. Binaries are built from source
by ``deploy/controlplane/build.sh`` (through the Go module proxy) into a cache folder and
reused. Everything started here runs in its own process group, dies with its parent
(PR_SET_PDEATHSIG), and is stopped by ``stop()``, on Ctrl-C and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "controlplane" / "build.sh"
ADMIN_USER = "watchcache-admin"


def log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(build_script: Path = BUILD_SCRIPT) -> Path:
    """Builds what is missing (printing progress) and returns the binaries' folder."""
    if not build_script.exists():
        raise RuntimeError(
            f"{build_script} not found: the control plane is built from the repository's "
            "deploy/controlplane; run from a checkout of watchcache"
        )
    proc = subprocess.run(["bash", str(build_script)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the control plane failed (exit {proc.returncode}); see above")
    return Path(proc.stdout.strip().splitlines()[-1])


def _die_with_parent() -> None:
    """Runs in the child before exec: kill it when the process that started it dies.

    SIGKILL, not SIGTERM: a kube-apiserver whose etcd died with it can spend long in its
    graceful shutdown, and nothing of this throwaway control plane needs saving.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class User:
    """A static-token identity; tests bind RBAC roles to ``name`` to make limited users."""

    name: str
    token: str
    groups: tuple[str, ...] = ()


@dataclass
class ControlPlane:
    """One etcd and one kube-apiserver on free loopback ports, in a temporary folder."""

    home: Path = field(default_factory=lambda: build())
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="watchcache-cp-")))
    extra_users: list[User] = field(default_factory=list)
    apiserver_args: list[str] = field(default_factory=list)
    install_crds: bool = True

    def __post_init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.admin = User(ADMIN_USER, secrets.token_hex(16), ("system:masters",))
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "ca.crt"

    # ---- paths -------------------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def crd_dir(self) -> Path:
        return self.home / "kuberay" / "crd"

    @property
    def samples_dir(self) -> Path:
        return self.home / "kuberay" / "samples"

    @property
    def kubectl(self) -> Path:
        return self.home / "bin" / "kubectl"

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> ControlPlane:
        atexit.register(self.stop)
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready()
            self.write_kubeconfig(self.kubeconfig, self.admin)
            if self.install_crds:
                self._install_crds()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops every process started here (their whole process groups) and removes the folder."""
        for name in ("kube-apiserver", "kube-apiserver-2", "etcd"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _terminate(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def restart_apiserver(self) -> None:
        """Stops and starts kube-apiserver on the same port (etcd keeps the data)."""
        proc = self.procs.pop("kube-apiserver")
        _terminate(proc)
        self._start_apiserver()
        self._wait_ready()

    @contextlib.contextmanager
    def apiserver_replaced(self) -> Iterator[None]:
        """For the block, kube-apiserver is down and a second one serves the same etcd on
        another port (``server`` and ``request`` point at it); then the first comes back.

        Whatever watched the first one returns to a server whose watch cache starts after
        the block's writes: a watch from before them gets 410, and the watcher must list
        again. That is the re-list a long outage causes in a real cluster."""
        first = self.port
        _terminate(self.procs.pop("kube-apiserver"))
        self.port = free_port()
        try:
            self._start_apiserver("kube-apiserver-2")
            self._wait_ready()
            yield
        finally:
            second = self.procs.pop("kube-apiserver-2", None)
            if second is not None:
                _terminate(second)
            self.port = first
            self._start_apiserver()
            self._wait_ready()

    # ---- steps -------------------------------------------------------------------------
    def _write_pki(self) -> None:
        d = self.workdir
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3",
            "-subj",
            "/CN=watchcache-test-ca",
            "-keyout",
            str(d / "ca.key"),
            "-out",
            str(self.ca_file),
        )
        (d / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            str(d / "serving.key"),
            "-out",
            str(d / "serving.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / "serving.csr"),
            "-CA",
            str(self.ca_file),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            str(d / "san.ext"),
            "-out",
            str(d / "serving.crt"),
        )
        _openssl("genrsa", "-out", str(d / "sa.key"), "2048")
        _openssl("rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
        lines = []
        for user in [self.admin, *self.extra_users]:
            groups = f',"{",".join(user.groups)}"' if user.groups else ""
            lines.append(f"{user.token},{user.name},{user.name}{groups}")
        (d / "tokens.csv").write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.workdir,
        )
        out.close()

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.home / "bin" / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # a throwaway database: durability buys nothing here
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self, name: str = "kube-apiserver") -> None:
        d = self.workdir
        self._spawn(
            name,
            [
                str(self.home / "bin" / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={d / 'certs'}",
                f"--tls-cert-file={d / 'serving.crt'}",
                f"--tls-private-key-file={d / 'serving.key'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "-v=1",
                *self.apiserver_args,
            ],
        )

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                code, body = self.request("GET", "/readyz")
                if code == 200:
                    return
                last = body.decode(errors="replace")[-500:]
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s: {last}")

    def _install_crds(self, timeout: float = 60.0) -> None:
        names = []
        for path in sorted(self.crd_dir.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            names.append(crd["metadata"]["name"])
            code, body = self.request(
                "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd
            )
            if code not in (201, 409):
                raise RuntimeError(f"installing {path.name}: HTTP {code}: {body[:500]!r}")
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                _, body = self.request(
                    "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                )
                conds = (json.loads(body).get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {name} not Established after {timeout}s")
                time.sleep(0.1)
        # Discovery of the new group reaches every apiserver component a moment later.
        while time.monotonic() < deadline:
            code, _ = self.request("GET", "/apis/ray.io/v1/rayclusters")
            if code == 200:
                return
            time.sleep(0.1)

    # ---- helpers for tests -------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """A direct, synchronous call to kube-apiserver as the admin (or ``token``)."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def write_kubeconfig(self, path: Path, user: User, server: str | None = None) -> Path:
        """A kubeconfig for ``user``; ``server`` may point elsewhere (e.g. at the proxy)."""
        server = server or self.server
        cluster: dict[str, object] = {"server": server}
        if server.startswith("https"):
            cluster["certificate-authority"] = str(self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": user.name, "user": {"token": user.token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user.name}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        return path


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
