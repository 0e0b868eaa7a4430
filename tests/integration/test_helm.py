"""The Helm chart (deploy/helm/watchcache) against the real control plane: `helm lint`, the
default and the everything-on renderings applied with a server-side dry run, the plain
manifests of deploy/kubernetes/ matching the chart, and the chart's RBAC proven by running
watchcache as the Deployment runs it (secure by default: authentication and authorization
kubernetes) with a token of the chart's own ServiceAccount, which also calls it with that
token: the quickstart passes with the rules as rendered and fails with one rule short.

helm is built from its Go module by deploy/helm/build.sh (cached; the first build takes a
few minutes), never downloaded."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import yaml
from conftest import stop_proxy
from differential import wait_until
from support.controlplane import ControlPlane, User
from watchclient import WatchStream

if TYPE_CHECKING:
    from conftest import Proxy

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "watchcache"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

# A values file that turns every option of the chart on.
EVERYTHING_ON: dict[str, Any] = {
    "replicaCount": 2,
    "workers": "auto",
    "namespaces": ["wc-helm-all-a", "wc-helm-all-b"],
    "cache": False,
    "corsAllowOrigin": "https://dashboard.example",
    "defaults": {"image": "rayproject/ray:2.46.0", "all": {"metadata": {"labels": {"t": "r"}}}},
    "features": ["cors", "ray-events", "service-proxy", "defaults", "compute-templates"],
    "logLevel": "DEBUG",
    "shutdownDelay": 15,
    "shutdownGrace": 30,
    "extraArgs": ["--retries", "5"],
    "authentication": ["x509", "kubernetes", "token-file"],
    "authenticationAudiences": ["watchcache", "https://kubernetes.default.svc"],
    "anonymousAuth": False,
    "tokenFile": {"secretName": "watchcache-tokens", "key": "tokens.csv"},
    "clientCA": {"configMapName": "watchcache-client-ca", "key": "ca.crt"},
    "authorization": "kubernetes",
    "allowUnauthenticated": True,
    "impersonation": "true",
    "tls": {"secretName": "watchcache-tls"},
    "auditLog": "/var/log/watchcache/audit.log",
    "podAnnotations": {"example.com/team": "ray"},
    "podLabels": {"team": "ray"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ray"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "watchcache"}},
                    },
                }
            ]
        }
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "watchcache"}},
        }
    ],
    "priorityClassName": "system-cluster-critical",
    "imagePullSecrets": ["registry-credentials"],
    "serviceAccount": {"name": "wc-everything", "annotations": {"example.com/id": "wc"}},
    "service": {"type": "NodePort", "annotations": {"example.com/lb": "internal"}},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"},
    "autoscaling": {
        "enabled": True,
        "minReplicas": 2,
        "maxReplicas": 4,
        "targetCPUUtilizationPercentage": 70,
    },
    "serviceMonitor": {
        "enabled": True,
        "interval": "15s",
        "labels": {"release": "prometheus"},
        "insecureSkipVerify": True,
        "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
    },
    "metricsReader": {
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]
    },
}
# The flags EVERYTHING_ON must put on the command line.
EVERYTHING_ON_FLAGS = (
    "--namespace=wc-helm-all-a",
    "--namespace=wc-helm-all-b",
    "--no-cache",
    "--cors-allow-origin=https://dashboard.example",
    "--defaults=/etc/watchcache/defaults/defaults.yaml",
    "--features=cors,ray-events,service-proxy,defaults,compute-templates",
    "--log-level=DEBUG",
    "--shutdown-delay=15",
    "--shutdown-grace=30",
    "--workers=auto",
    "--authentication=x509",
    "--authentication=kubernetes",
    "--authentication=token-file",
    "--token-auth-file=/etc/watchcache/tokens/tokens.csv",
    "--client-ca-file=/etc/watchcache/client-ca/ca.crt",
    "--authentication-audiences=watchcache,https://kubernetes.default.svc",
    "--anonymous-auth=false",
    "--authorization=kubernetes",
    "--allow-unauthenticated",
    "--tls-cert-file=/etc/watchcache/tls/tls.crt",
    "--tls-private-key-file=/etc/watchcache/tls/tls.key",
    "--audit-log=/var/log/watchcache/audit.log",
)

# The Prometheus Operator's CRD is not part of the test control plane: a minimal stand-in
# (its group, kind, scope and version, an open schema) lets the server dry run check the
# ServiceMonitor's apiVersion, kind and metadata; its spec is checked by `helm lint` only.
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


# ---- helm and kubectl ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary, built from source on demand (deploy/helm/build.sh shows progress)."""
    # Its progress goes to stderr as the control plane's build does (shown with -s, and in
    # the captured output of a failure).
    proc = subprocess.run(
        ["bash", str(REPO / "deploy" / "helm" / "build.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"deploy/helm/build.sh could not build helm (exit {proc.returncode}): it needs Go "
            "and the Go module proxy (GOPROXY); its output is above",
            pytrace=False,
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def run(argv: list[str | Path], stdin: str | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], input=stdin, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"{argv[0]} {argv[1]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def template(helm: Path, release: str, namespace: str, values: Path | None = None) -> str:
    argv: list[str | Path] = [helm, "template", release, CHART, "--namespace", namespace]
    if values is not None:
        argv += ["--values", values]
    return run(argv)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kubectl(cp: ControlPlane, *args: str, stdin: str | None = None) -> str:
    return run([cp.kubectl, "--kubeconfig", cp.kubeconfig, *args], stdin)


def ensure_namespaces(cp: ControlPlane, *names: str) -> None:
    for name in names:
        code, body = cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        assert code in (201, 409), body


def deployment_args(docs: list[dict[str, Any]]) -> list[str]:
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return [str(a) for a in container["args"]]


# ---- lint, manifests, dry runs -------------------------------------------------------------
@pytest.fixture(scope="module")
def everything_on(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("helm") / "everything-on.yaml"
    path.write_text(yaml.safe_dump(EVERYTHING_ON))
    return path


def test_helm_lint_is_clean(helm: Path, everything_on: Path) -> None:
    for extra in ([], ["--values", str(everything_on)]):
        out = run([helm, "lint", "--strict", CHART, *extra])
        assert "1 chart(s) linted, 0 chart(s) failed" in out, out
        assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_plain_manifests_are_the_charts_rendering(helm: Path, tmp_path: Path) -> None:
    """deploy/kubernetes/*.yaml are generated from the chart; a chart change regenerates them."""
    run(["bash", REPO / "deploy" / "helm" / "manifests.sh", tmp_path])
    for name in ("watchcache.yaml", "security-rbac.yaml"):
        committed = (REPO / "deploy" / "kubernetes" / name).read_text()
        assert committed == (tmp_path / name).read_text(), (
            f"deploy/kubernetes/{name} differs from the chart: run deploy/helm/manifests.sh"
        )


def test_default_rendering_passes_a_server_dry_run(helm: Path, controlplane: ControlPlane) -> None:
    ensure_namespaces(controlplane, "wc-helm-default")
    rendered = template(helm, "wc", "wc-helm-default")
    docs = documents(rendered)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",  # the server's rules
            "ClusterRoleBinding",
            "ClusterRole",  # the security modes' (reviews, impersonation)
            "ClusterRoleBinding",
            "ClusterRole",  # the /metrics reader, unbound
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    # Secure by default, and --authorization said outright so chart and server agree.
    args = deployment_args(docs)
    assert "--authentication=kubernetes" in args and "--authorization=kubernetes" in args, args
    assert "--allow-unauthenticated" not in args, args
    # The probes are HTTP checks, made as system:anonymous (see the quickstart test).
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez", container
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", container
    out = kubectl(controlplane, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert out.count("(server dry run)") == len(kinds), out
    # helm's own install path too (its client against this API server, and the NOTES).
    notes = install_dry_run(helm, controlplane)
    assert "STATUS: pending-install" in notes, notes
    assert "Security: authentication kubernetes, authorization kubernetes" in notes, notes
    assert '--token "$TOKEN"' in notes and "No authentication is configured" not in notes, notes


def install_dry_run(helm: Path, cp: ControlPlane, *args: str | Path) -> str:
    """helm's own install path against this API server (``--dry-run=server``): its NOTES."""
    return run(
        [helm, "install", "wc", CHART, "--namespace", "wc-helm-default", *args,
         "--dry-run=server", "--kubeconfig", cp.kubeconfig]
    )  # fmt: skip


# The open mode of earlier versions, asked for in full (values.yaml and the README say so).
OPEN_MODE: dict[str, Any] = {
    "authentication": [],
    "authorization": "none",
    "allowUnauthenticated": True,
}


def test_the_open_mode_is_still_there_on_request(
    helm: Path, controlplane: ControlPlane, tmp_path: Path
) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(OPEN_MODE))
    docs = documents(template(helm, "wc", "wc-helm-default", path))
    args = deployment_args(docs)
    assert "--allow-unauthenticated" in args, args
    assert not [a for a in args if a.startswith(("--authentication", "--authorization"))], args
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"]
    assert names == ["wc-watchcache"], names  # no security rules, no /metrics reader
    notes = install_dry_run(helm, controlplane, "--values", path)
    assert "No authentication is configured" in notes, notes


@pytest.fixture
def service_monitor_crd(controlplane: ControlPlane) -> Iterator[None]:
    kubectl(controlplane, "apply", "-f", "-", stdin=json.dumps(SERVICE_MONITOR_CRD))
    name = SERVICE_MONITOR_CRD["metadata"]["name"]
    try:
        kubectl(controlplane, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
        yield
    finally:
        kubectl(controlplane, "delete", f"crd/{name}", "--ignore-not-found", "--timeout=30s")


def test_everything_on_rendering_passes_a_server_dry_run(
    helm: Path, controlplane: ControlPlane, everything_on: Path, service_monitor_crd: None
) -> None:
    ensure_namespaces(controlplane, "wc-helm-all", *EVERYTHING_ON["namespaces"])
    rendered = template(helm, "wc", "wc-helm-all", everything_on)
    docs = documents(rendered)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "Role",
        "RoleBinding",
        "ServiceMonitor",
        "PodDisruptionBudget",
    }, kinds
    args = deployment_args(docs)
    missing = [flag for flag in EVERYTHING_ON_FLAGS if flag not in args]
    assert not missing, f"flags not rendered: {missing} in {args}"
    # The security ClusterRole: every review and impersonation rule, since every mode is on.
    (security,) = [
        d
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-security")
    ]
    resources = {r for rule in security["rules"] for r in rule["resources"]}
    assert resources >= {"tokenreviews", "subjectaccessreviews", "users", "groups"}, resources
    # Impersonate-Uid is checked on authentication.k8s.io "uids", Impersonate-Extra-KEY on
    # "userextras/KEY": the rule on every resource of that group covers both.
    assert any(
        rule["apiGroups"] == ["authentication.k8s.io"]
        and rule["resources"] == ["*"]
        and rule["verbs"] == ["impersonate"]
        for rule in security["rules"]
    ), security["rules"]
    # The /metrics reader role, bound to the subjects given.
    (binding,) = [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"].endswith("-metrics-reader")
    ]
    assert binding["subjects"] == EVERYTHING_ON["metricsReader"]["subjects"], binding
    out = kubectl(controlplane, "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert out.count("(server dry run)") == len(docs), out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"authentication": ["token-file"]}, "tokenFile.secretName is required"),
        ({"authentication": ["x509"], "tls": {"secretName": "t"}}, "clientCA.secretName or"),
        ({"authentication": ["password"]}, 'unknown mode "password"'),
        ({"authorization": "rbac"}, "authorization must be none or kubernetes"),
        ({"impersonation": "sometimes"}, "impersonation must be auto, true or false"),
        # What the server would refuse on the pod's address, or is surely a mistake.
        ({"authentication": []}, "authentication is empty, so every caller"),
        ({"authentication": [], "authorization": "none"}, "no authentication mode but none"),
        ({"authentication": ["none"]}, "no authentication mode but none"),
        (
            {
                "serviceMonitor": {
                    "enabled": True,
                    "bearerTokenFile": "/t",
                    "bearerTokenSecret": {"name": "s", "key": "token"},
                }
            },
            "bearerTokenFile or bearerTokenSecret.name, not both",
        ),
    ],
)
def test_inconsistent_values_are_refused_with_a_reason(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.run(
        [str(helm), "template", "wc", str(CHART), "--values", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_the_charts_flags_are_flags_of_watchcache_serve(helm: Path, everything_on: Path) -> None:
    """Every flag of the default rendering (security flags included) and of the
    everything-on one is a flag of watchcache serve."""
    help_text = run([sys.executable, "-m", "watchcache", "serve", "--help"])
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    args = deployment_args(documents(template(helm, "wc", "wc-helm-default")))
    assert {"--authentication", "--authorization"} <= {a.split("=")[0] for a in args}, args
    for arg in args[1:]:
        assert arg.split("=")[0] in known, f"{arg} is not a flag of watchcache serve"
    everything = deployment_args(documents(template(helm, "wc", "wc-all", everything_on)))
    flags = {a.split("=")[0] for a in everything[1:] if a.startswith("--")}
    assert flags - known == set(), f"not flags of watchcache serve: {flags - known}"


# ---- RBAC: sufficient as rendered, insufficient one rule short ------------------------------
QUICKSTART_NS = "wc-helm-quickstart"
# The options that today's watchcache already has, all on (security's defaults aside).
TODAYS_OPTIONS: dict[str, Any] = {
    "namespaces": [QUICKSTART_NS],
    "corsAllowOrigin": "https://dashboard.example",
    "defaults": {"all": {"metadata": {"labels": {"team": "ray"}}}},
    "features": ["cors", "ray-events", "service-proxy", "defaults", "compute-templates"],
    "shutdownDelay": 1,
    "shutdownGrace": 5,
    "extraArgs": ["--retries", "2"],
}
Mutate = Callable[[list[dict[str, Any]]], None]


def chart_identity(
    cp: ControlPlane,
    helm: Path,
    tmp: Path,
    release: str,
    values: dict[str, Any] | None = None,
    mutate: Mutate | None = None,
) -> tuple[Path, list[dict[str, Any]], list[str], dict[str, str]]:
    """Applies the chart's ServiceAccount and RBAC for real, in a namespace of their own, and
    returns a kubeconfig carrying a TokenRequest token of that account, the objects (to
    delete later), the arguments to run `watchcache serve` with (the Deployment's, on
    loopback, with the chart's defaults ConfigMap written to a local file) and the header
    that sends the same token to watchcache as a client."""
    namespace = f"{release}-system"
    ensure_namespaces(cp, namespace)
    values_file = None
    if values is not None:
        values_file = tmp / f"{release}-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
    docs = documents(template(helm, release, namespace, values_file))
    objects = [d for d in docs if d["kind"] in RBAC_KINDS]
    if mutate is not None:
        mutate(objects)
    kubectl(
        cp,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}),
    )
    (account,) = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"]
    code, body = cp.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    assert code == 201, body
    token = json.loads(body)["status"]["token"]
    user = User(f"system:serviceaccount:{namespace}:{account}", token)
    kubeconfig = cp.write_kubeconfig(tmp / f"{release}.kubeconfig", user)
    defaults_file = tmp / f"{release}-defaults.yaml"
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-defaults"):
            defaults_file.write_text(doc["data"]["defaults.yaml"])
    bearer = {"Authorization": f"Bearer {token}"}
    return kubeconfig, objects, serve_args(deployment_args(docs), defaults_file), bearer


def delete_objects(cp: ControlPlane, objects: list[dict[str, Any]]) -> None:
    listed = json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    kubectl(cp, "delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=listed)


def serve_args(chart_args: list[str], defaults_file: Path | None = None) -> list[str]:
    """The Deployment's arguments, on loopback: start_proxy picks the port and log level,
    and the defaults file the chart mounts from its ConfigMap is ``defaults_file`` here."""
    dropped = ("--bind", "--port", "--log-level")
    out = [a for a in chart_args[1:] if a.split("=")[0] not in dropped]
    return [f"--defaults={defaults_file}" if a.startswith("--defaults=") else a for a in out]


def raycluster(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": {"app": "helm-quickstart"}},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.46.0"}]}
                },
            }
        },
    }


def quickstart(proxy: Proxy, name: str, timeout: float, auth: dict[str, str]) -> dict[str, Any]:
    """The README's quickstart through watchcache, every request with the ``auth`` headers:
    create, get, list with a selector, watch (an event seen), patch, delete. Raises
    AssertionError at the first step that fails; returns the object as created."""
    base = f"/apis/ray.io/v1/namespaces/{QUICKSTART_NS}/rayclusters"
    selector = "labelSelector=" + quote("app=helm-quickstart")
    code, created = proxy.json("POST", base, raycluster(name), headers=auth)
    assert code == 201, f"create: {code} {created}"
    code, body = proxy.json("GET", f"{base}/{name}", headers=auth)
    assert code == 200 and body["metadata"]["name"] == name, f"get: {code} {body}"
    code, body = proxy.json("GET", f"{base}?{selector}", headers=auth)
    assert code == 200, f"list: {code} {body}"
    assert [i["metadata"]["name"] for i in body["items"]] == [name], f"list: {body}"
    rv = body["metadata"]["resourceVersion"]
    path = f"{base}?watch=1&{selector}&resourceVersion={rv}"
    with WatchStream(proxy.base, path, headers=auth) as watch:
        assert watch.status == 200, f"watch: {watch.status}"
        patch = {"metadata": {"annotations": {"quickstart": "patched"}}}
        code, body = proxy.json(
            "PATCH",
            f"{base}/{name}",
            patch,
            headers={"Content-Type": "application/merge-patch+json", **auth},
        )
        assert code == 200, f"patch: {code} {body}"
        events = watch.read_until(lambda e: e["type"] == "MODIFIED", timeout=timeout)
        modified = events[-1]["object"]
        assert modified["metadata"]["annotations"]["quickstart"] == "patched", events
        code, body = proxy.json("DELETE", f"{base}/{name}", headers=auth)
        assert code == 200, f"delete: {code} {body}"
        watch.read_until(lambda e: e["type"] == "DELETED", timeout=timeout)
    code, body = proxy.json("GET", f"{base}/{name}", headers=auth)
    assert code == 404, f"get after delete: {code} {body}"
    return created


def metrics_reader(release: str) -> dict[str, Any]:
    """Values binding the chart's /metrics reader role to the chart's own account (as one
    would bind a scraper's)."""
    account = {"kind": "ServiceAccount", "name": f"{release}-watchcache"}
    return {"metricsReader": {"subjects": [{**account, "namespace": f"{release}-system"}]}}


@pytest.mark.parametrize(
    ("release", "values"),
    [
        pytest.param("wc-rbac", None, id="all-namespaces-clusterrole"),
        # Today's other options too: their flags as the chart spells them must run.
        pytest.param(
            "wc-rbac-ns",
            {**TODAYS_OPTIONS, **metrics_reader("wc-rbac-ns")},
            id="one-namespace-role-todays-options",
        ),
    ],
)
def test_the_charts_rbac_is_enough_for_the_quickstart(
    helm: Path,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path: Path,
    release: str,
    values: dict[str, Any] | None,
) -> None:
    """The default values are secure: the account's token is reviewed, each request is
    authorized for it, and what goes upstream impersonates it (users, groups, uids, extras),
    all with the chart's RBAC alone."""
    ensure_namespaces(controlplane, QUICKSTART_NS)
    kubeconfig, objects, args, auth = chart_identity(controlplane, helm, tmp_path, release, values)
    kinds = {o["kind"] for o in objects}
    assert ("Role" in kinds) == (values is not None), kinds
    assert "--authentication=kubernetes" in args and "--authorization=kubernetes" in args, args
    base = f"/apis/ray.io/v1/namespaces/{QUICKSTART_NS}/rayclusters"
    try:
        # The Deployment's own arguments (today's binary accepts them all), the SA's token;
        # start_proxy waits for /readyz with no credential, as the kubelet's probe asks.
        proxy = proxy_factory("--kubeconfig", str(kubeconfig), *args)
        try:
            for probe in ("/livez", "/readyz"):  # system:public-info-viewer lets anyone
                code, _, body = proxy.request("GET", probe)
                assert code == 200, f"{probe} as system:anonymous: {code} {body!r}"
            # Anonymous may not read Ray resources, and a token nobody issued is no one.
            code, body = proxy.json("GET", base)
            assert code == 403 and body["reason"] == "Forbidden", body
            code, body = proxy.json("GET", base, headers={"Authorization": "Bearer nobody"})
            assert code == 401 and body["reason"] == "Unauthorized", body
            created = quickstart(proxy, f"{release}-quickstart", timeout=30, auth=auth)
            # /metrics is authorized: anonymous never, the account once the reader role is
            # bound to it.
            code, _, _ = proxy.request("GET", "/metrics")
            assert code == 403, code
            code, _, body = proxy.request("GET", "/metrics", headers=auth)
            assert code == (200 if values is not None else 403), (code, body[:300])
            if values is not None:  # the defaults file and CORS took effect
                assert created["metadata"]["labels"]["team"] == "ray", created
                _, headers, _ = proxy.request("GET", base, headers=auth)
                assert headers["Access-Control-Allow-Origin"] == "https://dashboard.example"
        finally:
            stop_proxy(proxy)  # before its account goes: no 403 retries for the session's rest
    finally:
        delete_objects(controlplane, objects)


def without_watch_on_rayclusters(objects: list[dict[str, Any]]) -> None:
    """The chart's rules with one removed: rayclusters may no longer be watched."""
    (role,) = [
        o
        for o in objects
        if o["kind"] == "ClusterRole"
        and any("rayclusters" in r.get("resources", ()) for r in o["rules"])
    ]
    rules = []
    for rule in role["rules"]:
        if "rayclusters" in rule["resources"]:
            others = copy.deepcopy(rule)
            others["resources"] = [r for r in rule["resources"] if r != "rayclusters"]
            rules.append(others)
            rule = {**rule, "resources": ["rayclusters"]}
            rule["verbs"] = [v for v in rule["verbs"] if v != "watch"]
        rules.append(rule)
    role["rules"] = rules


def test_one_rule_short_the_quickstart_fails(
    helm: Path,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path: Path,
) -> None:
    ensure_namespaces(controlplane, QUICKSTART_NS)
    kubeconfig, objects, args, auth = chart_identity(
        controlplane, helm, tmp_path, "wc-nowatch", mutate=without_watch_on_rayclusters
    )
    try:
        proxy = proxy_factory("--kubeconfig", str(kubeconfig), *args, ready="/healthz")

        # The upstream watch of rayclusters is refused, and /readyz says so ...
        def refused() -> bool:
            code, _, body = proxy.request("GET", "/readyz")
            return code == 503 and b"rayclusters.ray.io" in body and b"HTTP 403" in body

        wait_until(refused, timeout=30, what="/readyz naming the refused watch")
        # ... and the quickstart fails: the cache never sees the RayCluster created.
        try:
            with pytest.raises(AssertionError, match=r"^(get|list|watch)"):
                quickstart(proxy, "helm-short", timeout=10, auth=auth)
        finally:
            stop_proxy(proxy)
    finally:
        delete_objects(controlplane, objects)
        controlplane.request(
            "DELETE", f"/apis/ray.io/v1/namespaces/{QUICKSTART_NS}/rayclusters/helm-short"
        )


def without_impersonating_uids_and_extras(objects: list[dict[str, Any]]) -> None:
    """The security rules with impersonation of users, groups and service accounts only:
    no `impersonate` on authentication.k8s.io (uids, userextras)."""
    (role,) = [
        o
        for o in objects
        if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-security")
    ]
    role["rules"] = [r for r in role["rules"] if r.get("apiGroups") != ["authentication.k8s.io"]]
    role["rules"].append(
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    )


def test_without_impersonating_uids_writes_fail(
    helm: Path,
    controlplane: ControlPlane,
    proxy_factory: Callable[..., Proxy],
    tmp_path: Path,
) -> None:
    """A service-account token carries a uid (and extras), which watchcache passes on as
    Impersonate-Uid (Impersonate-Extra-*): the API server checks `impersonate` on
    authentication.k8s.io `uids` for it, so the chart's rule on that group is needed."""
    ensure_namespaces(controlplane, QUICKSTART_NS)
    kubeconfig, objects, args, auth = chart_identity(
        controlplane, helm, tmp_path, "wc-nouid", mutate=without_impersonating_uids_and_extras
    )
    try:
        proxy = proxy_factory("--kubeconfig", str(kubeconfig), *args)
        try:
            with pytest.raises(AssertionError, match=r"^create: 403"):
                quickstart(proxy, "helm-nouid", timeout=10, auth=auth)
        finally:
            stop_proxy(proxy)
    finally:
        delete_objects(controlplane, objects)
        controlplane.request(
            "DELETE", f"/apis/ray.io/v1/namespaces/{QUICKSTART_NS}/rayclusters/helm-nouid"
        )
