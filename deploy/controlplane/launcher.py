"""A real local control plane: etcd and kube-apiserver with the KubeRay CRDs.

Used by the tests, ``watchcache dev`` and the benchmarks. Binaries are built from source
by ``deploy/controlplane/build.sh`` (through the Go module proxy) into a cache folder and
reused. Everything started here runs in its own process group, dies with its parent
(PR_SET_PDEATHSIG), and is stopped by ``stop()``, on Ctrl-C and at interpreter exit.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import http.client
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "controlplane" / "build.sh"
ADMIN_USER = "watchcache-admin"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

# What kube-apiserver's audit log records: every request on ray.io resources and every
# write anywhere, at Metadata (who, what, the answer's code; never a body), and nothing of
# kube-apiserver's own housekeeping. A write sent by watchcache under a caller's name shows
# that caller (``impersonatedUser``) here.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:apiserver"]},
        {"level": "None", "resources": [{"group": "coordination.k8s.io"}]},
        {"level": "Metadata", "resources": [{"group": "ray.io"}]},
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"level": "None"},
    ],
}


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


@dataclass(frozen=True)
class ClientCert:
    """A client certificate and its key, as files (for ``ssl.SSLContext.load_cert_chain``)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ExampleUser:
    """A named example identity of the local control plane, with what RBAC lets it do."""

    key: str  # a short handle: admin, viewer-a, ...
    name: str  # the user name the API server sees
    token: str
    may: str  # what it may do, in words
    groups: tuple[str, ...] = ()


# The static-token example users (in the token file from the start; their RBAC is applied by
# ``ControlPlane.example_users``): (key, user name, groups).
EXAMPLE_STATIC_USERS = (
    ("admin", "example-admin", ()),
    ("viewer-a", "example-viewer-a", ()),
    ("editor-b", "example-editor-b", ()),
    ("nobody", "example-nobody", ()),
    ("group-viewer", "example-group-member", ("example:ray-viewers",)),
)
EXAMPLE_SERVICE_ACCOUNT = "example-sa"

# kind -> (API path prefix, plural, namespaced), for ``ControlPlane.apply``.
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}


@dataclass
class ControlPlane:
    """One etcd and one kube-apiserver on free loopback ports, in a temporary folder."""

    home: Path = field(default_factory=lambda: build())
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="watchcache-cp-")))
    extra_users: list[User] = field(default_factory=list)
    apiserver_args: list[str] = field(default_factory=list)
    install_crds: bool = True
    # kube-apiserver's audit log (AUDIT_POLICY). It costs kube-apiserver a little on every
    # Ray request: a benchmark of kube-apiserver itself may want it off.
    audit: bool = True

    def __post_init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.admin = User(ADMIN_USER, secrets.token_hex(16), ("system:masters",))
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "ca.crt"
        # Client certificates: kube-apiserver trusts the first CA (--client-ca-file); the
        # second is unrelated, for certificates that must be refused.
        self.client_ca_file = self.workdir / "client-ca.crt"
        self.other_ca_file = self.workdir / "other-ca.crt"
        self.audit_log = self.workdir / "audit.log"
        self.static_examples = [
            User(name, secrets.token_hex(16), groups) for _, name, groups in EXAMPLE_STATIC_USERS
        ]
        self._examples: list[ExampleUser] | None = None
        self._serial = 0

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
        names = [n for n in self.procs if n not in ("kube-apiserver", "etcd")]
        for name in [*names, "kube-apiserver", "etcd"]:
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

    @contextlib.contextmanager
    def extra_apiserver(self, *args: str) -> Iterator[str]:
        """For the block, a second kube-apiserver on the same etcd (and the same tokens,
        CAs and keys) with ``args`` added, e.g. ``--anonymous-auth=false``; yields its URL.
        The first one keeps serving."""
        self._serial += 1
        name, port = f"kube-apiserver-extra-{self._serial}", free_port()
        self._start_apiserver(name, port, args)
        try:
            self._wait_ready(port=port)
            yield f"https://127.0.0.1:{port}"
        finally:
            proc = self.procs.pop(name, None)
            if proc is not None:
                _terminate(proc)

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
        for ca, cn in (
            (self.client_ca_file, "watchcache-client-ca"),
            (self.other_ca_file, "other-ca"),
        ):
            _openssl(
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
                "-subj", f"/CN={cn}", "-keyout", str(ca.with_suffix(".key")), "-out", str(ca),
            )  # fmt: skip
        (d / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
        lines = []
        for user in [self.admin, *self.extra_users, *self.static_examples]:
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

    def _start_apiserver(
        self, name: str = "kube-apiserver", port: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        d = self.workdir
        # The stand-in of apiserver_replaced runs while the first is down: it shares its log.
        main = name in ("kube-apiserver", "kube-apiserver-2")
        audit_log = self.audit_log if main else d / f"audit-{name}.log"
        self._spawn(
            name,
            [
                str(self.home / "bin" / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port or self.port}",
                f"--cert-dir={d / 'certs'}",
                f"--tls-cert-file={d / 'serving.crt'}",
                f"--tls-private-key-file={d / 'serving.key'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                f"--client-ca-file={self.client_ca_file}",
                *(
                    [
                        f"--audit-policy-file={d / 'audit-policy.json'}",
                        f"--audit-log-path={audit_log}",
                        "--audit-log-format=json",
                        "--audit-log-mode=blocking",
                    ]
                    if self.audit
                    else []
                ),
                "--authorization-mode=RBAC",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--service-account-issuer={SA_ISSUER}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "-v=1",
                *self.apiserver_args,
                *extra,
            ],
        )

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _wait_ready(self, timeout: float = 120.0, port: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                code, _, body = self.raw_request(
                    "GET", "/readyz", token=self.admin.token, port=port
                )
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

    def write_kubeconfig(
        self, path: Path, user: User, server: str | None = None, ca_file: Path | None = None
    ) -> Path:
        """A kubeconfig for ``user``; ``server`` may point elsewhere (e.g. at the proxy,
        whose CA is then ``ca_file``)."""
        server = server or self.server
        cluster: dict[str, object] = {"server": server}
        if server.startswith("https"):
            cluster["certificate-authority"] = str(ca_file or self.ca_file)
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

    def raw_request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Sequence[tuple[str, str | bytes]] = (),
        *,
        token: str | None = None,
        cert: ClientCert | None = None,
        port: int | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """A direct call with exactly the given credentials: no Authorization header unless
        ``token`` (or one in ``headers``, sent as given, bytes included), a client
        certificate if ``cert``. For differential tests of authentication."""
        ctx = self.ssl_context()
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port or self.port, context=ctx, timeout=timeout
        )
        try:
            conn.putrequest(method, path)
            if token is not None:
                conn.putheader("Authorization", f"Bearer {token}")
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Type", "application/json")
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    # ---- client certificates -----------------------------------------------------------
    def issue_client_cert(
        self,
        cn: str,
        orgs: Sequence[str] = (),
        *,
        uid: str | None = None,
        other_ca: bool = False,
        days: int = 1,
    ) -> ClientCert:
        """A client certificate (clientAuth) for subject CN=cn, one O per entry of ``orgs``
        (and Kubernetes' UID attribute, which kube-apiserver takes as the uid), signed by the
        client CA kube-apiserver trusts, or by the unrelated one with ``other_ca``."""
        ca = self.other_ca_file if other_ca else self.client_ca_file
        self._serial += 1
        base = self.workdir / f"client-{self._serial}"
        parts = [f"/CN={_dn_escape(cn)}", *(f"/O={_dn_escape(o)}" for o in orgs)]
        if uid is not None:
            parts.append(f"/kubernetesUID={_dn_escape(uid)}")
        ext = base.with_suffix(".ext")
        ext.write_text("extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        _openssl(
            "req", "-config", str(self._openssl_config()), "-newkey", "rsa:2048", "-nodes",
            "-subj", "".join(parts),
            "-keyout", str(base.with_suffix(".key")), "-out", str(base.with_suffix(".csr")),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(base.with_suffix(".csr")), "-CA", str(ca),
            "-CAkey", str(ca.with_suffix(".key")), "-CAcreateserial", "-days", str(days),
            "-extfile", str(ext), "-out", str(base.with_suffix(".crt")),
        )  # fmt: skip
        return ClientCert(base.with_suffix(".crt"), base.with_suffix(".key"))

    def _openssl_config(self) -> Path:
        """openssl's configuration for client certificate requests: names Kubernetes' UID
        attribute (openssl drops attributes it has no name for)."""
        path = self.workdir / "openssl-client.cnf"
        if not path.exists():
            path.write_text(
                "oid_section = oids\n[oids]\nkubernetesUID = 1.3.6.1.4.1.57683.2\n"
                "[req]\ndistinguished_name = dn\n[dn]\n"
            )
        return path

    # ---- objects, RBAC, service accounts -----------------------------------------------
    def apply(self, obj: dict[str, object]) -> dict[str, object]:
        """Creates or updates ``obj`` (server-side apply; kinds of ``KINDS``) as the admin."""
        kind = str(obj["kind"])
        prefix, plural, namespaced = KINDS[kind]
        meta = obj["metadata"]
        assert isinstance(meta, dict)
        body = {"apiVersion": prefix.removeprefix("/apis/").removeprefix("/api/"), **obj}
        where = f"/namespaces/{meta['namespace']}" if namespaced else ""
        path = (
            f"{prefix}{where}/{plural}/{meta['name']}?fieldManager=watchcache-launcher&force=true"
        )
        code, data = self.request(
            "PATCH", path, json.dumps(body).encode(), content_type="application/apply-patch+yaml"
        )
        if code not in (200, 201):
            raise RuntimeError(f"applying {kind} {meta['name']}: HTTP {code}: {data[:300]!r}")
        result: dict[str, object] = json.loads(data)
        return result

    def ensure_namespace(self, name: str) -> None:
        self.apply({"kind": "Namespace", "metadata": {"name": name}})

    def bind(
        self,
        role: str,
        subject: dict[str, str],
        namespace: str | None = None,
        *,
        role_kind: str = "ClusterRole",
        name: str | None = None,
    ) -> None:
        """Binds ``role`` to ``subject`` (a RoleBinding in ``namespace``, else a
        ClusterRoleBinding). ``subject``: {"kind": "User"|"Group"|"ServiceAccount", ...}."""
        subj = dict(subject)
        if subj["kind"] != "ServiceAccount":
            subj.setdefault("apiGroup", "rbac.authorization.k8s.io")
        name = name or f"{role}--{subj['kind'].lower()}-{subj['name']}".replace(":", "-")
        meta: dict[str, str] = {"name": name}
        if namespace is not None:
            meta["namespace"] = namespace
        self.apply(
            {
                "kind": "RoleBinding" if namespace is not None else "ClusterRoleBinding",
                "metadata": meta,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": role_kind,
                    "name": role,
                },
                "subjects": [subj],
            }
        )

    def aggregate_cluster_roles(self) -> None:
        """Fills the rules of aggregated ClusterRoles (view, edit, admin, ...) from the roles
        their selectors pick, as kube-controller-manager's aggregation controller does (there
        is no controller manager here, so without this view and edit grant nothing)."""
        base = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
        for _ in range(5):  # aggregated roles aggregate each other (view -> edit -> admin)
            code, data = self.request("GET", base)
            if code != 200:
                raise RuntimeError(f"listing ClusterRoles: HTTP {code}")
            roles = sorted(json.loads(data)["items"], key=lambda r: r["metadata"]["name"])
            changed = False
            for role in roles:
                selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors")
                if not selectors:
                    continue
                rules: list[object] = []
                for other in roles:
                    if other is role:
                        continue
                    labels = other["metadata"].get("labels") or {}
                    if any(_labels_match(sel, labels) for sel in selectors):
                        rules += [r for r in other.get("rules") or [] if r not in rules]
                if rules != (role.get("rules") or []):
                    role["rules"] = rules
                    code, data = self.request("PUT", f"{base}/{role['metadata']['name']}", role)
                    if code != 200:
                        raise RuntimeError(f"aggregating ClusterRoles: HTTP {code}: {data[:300]!r}")
                    changed = True
            if not changed:
                return

    def create_service_account(self, namespace: str, name: str) -> dict[str, object]:
        self.ensure_namespace(namespace)
        return self.apply(
            {"kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
        )

    def delete_service_account(self, namespace: str, name: str) -> None:
        code, data = self.request(
            "DELETE", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        )
        if code not in (200, 404):
            raise RuntimeError(f"deleting service account {name}: HTTP {code}: {data[:300]!r}")

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        audiences: Sequence[str] = (),
        expiration_seconds: int = 3600,
    ) -> str:
        """A token of the service account from the TokenRequest API (kube-apiserver's
        minimum lifetime is 10 minutes); ``audiences`` default to the API server's own."""
        spec: dict[str, object] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        code, data = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        if code != 201:
            raise RuntimeError(f"TokenRequest for {namespace}/{name}: HTTP {code}: {data[:300]!r}")
        token: str = json.loads(data)["status"]["token"]
        return token

    def expired_service_account_token(self, namespace: str, name: str) -> str:
        """A service-account token signed with the cluster's real key, for an existing
        service account, that expired an hour ago: the TokenRequest API cannot issue one
        (its minimum lifetime is 10 minutes), and waiting is not an option for a test."""
        code, data = self.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        if code != 200:
            raise RuntimeError(f"service account {namespace}/{name}: HTTP {code}")
        uid = json.loads(data)["metadata"]["uid"]
        now = int(time.time())
        claims = {
            "aud": [SA_ISSUER],
            "exp": now - 3600,
            "iat": now - 7200,
            "nbf": now - 7200,
            "iss": SA_ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        }
        return self._sign_jwt(claims)

    def _sign_jwt(self, claims: dict[str, object]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"alg": "RS256", "typ": "JWT"}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.workdir / "sa.key")],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{b64(sig)}"

    # ---- the audit log -----------------------------------------------------------------
    def audit_events(self) -> list[dict[str, object]]:
        """kube-apiserver's audit events so far (see ``AUDIT_POLICY``), oldest first."""
        try:
            text = self.audit_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        events = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                events.append(json.loads(line))
        return events

    def wait_audit(
        self, match: Callable[[dict[str, object]], bool], timeout: float = 30.0
    ) -> list[dict[str, object]]:
        """The audit events ``match`` accepts, once there is one (the log is written just
        after the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.audit_events() if match(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    # ---- example users -----------------------------------------------------------------
    def example_users(self, ns_a: str = "team-a", ns_b: str = "team-b") -> list[ExampleUser]:
        """Named users to try the authentication and authorization modes with, their RBAC
        applied (idempotent; the first call's namespaces stay):

        admin (cluster-admin), viewer-a (view in ``ns_a``), editor-b (edit in ``ns_b``),
        nobody (no rights), group-viewer (a static-token user whose group may view every
        namespace), sa-editor-a (a service account of ``ns_a`` that may edit there, token
        from the TokenRequest API).

        ray.io is added to the built-in view, edit and admin roles by aggregated roles, as
        a cluster with KubeRay's RBAC has it."""
        if self._examples is not None:
            return self._examples
        for ns in (ns_a, ns_b):
            self.ensure_namespace(ns)
        for role, verbs, into in (
            ("watchcache-example:ray-view", ["get", "list", "watch"], ["view"]),
            ("watchcache-example:ray-edit", ["*"], ["edit", "admin"]),
        ):
            labels = {f"rbac.authorization.k8s.io/aggregate-to-{r}": "true" for r in into}
            self.apply(
                {
                    "kind": "ClusterRole",
                    "metadata": {"name": role, "labels": labels},
                    "rules": [{"apiGroups": ["ray.io"], "resources": ["*"], "verbs": verbs}],
                }
            )
        self.aggregate_cluster_roles()
        users = {u.name: u for u in self.static_examples}

        def user(key: str) -> User:
            return users[next(n for k, n, _ in EXAMPLE_STATIC_USERS if k == key)]

        self.bind("cluster-admin", {"kind": "User", "name": user("admin").name})
        self.bind("view", {"kind": "User", "name": user("viewer-a").name}, ns_a)
        self.bind("view", {"kind": "Group", "name": "example:ray-viewers"})
        self.bind("edit", {"kind": "User", "name": user("editor-b").name}, ns_b)
        self.create_service_account(ns_a, EXAMPLE_SERVICE_ACCOUNT)
        sa = {"kind": "ServiceAccount", "name": EXAMPLE_SERVICE_ACCOUNT, "namespace": ns_a}
        self.bind("edit", sa, ns_a)
        sa_token = self.service_account_token(
            ns_a, EXAMPLE_SERVICE_ACCOUNT, expiration_seconds=24 * 3600
        )
        may = {
            "admin": "everything (cluster-admin)",
            "viewer-a": f"read in namespace {ns_a} (view)",
            "editor-b": f"read and write in namespace {ns_b} (edit)",
            "nobody": "nothing (authenticated, no RBAC binding)",
            "group-viewer": "read in every namespace (its group example:ray-viewers has view)",
        }
        examples = [
            ExampleUser(key, u.name, u.token, may[key], u.groups)
            for key, u in ((k, user(k)) for k, _, _ in EXAMPLE_STATIC_USERS)
        ]
        examples.append(
            ExampleUser(
                "sa-editor-a",
                f"system:serviceaccount:{ns_a}:{EXAMPLE_SERVICE_ACCOUNT}",
                sa_token,
                f"read and write in namespace {ns_a} (edit; a service-account token, 24 h)",
                ("system:serviceaccounts", f"system:serviceaccounts:{ns_a}"),
            )
        )
        self._examples = examples
        return examples

    def example_user_rows(self) -> list[tuple[str, str, str]]:
        """(user name, token, what it may do) of each example user, for ``watchcache dev``."""
        return [(u.name, u.token, u.may) for u in self.example_users()]


def _labels_match(selector: dict[str, object], labels: dict[str, str]) -> bool:
    """A label selector with matchLabels (what aggregation rules use) against labels."""
    match = selector.get("matchLabels") or {}
    assert isinstance(match, dict) and not selector.get("matchExpressions")
    return all(labels.get(k) == v for k, v in match.items())


def _dn_escape(value: str) -> str:
    """A value for openssl's -subj syntax, where / separates attributes and \\ escapes."""
    return value.replace("\\", "\\\\").replace("/", "\\/")


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
