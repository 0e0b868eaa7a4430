"""Realistic populations of KubeRay objects, for the integration tests and the benchmarks.

Specs come from the ray-operator's own samples (``config/samples``), so they are what users
really submit. Each object then gets the labels a fleet carries (``team``, ``env``, ``tier``,
a numeric ``ray.io/priority``, ``app.kubernetes.io/managed-by``; any of them may be absent,
as in real clusters) and, for most, the status block the KubeRay operator writes (state,
conditions, endpoints, head, replica counts, application statuses). Stored by the API server,
with its metadata and managedFields, one object is 2.5-8 KB of JSON (90% above 3 KB, median
5.5 KB); those applied "with kubectl" carry its last-applied-configuration annotation.

Everything is deterministic in its inputs (``plan``'s seed, each object's name), and generic
over ``request_fn(method, path, body) -> (code, body bytes)``: ``ControlPlane.request`` in the
tests, any authenticated client elsewhere.
"""

from __future__ import annotations

import copy
import functools
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

RequestFn = Callable[[str, str, Any], tuple[int, bytes]]

API_VERSION = "ray.io/v1"
PLURALS: Mapping[str, str] = {
    "RayCluster": "rayclusters",
    "RayJob": "rayjobs",
    "RayService": "rayservices",
}

# Sample files per kind, in variant order; those missing from a samples folder are skipped.
SAMPLES: Mapping[str, tuple[str, ...]] = {
    "RayCluster": ("ray-cluster.sample.yaml", "ray-cluster.complete.yaml"),
    "RayJob": ("ray-job.sample.yaml", "ray-job.shutdown.yaml"),
    "RayService": ("ray-service.sample.yaml", "ray-service.high-availability.yaml"),
}

# The state written to status (RayCluster .state, RayJob .jobStatus, RayService
# .serviceStatus), repeated to weight the common ones.
STATES: Mapping[str, tuple[str, ...]] = {
    "RayCluster": ("ready", "ready", "ready", "ready", "suspended", "failed"),
    "RayJob": ("RUNNING", "RUNNING", "SUCCEEDED", "SUCCEEDED", "FAILED", "PENDING", "STOPPED"),
    "RayService": ("Running", "Running", "Running", "NotRunning"),
}
JOB_DEPLOYMENT_STATUS: Mapping[str, str] = {
    "PENDING": "Initializing",
    "RUNNING": "Running",
    "SUCCEEDED": "Complete",
    "FAILED": "Failed",
    "STOPPED": "Suspended",
}

# (key, values, probability that an object carries the key)
LABELS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("team", ("ml", "data", "platform", "research"), 0.85),
    ("env", ("prod", "staging", "dev"), 0.75),
    ("tier", ("gold", "silver", "bronze"), 0.6),
    # Integers, so that the Gt/Lt selector forms ('ray.io/priority>2') have something to do.
    ("ray.io/priority", ("0", "1", "2", "5", "10"), 0.5),
    ("app.kubernetes.io/managed-by", ("kuberay-apiserver", "helm"), 0.3),
)
KIND_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("RayCluster", 0.5),
    ("RayJob", 0.3),
    ("RayService", 0.2),
)
WORDS = (
    "atlas", "bert", "cedar", "delta", "ember", "falcon", "gemma", "hydra", "iris", "llama",
    "mnist", "orca", "pyro", "quartz", "resnet", "sage", "tensor", "vega", "whisper", "xgb",
)  # fmt: skip
EPOCH = datetime(2025, 6, 1, tzinfo=UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectPlan:
    """One object to create. ``state`` None: no status yet (the operator has not reconciled
    it). ``variant`` picks the sample file and the sizes (replicas, applications)."""

    namespace: str
    name: str
    kind: str
    labels: Mapping[str, str]
    variant: int = 0
    state: str | None = None
    suspend: bool = False


def plan(n: int, namespaces: Sequence[str], seed: int = 0) -> list[ObjectPlan]:
    """``n`` objects spread over ``namespaces``, the same list for the same arguments.

    Names are unique within each namespace and kind, and not in creation order, so that the
    API server's (namespace, name) order differs from the order of creation.
    """
    rng = random.Random(seed)
    kinds = [k for k, _ in KIND_WEIGHTS]
    weights = [w for _, w in KIND_WEIGHTS]
    out: list[ObjectPlan] = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        labels = {key: rng.choice(values) for key, values, p in LABELS if rng.random() < p}
        suspend = kind != "RayService" and rng.random() < 0.1
        state: str | None = None if rng.random() < 0.15 else rng.choice(STATES[kind])
        if suspend and state is not None:
            state = "suspended" if kind == "RayCluster" else "STOPPED"
        out.append(
            ObjectPlan(
                namespace=rng.choice(namespaces),
                name=f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i:05d}",
                kind=kind,
                labels=labels,
                variant=rng.randrange(8),
                state=state,
                suspend=suspend,
            )
        )
    return out


def build(p: ObjectPlan, samples_dir: Path) -> dict[str, Any]:
    """The object for a plan entry, status included (``populate`` writes it separately)."""
    builder = {"RayCluster": raycluster, "RayJob": rayjob, "RayService": rayservice}[p.kind]
    return builder(
        p.name, p.namespace, p.labels, samples_dir, p.variant, state=p.state, suspend=p.suspend
    )


# ---- the three kinds ---------------------------------------------------------------------


def raycluster(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    samples_dir: Path,
    variant: int = 0,
    *,
    state: str | None = "ready",
    suspend: bool = False,
) -> dict[str, Any]:
    rng = random.Random(f"{namespace}/{name}/{variant}")
    obj = _from_sample(samples_dir, "RayCluster", variant, name, namespace, labels, rng)
    spec = obj["spec"]
    replicas = _scale_workers(spec, variant)
    if suspend:
        spec["suspend"] = True
    if variant % 2 == 0:
        _applied_with_kubectl(obj)
    if state is not None:
        obj["status"] = _cluster_status(name, namespace, state, replicas, rng)
    return obj


def rayjob(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    samples_dir: Path,
    variant: int = 0,
    *,
    state: str | None = "RUNNING",
    suspend: bool = False,
) -> dict[str, Any]:
    rng = random.Random(f"{namespace}/{name}/{variant}")
    obj = _from_sample(samples_dir, "RayJob", variant, name, namespace, labels, rng)
    spec = obj["spec"]
    replicas = _scale_workers(spec.get("rayClusterSpec") or {}, variant)
    if suspend:
        spec["suspend"] = True
    if variant % 2 == 0:
        _applied_with_kubectl(obj)
    if state is not None:
        cluster = f"{name}-{_suffix(rng, 5)}"
        started = _time(rng)
        status: dict[str, Any] = {
            "jobStatus": state,
            "jobDeploymentStatus": JOB_DEPLOYMENT_STATUS.get(state, "Running"),
            "jobId": f"{name}-{_suffix(rng, 5)}",
            "rayClusterName": cluster,
            "dashboardURL": f"{cluster}-head-svc.{namespace}.svc.cluster.local:8265",
            "startTime": _iso(started),
            "observedGeneration": 1,
            "rayClusterStatus": _cluster_status(cluster, namespace, "ready", replicas, rng),
        }
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            ended = started + timedelta(seconds=rng.randrange(30, 7200))
            status["endTime"] = _iso(ended)
            status["rayJobInfo"] = {"startTime": _iso(started), "endTime": _iso(ended)}
            status["succeeded"] = int(state == "SUCCEEDED")
            status["failed"] = int(state == "FAILED")
            status["message"] = {
                "SUCCEEDED": "Job finished successfully.",
                "FAILED": "Job entrypoint command failed with exit code 1",
                "STOPPED": "Job was stopped by the user.",
            }[state]
        obj["status"] = status
    return obj


def rayservice(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    samples_dir: Path,
    variant: int = 0,
    *,
    state: str | None = "Running",
    suspend: bool = False,  # RayService has no spec.suspend; accepted for a uniform signature
) -> dict[str, Any]:
    rng = random.Random(f"{namespace}/{name}/{variant}")
    obj = _from_sample(samples_dir, "RayService", variant, name, namespace, labels, rng)
    spec = obj["spec"]
    replicas = _scale_workers(spec.get("rayClusterConfig") or {}, variant)
    if state is not None:
        running = state == "Running"
        cluster = f"{name}-raycluster-{_suffix(rng, 5)}"
        apps: dict[str, Any] = {}
        for app in _serve_apps(spec.get("serveConfigV2", "")):
            deployments = {
                d: {"status": "HEALTHY" if running else "UPDATING", "message": ""}
                for d in app["deployments"]
            }
            apps[app["name"]] = {
                "status": "RUNNING" if running else "DEPLOYING",
                "message": "",
                "serveDeploymentStatuses": deployments,
            }
        when = _iso(_time(rng))
        obj["status"] = {
            "serviceStatus": state,
            "numServeEndpoints": replicas + 1 if running else 0,
            "observedGeneration": 1,
            "lastUpdateTime": when,
            "conditions": [
                _condition("Ready", running, "NonZeroServeEndpoints", "", when),
                _condition("UpgradeInProgress", False, "NoPendingCluster", "", when),
            ],
            "activeServiceStatus": {
                "rayClusterName": cluster,
                "applicationStatuses": apps,
                "rayClusterStatus": _cluster_status(cluster, namespace, "ready", replicas, rng),
            },
        }
    return obj


# ---- creating them -----------------------------------------------------------------------


def collection_path(kind: str, namespace: str | None = None) -> str:
    """The list path of a kind, namespaced or (namespace None) across all namespaces."""
    if namespace is None:
        return f"/apis/{API_VERSION}/{PLURALS[kind]}"
    return f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURALS[kind]}"


def object_path(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['kind'], meta['namespace'])}/{meta['name']}"


def ensure_namespaces(request_fn: RequestFn, namespaces: Iterable[str]) -> None:
    for ns in sorted(set(namespaces)):
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        code, data = request_fn("POST", "/api/v1/namespaces", body)
        if code not in (201, 409):
            raise RuntimeError(f"creating namespace {ns}: HTTP {code}: {data[:300]!r}")


def create(request_fn: RequestFn, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Creates one object and, when it has one, writes its status (a subresource: the create
    drops it). Returns the object as the API server stored it last."""
    spec_only = {k: v for k, v in obj.items() if k != "status"}
    meta = obj["metadata"]
    code, data = request_fn("POST", collection_path(obj["kind"], meta["namespace"]), spec_only)
    if code != 201:
        raise RuntimeError(f"creating {object_path(obj)}: HTTP {code}: {data[:500]!r}")
    stored: dict[str, Any] = json.loads(data)
    if "status" not in obj:
        return stored
    stored["status"] = obj["status"]
    code, data = request_fn("PUT", object_path(obj) + "/status", stored)
    if code != 200:
        raise RuntimeError(f"writing {object_path(obj)}/status: HTTP {code}: {data[:500]!r}")
    written: dict[str, Any] = json.loads(data)
    return written


def populate(
    request_fn: RequestFn, objects: Sequence[Mapping[str, Any]], *, workers: int = 8
) -> list[dict[str, Any]]:
    """Creates the objects' namespaces, then the objects (``workers`` at a time), and returns
    them as stored, in the order given. Any failure raises: a partial population is useless."""
    ensure_namespaces(request_fn, (o["metadata"]["namespace"] for o in objects))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(functools.partial(create, request_fn), objects))


def delete_all(request_fn: RequestFn, namespaces: Iterable[str]) -> None:
    """Deletes every Ray object in the namespaces (a delete-collection per kind). Namespaces
    themselves stay: without a controller manager, a deleted namespace never finishes."""
    for ns in sorted(set(namespaces)):
        for kind in PLURALS:
            code, data = request_fn("DELETE", collection_path(kind, ns), None)
            if code != 200:
                raise RuntimeError(f"deleting {collection_path(kind, ns)}: HTTP {code}: {data!r}")


# ---- pieces ------------------------------------------------------------------------------


@functools.cache
def _sample(path: Path, kind: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == kind:
            return doc
    raise ValueError(f"{path} has no {kind}")


def _from_sample(
    samples_dir: Path,
    kind: str,
    variant: int,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    rng: random.Random,
) -> dict[str, Any]:
    files = [f for f in SAMPLES[kind] if (samples_dir / f).exists()]
    if not files:
        raise FileNotFoundError(f"no {kind} sample among {SAMPLES[kind]} in {samples_dir}")
    obj = copy.deepcopy(_sample(samples_dir / files[variant % len(files)], kind))
    obj["metadata"] = {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "annotations": {
            "ray.io/owner": f"{rng.choice(WORDS)}@example.com",
            "ray.io/description": f"{kind} {name} for the {labels.get('team', 'shared')} team",
        },
    }
    return obj


def _applied_with_kubectl(obj: dict[str, Any]) -> None:
    """The annotation `kubectl apply` leaves: the applied object, as compact JSON."""
    applied = json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n"
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = applied


def _scale_workers(cluster_spec: dict[str, Any], variant: int) -> int:
    """Sets the first worker group's replicas from the variant; returns the total desired."""
    total = 0
    for i, group in enumerate(cluster_spec.get("workerGroupSpecs") or []):
        if i == 0:
            group["replicas"] = 1 + variant % 4
            group["maxReplicas"] = max(group.get("maxReplicas", 0), group["replicas"] + 2)
        total += int(group.get("replicas", 1))
    return total


def _cluster_status(
    name: str, namespace: str, state: str, replicas: int, rng: random.Random
) -> dict[str, Any]:
    ready = state == "ready"
    when = _time(rng)
    head_ip = f"10.244.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return {
        "state": state,
        "desiredCPU": str(1 + replicas),
        "desiredMemory": f"{2 + replicas}G",
        "desiredGPU": "0",
        "desiredTPU": "0",
        "desiredWorkerReplicas": replicas,
        "availableWorkerReplicas": replicas if ready else 0,
        "readyWorkerReplicas": replicas if ready else 0,
        "minWorkerReplicas": 1,
        "maxWorkerReplicas": replicas + 2,
        "endpoints": {
            "client": "10001",
            "dashboard": "8265",
            "gcs-server": "6379",
            "metrics": "8080",
        },
        "head": {
            "podIP": head_ip,
            "podName": f"{name}-head-{_suffix(rng, 5)}",
            "serviceIP": head_ip,
            "serviceName": f"{name}-head-svc",
        },
        "lastUpdateTime": _iso(when),
        "observedGeneration": 1,
        "stateTransitionTimes": {state: _iso(when)},
        "conditions": [
            _condition("HeadPodReady", ready, "HeadPodRunningAndReady", "", _iso(when)),
            _condition(
                "RayClusterProvisioned",
                ready,
                "AllPodRunningAndReadyFirstTime",
                "All Ray Pods are ready for the first time",
                _iso(when),
            ),
            _condition("RayClusterSuspended", state == "suspended", "", "", _iso(when)),
        ],
    }


def _condition(kind: str, ok: bool, reason: str, message: str, when: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason or ("Ready" if ok else "NotReady"),
        "message": message,
        "lastTransitionTime": when,
        "observedGeneration": 1,
    }


def _serve_apps(serve_config: str) -> list[dict[str, Any]]:
    try:
        apps = (yaml.safe_load(serve_config) or {}).get("applications") or []
    except yaml.YAMLError:
        return []
    return [
        {"name": a.get("name", "default"), "deployments": [d["name"] for d in a["deployments"]]}
        for a in apps
        if isinstance(a, dict) and a.get("deployments")
    ]


def _suffix(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _time(rng: random.Random) -> datetime:
    return EPOCH + timedelta(seconds=rng.randrange(0, 90 * 86400))


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
