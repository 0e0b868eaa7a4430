"""The foundation: control plane, pass-through proxy, and the KubeRay quickstart over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.controlplane import ControlPlane

RAYCLUSTERS = "/apis/ray.io/v1/namespaces/default/rayclusters"
PINNED = "v1.36.3"


def test_version_through_the_launchers_kubeconfig_reports_the_pinned_release(
    controlplane: ControlPlane,
) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(controlplane.kubeconfig))
    info = client.VersionApi(api).get_code()
    assert info.git_version == PINNED
    assert (info.major, info.minor) == ("1", PINNED.split(".")[1])


def test_kuberay_crds_are_established(controlplane: ControlPlane) -> None:
    for plural in ("rayclusters", "rayjobs", "rayservices"):
        code, body = controlplane.request("GET", f"/apis/ray.io/v1/{plural}")
        assert code == 200, body
        assert json.loads(body)["kind"].endswith("List")


@pytest.fixture(params=["passthrough", "cached"])
def proxy(request: pytest.FixtureRequest):
    """Each mode of watchcache: forwarding everything, and reading from the cache."""
    return request.getfixturevalue(request.param)


def test_raycluster_quickstart_over_http(proxy, samples: Path) -> None:
    """POST the sample as YAML, GET it, merge-patch an annotation, DELETE it, then 404."""
    passthrough = proxy
    sample = (samples / "ray-cluster.sample.yaml").read_bytes()
    name = yaml.safe_load(sample)["metadata"]["name"]

    code, _, body = passthrough.request(
        "POST", RAYCLUSTERS, sample, {"Content-Type": "application/yaml"}
    )
    assert code == 201, body
    created = json.loads(body)
    assert created["metadata"]["name"] == name

    code, got = passthrough.json("GET", f"{RAYCLUSTERS}/{name}")
    assert code == 200
    assert got["metadata"]["uid"] == created["metadata"]["uid"]

    patch = json.dumps({"metadata": {"annotations": {"watchcache.test/touched": "yes"}}}).encode()
    code, _, body = passthrough.request(
        "PATCH", f"{RAYCLUSTERS}/{name}", patch, {"Content-Type": "application/merge-patch+json"}
    )
    assert code == 200, body
    assert json.loads(body)["metadata"]["annotations"]["watchcache.test/touched"] == "yes"

    code, _, body = passthrough.request("DELETE", f"{RAYCLUSTERS}/{name}")
    assert code == 200, body

    code, gone = passthrough.json("GET", f"{RAYCLUSTERS}/{name}")
    assert code == 404
    assert gone["kind"] == "Status" and gone["reason"] == "NotFound"


@pytest.mark.parametrize(
    "path", ["/api/v1/namespaces/default/pods", "/apis/apps/v1/deployments", "/nothing/here"]
)
def test_paths_outside_the_served_routes_are_404_status(passthrough, path: str) -> None:
    code, headers, body = passthrough.request("GET", path)
    assert code == 404
    assert headers["Content-Type"] == "application/json"
    status = json.loads(body)
    assert status["kind"] == "Status"
    assert status["code"] == 404 and status["reason"] == "NotFound"


def test_the_root_lists_the_served_paths_as_the_api_server_lists_its_own(passthrough) -> None:
    code, _, body = passthrough.request("GET", "/")
    assert code == 200
    paths = json.loads(body)["paths"]
    assert paths == sorted(paths)
    assert {"/apis/ray.io/v1", "/version", "/healthz", "/openapi/v3"} <= set(paths)


def test_unknown_http_method_is_a_status(passthrough) -> None:
    code, _, body = passthrough.request("OPTIONS", RAYCLUSTERS)
    assert code == 405
    assert json.loads(body)["kind"] == "Status"


def test_watch_streams_through_the_pass_through_proxy(passthrough, controlplane) -> None:
    """The first event arrives while the stream is still open: nothing is buffered whole."""
    name = "watch-stream-probe"
    req = urllib.request.Request(
        passthrough.base + f"{RAYCLUSTERS}?watch=true&fieldSelector=metadata.name%3D{name}"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        obj = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": name},
            "spec": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {
                        "spec": {
                            "containers": [{"name": "ray-head", "image": "rayproject/ray:2.46.0"}]
                        }
                    },
                }
            },
        }
        code, body = controlplane.request("POST", RAYCLUSTERS, obj)
        assert code == 201, body
        event = json.loads(resp.readline())
        assert event["type"] == "ADDED"
        assert event["object"]["metadata"]["name"] == name
    controlplane.request("DELETE", f"{RAYCLUSTERS}/{name}")


def test_healthz_and_readyz(passthrough) -> None:
    assert passthrough.request("GET", "/healthz")[0] == 200
    assert passthrough.request("GET", "/readyz")[0] == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; it only waits for its parent to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


REPO = Path(__file__).resolve().parents[2]
LAUNCH = textwrap.dedent(
    """
    import sys, time
    from tests.support.controlplane import ControlPlane
    cp = ControlPlane(install_crds=False).start()
    print(*cp.pids(), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_no_control_plane_process_outlives_its_launcher(how: signal.Signals) -> None:
    proc = subprocess.Popen(  # from the repository's root, where tests.support is found
        [sys.executable, "-c", LAUNCH], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.send_signal(how)
        proc.wait(30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_metrics_report_cache_state_in_prometheus_text(cached) -> None:
    code, headers, body = cached.request("GET", "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert 'watchcache_cache_synced{resource="rayclusters.ray.io"} 1' in text
    assert "watchcache_http_requests_total" in text
