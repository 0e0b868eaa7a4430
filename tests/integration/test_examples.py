"""The custom servers in examples/, each run as its README says (``python examples/X.py
--kubeconfig K --port P``) against the real control plane, and checked for what it adds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support.controlplane import ControlPlane

from watchcache.middleware.kuberay import Defaults

if TYPE_CHECKING:
    from conftest import Proxy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NS = "wc-examples"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"


def example(proxy_factory: Callable[..., Proxy], script: str, *args: str) -> Proxy:
    return proxy_factory(*args, command=[str(EXAMPLES / script)])


@pytest.fixture(scope="module")
def namespace(controlplane: ControlPlane) -> str:
    code, body = controlplane.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    assert code in (201, 409), body
    return NS


def cluster(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    head = {
        "rayStartParams": {},
        "template": {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray"}]}},
    }
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta,
        "spec": {"headGroupSpec": head},
    }


# ---- require_team_label.py -----------------------------------------------------------------
@pytest.fixture(scope="module")
def team_server(proxy_factory: Callable[..., Proxy], namespace: str) -> Proxy:
    return example(proxy_factory, "require_team_label.py")


@pytest.mark.parametrize("labels", [None, {"owner": "me"}, {"team": ""}])
def test_team_label_example_refuses_a_create_without_a_team_with_a_clear_422(
    team_server: Proxy, controlplane: ControlPlane, labels: dict[str, str] | None
) -> None:
    body = yaml.safe_dump(cluster("no-team", labels)).encode()
    code, _, answer = team_server.request(
        "POST", RAYCLUSTERS, body, {"Content-Type": "application/yaml"}
    )
    status = json.loads(answer)
    assert code == 422, status
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Invalid", 422)
    assert status["message"].startswith('RayCluster.ray.io "no-team" is invalid: ')
    assert "team" in status["message"]
    assert status["details"]["causes"][0]["field"] == "metadata.labels.team"
    assert controlplane.request("GET", f"{RAYCLUSTERS}/no-team")[0] == 404


def test_team_label_example_passes_a_create_with_a_team_and_every_other_request(
    team_server: Proxy, controlplane: ControlPlane
) -> None:
    code, created = team_server.json("POST", RAYCLUSTERS, cluster("with-team", {"team": "ml"}))
    assert code == 201, created
    code, stored = controlplane.request("GET", f"{RAYCLUSTERS}/with-team")
    assert code == 200
    assert json.loads(stored)["metadata"]["labels"] == {"team": "ml"}
    # Reads, and writes other than creates, are not its business.
    assert team_server.json("GET", f"{RAYCLUSTERS}/with-team")[0] == 200
    code, _, _ = team_server.request(
        "PATCH",
        f"{RAYCLUSTERS}/with-team",
        b'{"metadata": {"labels": {"team": null}}}',
        {"Content-Type": "application/merge-patch+json"},
    )
    assert code == 200
    assert team_server.json("DELETE", f"{RAYCLUSTERS}/with-team")[0] == 200


# ---- audit_log.py --------------------------------------------------------------------------
HEALTH = ("/readyz", "/livez", "/healthz")


def audit_lines(text: str) -> list[dict[str, Any]]:
    """The audit records among a process's output (its own logs are not JSON), but those of
    the readiness polls: they go through the chain like every request, at their own pace."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["path"] not in HEALTH:
                out.append(record)
    return out


def wait_for_records(read: Callable[[], str], count: int) -> list[dict[str, Any]]:
    """The audit records once there are ``count`` of them."""
    deadline = time.monotonic() + 15
    while len(records := audit_lines(read())) < count:
        assert time.monotonic() < deadline, f"{len(records)} audit records, not {count}"
        time.sleep(0.05)
    return records


def exercise(server: Proxy) -> None:
    """A create, a list, a missing object, a watch that ends, a delete."""
    assert server.json("POST", RAYCLUSTERS, cluster("audited"))[0] == 201
    assert server.json("GET", f"{RAYCLUSTERS}?labelSelector=app%3Dx")[0] == 200
    assert server.json("GET", f"{RAYCLUSTERS}/no-such-cluster")[0] == 404
    code, _, _ = server.request("GET", f"{RAYCLUSTERS}?watch=true&timeoutSeconds=1")
    assert code == 200
    assert server.json("DELETE", f"{RAYCLUSTERS}/audited")[0] == 200


def check_records(records: list[dict[str, Any]]) -> None:
    seen = sorted((r["method"], r["path"], r["status"], r["streamed"]) for r in records)
    assert seen == [
        ("DELETE", f"{RAYCLUSTERS}/audited", 200, False),
        ("GET", RAYCLUSTERS, 200, False),
        ("GET", RAYCLUSTERS, 200, True),  # the watch, logged once its head is decided
        ("GET", f"{RAYCLUSTERS}/no-such-cluster", 404, False),
        ("POST", RAYCLUSTERS, 201, False),
    ]
    queries = sorted(json.dumps(r["query"], sort_keys=True) for r in records)
    assert json.dumps({"labelSelector": "app=x"}) in queries
    assert json.dumps({"timeoutSeconds": "1", "watch": "true"}) in queries
    for record in records:
        assert set(record) == {
            "time",
            "method",
            "path",
            "query",
            "user",
            "status",
            "streamed",
            "duration_ms",
        }
        assert record["user"] is None  # no authentication middleware in this server
        assert record["duration_ms"] >= 0


def test_audit_log_example_writes_a_json_line_per_request_to_its_file(
    proxy_factory: Callable[..., Proxy], namespace: str, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    server = example(proxy_factory, "audit_log.py", "--audit-file", str(audit))
    exercise(server)
    check_records(wait_for_records(lambda: audit.read_text() if audit.exists() else "", 5))


def test_audit_log_example_writes_to_stderr_by_default(
    proxy_factory: Callable[..., Proxy], namespace: str
) -> None:
    server = example(proxy_factory, "audit_log.py")
    exercise(server)
    check_records(wait_for_records(server.log, 5))


# ---- defaults.yaml -------------------------------------------------------------------------
def test_example_defaults_file_is_a_valid_defaults_file() -> None:
    values = Defaults.from_file(str(EXAMPLES / "defaults.yaml")).values
    assert set(values) <= {"all", "rayclusters", "rayjobs", "rayservices", "image"}
    assert all(isinstance(v, dict) for k, v in values.items() if k != "image")


# ---- ray_pods.py ---------------------------------------------------------------------------
def test_ray_pods_example_serves_its_own_route_from_its_own_cache(
    proxy_factory: Callable[..., Proxy], controlplane: ControlPlane, namespace: str
) -> None:
    server = example(proxy_factory, "ray_pods.py")
    # No controller manager here: the namespace's default ServiceAccount is made by hand.
    sa = {"metadata": {"name": "default"}}
    code, body = controlplane.request("POST", f"/api/v1/namespaces/{NS}/serviceaccounts", sa)
    assert code in (201, 409), body
    pod = {
        "metadata": {"name": "rc-a-head", "labels": {"ray.io/cluster": "rc-a"}},
        "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray"}]},
    }
    code, body = controlplane.request("POST", f"/api/v1/namespaces/{NS}/pods", pod)
    assert code in (201, 409), body
    deadline = time.monotonic() + 30
    while True:
        code, _, raw = server.request("GET", "/ray/pods")
        assert code == 200, raw
        if json.loads(raw)["clusters"].get("rc-a") == ["rc-a-head"]:
            break
        assert time.monotonic() < deadline, raw
        time.sleep(0.1)
    # The built-in features run beside it.
    assert server.request("GET", f"/apis/v1/namespaces/{NS}/compute_templates")[0] == 200
