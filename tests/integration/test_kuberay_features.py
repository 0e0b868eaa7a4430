"""The KubeRay features (issue 6) through watchcache, checked on the real kube-apiserver.

Compute templates and defaults change what a create or replace sends, so each result is read
back straight from kube-apiserver, never through watchcache. Ray events, the KubeRay service
gate and the template list are served from caches fed by watches: objects made directly on
kube-apiserver for those tests are waited for with a resourceVersion the cache must reach,
or polled for with a bound.
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import pytest
import yaml
from kubeio import event, kube_json
from support.controlplane import ControlPlane
from watchclient import WatchStream, is_initial_events_end

if TYPE_CHECKING:
    from conftest import Proxy

T = TypeVar("T")
NS = "wc-kuberay"  # templates and the Ray resources they shape
EVENTS_NS = "wc-kuberay-events"
RAY = "/apis/ray.io/v1"
TEMPLATES = f"/apis/v1/namespaces/{NS}/compute_templates"
LIVE_NS = "wc-kuberay-events-live"  # the live watch test's own, so the lists stay exact


def events_path(namespace: str = EVENTS_NS) -> str:
    return f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"


EVENTS = events_path()
IMAGE = "rayproject/ray:2.46.0"
JSON, YAML = "application/json", "application/yaml"
NOT_ALLOWED = "the server does not allow this method on the requested resource"
TOLERATION = {"key": "ray.io/gpu", "operator": "Exists", "effect": "NoSchedule"}
OWN_TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoSchedule"}
GPU_TEMPLATE: dict[str, Any] = {
    "name": "gpu-small",
    "namespace": NS,
    "cpu": 2,
    "memory": 4,
    "memory_unit": "Gi",
    "gpu": 1,
    "gpu_accelerator": "",
    "extended_resources": {"vpc.amazonaws.com/efa": 1},
    "tolerations": [TOLERATION],
}
PLAIN_TEMPLATE: dict[str, Any] = {
    **GPU_TEMPLATE,
    "name": "cpu-large",
    "cpu": 8,
    "memory": 16,
    "gpu": 0,
    "extended_resources": {},
    "tolerations": [],
}


def poll(fetch: Callable[[], T], done: Callable[[T], bool], *, timeout: float = 15.0) -> T:
    """Calls ``fetch`` until ``done`` holds for its answer; fails with the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        last = fetch()
        if done(last):
            return last
        assert time.monotonic() < deadline, f"still not there after {timeout}s: {last!r}"
        time.sleep(0.05)


def ensure_namespace(cp: ControlPlane, name: str) -> None:
    code, data = cp.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    assert code in (201, 409), data


Answer = tuple[int, dict[str, str], bytes]


def raw(proxy: Proxy, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One request with http.client, which (unlike urllib) never follows a redirect."""
    url = urlsplit(proxy.base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# ---- compute templates ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def templates(cached: Proxy, controlplane: ControlPlane) -> dict[str, dict[str, Any]]:
    """Two templates, created through watchcache's v1 endpoint."""
    ensure_namespace(controlplane, NS)
    out = {}
    for tpl in (GPU_TEMPLATE, PLAIN_TEMPLATE):
        code, body = cached.json("POST", TEMPLATES, tpl)
        assert code == 200, body
        out[tpl["name"]] = body
    return out


def v1_answer(tpl: dict[str, Any]) -> dict[str, Any]:
    """The template as KubeRay's APIServer answers it: lowerCamelCase, empty fields left out."""
    out = {
        "name": tpl["name"],
        "namespace": tpl["namespace"],
        "cpu": tpl["cpu"],
        "memory": tpl["memory"],
        "gpu": tpl["gpu"],
        "gpuAccelerator": tpl["gpu_accelerator"],
        "tolerations": tpl["tolerations"],
        "extendedResources": tpl["extended_resources"],
        "memoryUnit": tpl["memory_unit"],
    }
    return {k: v for k, v in out.items() if v}


def test_template_created_through_v1_endpoint_is_a_labelled_configmap(
    templates: dict[str, dict[str, Any]], controlplane: ControlPlane
) -> None:
    assert templates["gpu-small"] == v1_answer(GPU_TEMPLATE)
    cm = kube_json(controlplane, "GET", f"/api/v1/namespaces/{NS}/configmaps/gpu-small")
    assert cm["metadata"]["labels"] == {
        "ray.io/config-type": "compute-template",
        "ray.io/compute-template": "gpu-small",
    }
    assert cm["data"] == {
        "name": "gpu-small",
        "namespace": NS,
        "cpu": "2",
        "memory": "4",
        "memory_unit": "Gi",
        "gpu": "1",
        "gpu_accelerator": "",
        "extended_resources": '{"vpc.amazonaws.com/efa":1}',
        "tolerations": json.dumps([TOLERATION], separators=(",", ":")),
    }


def test_template_get_and_lists_answer_the_v1_shape(
    cached: Proxy, templates: dict[str, dict[str, Any]]
) -> None:
    code, got = cached.json("GET", f"{TEMPLATES}/gpu-small")
    assert (code, got) == (200, v1_answer(GPU_TEMPLATE))
    for path in (TEMPLATES, "/apis/v1/compute_templates"):
        code, listed = cached.json("GET", path)
        assert code == 200
        assert list(listed) == ["computeTemplates"]
        mine = {t["name"]: t for t in listed["computeTemplates"] if t["namespace"] == NS}
        assert (mine["gpu-small"], mine["cpu-large"]) == (
            v1_answer(GPU_TEMPLATE),
            v1_answer(PLAIN_TEMPLATE),
        )


def test_missing_template_is_404_on_get_and_delete(cached: Proxy, templates: object) -> None:
    for method in ("GET", "DELETE"):
        code, status = cached.json(method, f"{TEMPLATES}/no-such-template")
        assert code == 404, status
        assert set(status) == {"code", "message"} and status["code"] == 5  # gRPC NotFound
        assert "Compute template no-such-template not found" in status["message"]


def test_template_delete_removes_its_configmap(cached: Proxy, controlplane: ControlPlane) -> None:
    ensure_namespace(controlplane, NS)
    code, _ = cached.json("POST", TEMPLATES, {**PLAIN_TEMPLATE, "name": "short-lived"})
    assert code == 200
    code, body = cached.json("DELETE", f"{TEMPLATES}/short-lived")
    assert (code, body) == (200, {})
    code, _ = controlplane.request("GET", f"/api/v1/namespaces/{NS}/configmaps/short-lived")
    assert code == 404
    assert cached.json("GET", f"{TEMPLATES}/short-lived")[0] == 404


def test_template_with_an_existing_name_is_409_already_exists(
    cached: Proxy, templates: object
) -> None:
    code, status = cached.json("POST", TEMPLATES, GPU_TEMPLATE)
    assert code == 409, status
    assert status["code"] == 6  # gRPC AlreadyExists


def test_configmap_labelled_in_kube_is_served_as_a_template(
    cached: Proxy, controlplane: ControlPlane
) -> None:
    ensure_namespace(controlplane, NS)
    data = {"name": "made-by-kubectl", "namespace": NS, "cpu": "1", "memory": "2"}
    kube_json(
        controlplane,
        "POST",
        f"/api/v1/namespaces/{NS}/configmaps",
        {
            "metadata": {
                "name": "made-by-kubectl",
                "labels": {"ray.io/config-type": "compute-template"},
            },
            "data": data,
        },
    )
    _, got = poll(lambda: cached.json("GET", f"{TEMPLATES}/made-by-kubectl"), lambda a: a[0] == 200)
    assert got == {"name": "made-by-kubectl", "namespace": NS, "cpu": 1, "memory": 2}


def group(main: str, template: str | None, **extra: Any) -> dict[str, Any]:
    """A head or worker group: the Ray container, a sidecar, and a toleration of its own."""
    spec: dict[str, Any] = {
        "containers": [
            {"name": main, "image": IMAGE},
            {"name": "log-shipper", "image": "busybox:1.36"},
        ],
        "tolerations": [OWN_TOLERATION],
    }
    out: dict[str, Any] = {"rayStartParams": {}, **extra, "template": {"spec": spec}}
    if template:
        out["computeTemplate"] = template
    return out


def cluster_spec(head: str | None, worker: str | None) -> dict[str, Any]:
    worker_group = group(
        "ray-worker", worker, groupName="small", replicas=1, minReplicas=0, maxReplicas=2
    )
    return {
        "rayVersion": "2.46.0",
        "headGroupSpec": group("ray-head", head),
        "workerGroupSpecs": [worker_group],
    }


KINDS = {"rayclusters": "RayCluster", "rayjobs": "RayJob", "rayservices": "RayService"}


def ray_object(plural: str, name: str, cluster: dict[str, Any]) -> dict[str, Any]:
    """A RayCluster, RayJob or RayService around ``cluster``, where each kind keeps it."""
    if plural == "rayclusters":
        spec = cluster
    elif plural == "rayjobs":
        spec = {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": cluster}
    else:
        spec = {"rayClusterConfig": cluster}
    return {
        "apiVersion": "ray.io/v1",
        "kind": KINDS[plural],
        "metadata": {"name": name},
        "spec": spec,
    }


def stored_cluster(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


def resources(group_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each container's resources, by container name."""
    return {c["name"]: c.get("resources", {}) for c in group_spec["template"]["spec"]["containers"]}


def both(values: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"limits": values, "requests": values}


@pytest.mark.parametrize("content_type", [JSON, YAML])
@pytest.mark.parametrize("plural", list(KINDS))
def test_template_is_applied_to_a_created_ray_resource(
    cached: Proxy,
    controlplane: ControlPlane,
    templates: object,
    plural: str,
    content_type: str,
) -> None:
    name = f"tpl-{plural[3:-1]}-{content_type.split('/')[1]}"
    obj = ray_object(plural, name, cluster_spec(head="cpu-large", worker="gpu-small"))
    body = json.dumps(obj) if content_type == JSON else yaml.safe_dump(obj)
    path = f"{RAY}/namespaces/{NS}/{plural}"
    code, _, answer = cached.request("POST", path, body.encode(), {"Content-Type": content_type})
    assert code == 201, answer

    stored = stored_cluster(kube_json(controlplane, "GET", f"{path}/{name}"))
    head, (worker,) = stored["headGroupSpec"], stored["workerGroupSpecs"]
    assert "computeTemplate" not in head and "computeTemplate" not in worker
    assert head["template"]["metadata"]["annotations"] == {"ray.io/compute-template": "cpu-large"}
    assert worker["template"]["metadata"]["annotations"] == {"ray.io/compute-template": "gpu-small"}
    big = both({"cpu": "8", "memory": "16Gi"})
    assert resources(head) == {"ray-head": big, "log-shipper": big}
    small = {"cpu": "2", "memory": "4Gi"}
    assert resources(worker) == {
        "ray-worker": both({**small, "nvidia.com/gpu": "1", "vpc.amazonaws.com/efa": "1"}),
        "log-shipper": both(small),
    }
    assert head["template"]["spec"]["tolerations"] == [OWN_TOLERATION]
    assert worker["template"]["spec"]["tolerations"] == [OWN_TOLERATION, TOLERATION]


def test_template_is_applied_to_a_replaced_ray_cluster(
    cached: Proxy, controlplane: ControlPlane, templates: object
) -> None:
    path = f"{RAY}/namespaces/{NS}/rayclusters"
    kube_json(
        controlplane, "POST", path, ray_object("rayclusters", "tpl-put", cluster_spec(None, None))
    )
    current = kube_json(controlplane, "GET", f"{path}/tpl-put")
    stored_cluster(current)["workerGroupSpecs"][0]["computeTemplate"] = "gpu-small"
    code, answer = cached.json("PUT", f"{path}/tpl-put", current)
    assert code == 200, answer

    stored = stored_cluster(kube_json(controlplane, "GET", f"{path}/tpl-put"))
    worker = stored["workerGroupSpecs"][0]
    assert "computeTemplate" not in worker
    assert worker["template"]["metadata"]["annotations"]["ray.io/compute-template"] == "gpu-small"
    assert resources(worker)["ray-worker"]["limits"]["nvidia.com/gpu"] == "1"
    assert "resources" not in stored["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("plural", list(KINDS))
def test_unknown_template_is_422_naming_it_and_nothing_is_created(
    cached: Proxy, controlplane: ControlPlane, templates: object, plural: str
) -> None:
    name = f"no-tpl-{plural[3:-1]}"
    obj = ray_object(plural, name, cluster_spec(head=None, worker="no-such-template"))
    path = f"{RAY}/namespaces/{NS}/{plural}"
    code, status = cached.json("POST", path, obj)
    assert code == 422, status
    assert status["kind"] == "Status" and status["reason"] == "Invalid"
    assert '"no-such-template"' in status["message"]
    assert controlplane.request("GET", f"{path}/{name}")[0] == 404


# ---- defaults ------------------------------------------------------------------------------
DEFAULTS = """\
all:
  metadata:
    labels: {team: ray-platform, tier: dev}
    annotations: {example.com/cost-center: research}
rayclusters:
  metadata:
    labels: {tier: clusters}
  spec:
    headGroupSpec:
      rayStartParams: {dashboard-host: 0.0.0.0, num-cpus: "0"}
rayjobs:
  spec: {shutdownAfterJobFinishes: true, ttlSecondsAfterFinished: 600}
image: rayproject/ray:2.46.0
"""


@pytest.fixture(scope="module")
def with_defaults(
    proxy_factory: Callable[..., Proxy],
    controlplane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:
    ensure_namespace(controlplane, NS)
    path = tmp_path_factory.mktemp("defaults") / "defaults.yaml"
    path.write_text(DEFAULTS)
    return proxy_factory("--defaults", str(path))


def test_defaults_fill_what_a_created_cluster_leaves_unset_and_keep_what_it_sets(
    with_defaults: Proxy, controlplane: ControlPlane
) -> None:
    obj = ray_object("rayclusters", "defaulted", cluster_spec(None, None))
    obj["metadata"]["labels"] = {"team": "mine"}
    head = obj["spec"]["headGroupSpec"]
    head["rayStartParams"] = {"num-cpus": "1"}
    del head["template"]["spec"]["containers"][0]["image"]
    path = f"{RAY}/namespaces/{NS}/rayclusters"
    code, _, answer = with_defaults.request(
        "POST", path, yaml.safe_dump(obj).encode(), {"Content-Type": YAML}
    )
    assert code == 201, answer

    stored = kube_json(controlplane, "GET", f"{path}/defaulted")
    assert stored["metadata"]["labels"] == {"team": "mine", "tier": "clusters"}
    assert stored["metadata"]["annotations"] == {"example.com/cost-center": "research"}
    head = stored["spec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "1", "dashboard-host": "0.0.0.0"}
    images = {c["name"]: c["image"] for c in head["template"]["spec"]["containers"]}
    assert images == {"ray-head": IMAGE, "log-shipper": "busybox:1.36"}


def test_defaults_of_one_kind_do_not_reach_another(
    with_defaults: Proxy, controlplane: ControlPlane
) -> None:
    obj = ray_object("rayjobs", "defaulted-job", cluster_spec(None, None))
    obj["spec"]["ttlSecondsAfterFinished"] = 60
    path = f"{RAY}/namespaces/{NS}/rayjobs"
    code, answer = with_defaults.json("POST", path, obj)
    assert code == 201, answer

    stored = kube_json(controlplane, "GET", f"{path}/defaulted-job")
    assert stored["metadata"]["labels"] == {"team": "ray-platform", "tier": "dev"}
    assert stored["spec"]["shutdownAfterJobFinishes"] is True
    assert stored["spec"]["ttlSecondsAfterFinished"] == 60
    assert stored["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"] == {}


# ---- Ray events ----------------------------------------------------------------------------
def create_event(cp: ControlPlane, *args: str, namespace: str = EVENTS_NS) -> int:
    """Creates an event directly on kube-apiserver; returns its resourceVersion."""
    created = kube_json(cp, "POST", events_path(namespace), event(*args, namespace=namespace))
    return int(created["metadata"]["resourceVersion"])


RAY_EVENTS = {"ev-cluster": "c1", "ev-job": "j1", "ev-service": "s1"}


@pytest.fixture(scope="module")
def events(controlplane: ControlPlane) -> int:
    """Ray and other events in one namespace; the version the cache must reach to hold all."""
    ensure_namespace(controlplane, EVENTS_NS)
    create_event(controlplane, "ev-cluster", "ray.io/v1", "RayCluster", "c1")
    create_event(controlplane, "ev-pod", "v1", "Pod", "c1-head")
    create_event(controlplane, "ev-job", "ray.io/v1", "RayJob", "j1")
    create_event(controlplane, "ev-deployment", "apps/v1", "Deployment", "c1")
    create_event(controlplane, "ev-old-ray", "ray.io/v1alpha1", "RayCluster", "c1")
    return create_event(controlplane, "ev-service", "ray.io/v1", "RayService", "s1")


def list_events(proxy: Proxy, path: str, rv: int, field_selector: str = "") -> list[dict[str, Any]]:
    query = {"resourceVersion": str(rv), "resourceVersionMatch": "NotOlderThan"}
    if field_selector:
        query["fieldSelector"] = field_selector
    code, body = proxy.json("GET", f"{path}?{urlencode(query)}")
    assert code == 200, body
    assert body["kind"] == "EventList"
    return body["items"]


def names(items: list[dict[str, Any]]) -> set[str]:
    return {i["metadata"]["name"] for i in items}


def test_event_list_shows_only_events_about_ray_io_v1_objects(cached: Proxy, events: int) -> None:
    assert names(list_events(cached, EVENTS, events)) == set(RAY_EVENTS)
    everywhere = list_events(cached, "/apis/events.k8s.io/v1/events", events)
    assert {i["regarding"]["apiVersion"] for i in everywhere} == {"ray.io/v1"}
    assert set(RAY_EVENTS) <= names(everywhere)


@pytest.mark.parametrize(
    "selector",
    [
        "regarding.apiVersion=v1",
        "regarding.apiVersion=apps/v1",
        "regarding.apiVersion!=ray.io/v1",
        "regarding.kind=Pod",
        "regarding.apiVersion=ray.io/v1alpha1",
    ],
)
def test_event_field_selector_cannot_reveal_other_events(
    cached: Proxy, events: int, selector: str
) -> None:
    assert list_events(cached, EVENTS, events, selector) == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("regarding.name=c1", {"ev-cluster"}),
        ("regarding.kind=RayJob", {"ev-job"}),
        ("regarding.apiVersion=ray.io/v1,regarding.name!=c1", {"ev-job", "ev-service"}),
        ("metadata.name=ev-pod", set()),
    ],
)
def test_event_field_selector_narrows_the_ray_events(
    cached: Proxy, events: int, selector: str, expected: set[str]
) -> None:
    assert names(list_events(cached, EVENTS, events, selector)) == expected


def watch_events(
    proxy: Proxy, rv: int, field_selector: str = "", namespace: str = EVENTS_NS
) -> WatchStream:
    query = {
        "watch": "true",
        "sendInitialEvents": "true",
        "allowWatchBookmarks": "true",
        "resourceVersionMatch": "NotOlderThan",
        "resourceVersion": str(rv),
    }
    if field_selector:
        query["fieldSelector"] = field_selector
    return WatchStream(proxy.base, f"{events_path(namespace)}?{urlencode(query)}")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", set(RAY_EVENTS)),
        ("regarding.apiVersion=v1", set()),
        ("regarding.kind=Pod", set()),
        ("regarding.name=c1", {"ev-cluster"}),
    ],
)
def test_event_watch_starts_with_only_the_ray_events(
    cached: Proxy, events: int, selector: str, expected: set[str]
) -> None:
    with watch_events(cached, events, selector) as stream:
        assert stream.status == 200
        initial = stream.read_until(is_initial_events_end)
    assert {e["type"] for e in initial[:-1]} <= {"ADDED"}
    assert {e["object"]["metadata"]["name"] for e in initial[:-1]} == expected


def test_event_watch_never_sends_an_event_about_another_kind(
    cached: Proxy, controlplane: ControlPlane, events: int
) -> None:
    """A Pod event and then a Ray event about objects of one name, both matching the
    user's selector: the stream shows the Ray one, and nothing before it."""
    ensure_namespace(controlplane, LIVE_NS)
    with watch_events(cached, events, "regarding.name=live", LIVE_NS) as stream:
        stream.read_until(is_initial_events_end)
        create_event(controlplane, "ev-live-pod", "v1", "Pod", "live", namespace=LIVE_NS)
        create_event(
            controlplane, "ev-live-ray", "ray.io/v1", "RayCluster", "live", namespace=LIVE_NS
        )
        seen = stream.read_until(lambda e: e["type"] != "BOOKMARK")
    assert [
        (e["type"], e["object"]["metadata"]["name"]) for e in seen if e["type"] != "BOOKMARK"
    ] == [("ADDED", "ev-live-ray")]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", EVENTS),
        ("PUT", f"{EVENTS}/ev-cluster"),
        ("PATCH", f"{EVENTS}/ev-cluster"),
        ("DELETE", f"{EVENTS}/ev-cluster"),
        ("DELETE", EVENTS),
    ],
)
def test_event_writes_are_405_and_change_nothing(
    cached: Proxy, controlplane: ControlPlane, events: int, method: str, path: str
) -> None:
    body = json.dumps(event("ev-new", "ray.io/v1", "RayCluster", "c1", EVENTS_NS)).encode()
    ctype = "application/merge-patch+json" if method == "PATCH" else JSON
    code, _, answer = cached.request(method, path, body, {"Content-Type": ctype})
    status = json.loads(answer)
    assert code == 405, status
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "MethodNotAllowed", 405)
    assert status["message"] == NOT_ALLOWED
    assert controlplane.request("GET", f"{EVENTS}/ev-cluster")[0] == 200
    assert controlplane.request("GET", f"{EVENTS}/ev-new")[0] == 404


# ---- the Ray dashboard service proxy -------------------------------------------------------
SERVICES = "/api/v1/namespaces/default/services"
DASHBOARD, PLAIN = "wc-ray-dashboard", "wc-plain"
BIG = 2 * 1024 * 1024


class Dashboard(http.server.BaseHTTPRequestHandler):
    """Stands in for a Ray dashboard: echoes what reached it, or sends a large body."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/big":
            payload = b"x" * BIG
        else:
            echo = {"method": self.command, "path": self.path, "body": body.decode()}
            payload = json.dumps(echo).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def reachable_ip() -> str:
    """This host's address on its network: kube-apiserver never proxies to loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the route
        ip = sock.getsockname()[0]
    assert not ip.startswith("127."), "the service proxy test needs a non-loopback address"
    return ip


def proxy_path(service: str, rest: str = "/api/version") -> str:
    return f"{SERVICES}/{quote(service, safe=':')}/proxy{rest}"


def is_gate_refusal(answer: Answer) -> bool:
    """watchcache's own 'not a KubeRay service' answer."""
    code, _, body = answer
    if code != 404:
        return False
    causes = (json.loads(body).get("details") or {}).get("causes") or [{}]
    return causes[0].get("message") == "kuberay service not found"


@pytest.fixture(scope="module")
def services(cached: Proxy, controlplane: ControlPlane) -> Iterator[None]:
    """Two Services in front of one live dashboard: a Pod whose status carries this host's
    address, and Endpoints naming it (no controllers run here to make them). Both Services
    lead to the dashboard; only one has the KubeRay label. The plain one is made first, so
    once the gate lets the labelled one through, its cache has seen the plain one."""
    ip = reachable_ip()
    server = http.server.ThreadingHTTPServer((ip, 0), Dashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pods = "/api/v1/namespaces/default/pods"
    # No controller manager runs here to make the namespace's default ServiceAccount.
    code, data = controlplane.request(
        "POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "default"}}
    )
    assert code in (201, 409), data
    kube_json(
        controlplane,
        "POST",
        pods,
        {
            "metadata": {"name": "wc-dashboard"},
            "spec": {"containers": [{"name": "ray-head", "image": IMAGE}]},
        },
    )
    code, data = controlplane.request(
        "PATCH",
        f"{pods}/wc-dashboard/status",
        {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, data
    for name, labels in ((PLAIN, {}), (DASHBOARD, {"app.kubernetes.io/name": "kuberay"})):
        svc = {
            "metadata": {"name": name, "labels": labels},
            "spec": {"ports": [{"name": "dashboard", "port": 8265, "targetPort": 8265}]},
        }
        created = kube_json(controlplane, "POST", SERVICES, svc)
        assert created["spec"]["clusterIP"].startswith("10.96.")
        address = {
            "ip": ip,
            "targetRef": {"kind": "Pod", "name": "wc-dashboard", "namespace": "default"},
        }
        port = {"name": "dashboard", "port": server.server_address[1]}
        kube_json(
            controlplane,
            "POST",
            "/api/v1/namespaces/default/endpoints",
            {"metadata": {"name": name}, "subsets": [{"addresses": [address], "ports": [port]}]},
        )
    poll(
        lambda: cached.request("GET", proxy_path(f"{DASHBOARD}:8265")),
        lambda a: not is_gate_refusal(a),
    )
    yield
    server.shutdown()
    server.server_close()


def reached_dashboard(answer: Answer) -> dict[str, str]:
    """What the dashboard saw, from an answer that came back through kube-apiserver."""
    code, headers, body = answer
    assert code == 200, (code, body)
    assert "Audit-Id" in headers  # set by kube-apiserver, on the way back
    return json.loads(body)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_service_proxy_reaches_the_dashboard_of_a_kuberay_service(
    cached: Proxy, services: None, method: str
) -> None:
    body = b'{"entrypoint": "echo hi"}' if method in ("POST", "PUT") else None
    path = proxy_path(f"{DASHBOARD}:8265", "/api/jobs/?limit=5")
    seen = reached_dashboard(cached.request(method, path, body, {"Content-Type": JSON}))
    assert seen == {"method": method, "path": "/api/jobs/?limit=5", "body": (body or b"").decode()}


@pytest.mark.parametrize(
    "service", [f"{DASHBOARD}:8265", f"{DASHBOARD}:dashboard", f"http:{DASHBOARD}:8265"]
)
def test_service_proxy_accepts_every_form_of_the_service_part(
    cached: Proxy, services: None, service: str
) -> None:
    assert reached_dashboard(cached.request("GET", proxy_path(service)))["path"] == "/api/version"


def test_service_proxy_without_a_trailing_path_is_not_redirected(
    cached: Proxy, services: None
) -> None:
    answer = raw(cached, "GET", proxy_path(f"{DASHBOARD}:8265", ""))
    assert "Location" not in answer[1]
    assert reached_dashboard(answer)["path"] == "/"


def test_service_proxy_relays_a_large_answer_whole(cached: Proxy, services: None) -> None:
    code, _, body = cached.request("GET", proxy_path(f"{DASHBOARD}:8265", "/big"))
    assert (code, len(body), body.strip(b"x")) == (200, BIG, b"")


@pytest.mark.parametrize("service", [f"{PLAIN}:8265", PLAIN, "wc-no-such-service:8265"])
def test_service_proxy_refuses_a_service_without_the_kuberay_label(
    cached: Proxy, services: None, service: str
) -> None:
    code, headers, body = cached.request("GET", proxy_path(service))
    status = json.loads(body)
    assert code == 404, status
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["details"]["causes"][0]["message"] == "kuberay service not found"
    assert "Audit-Id" not in headers  # answered by watchcache; kube-apiserver never asked


def test_service_proxy_with_a_malformed_service_part_is_400(cached: Proxy) -> None:
    code, status = cached.json("GET", proxy_path("a:b:c:d"))
    assert code == 400, status
    assert status["kind"] == "Status" and status["reason"] == "BadRequest"
    assert "a:b:c:d" in status["message"]


# ---- CORS ----------------------------------------------------------------------------------
ORIGIN = "https://dash.example"


@pytest.fixture(scope="module")
def with_cors(proxy_factory: Callable[..., Proxy]) -> Proxy:
    return proxy_factory("--cors-allow-origin", ORIGIN)


def test_cors_preflight_is_answered_204_with_what_the_browser_may_send(
    with_cors: Proxy,
) -> None:
    code, headers, body = raw(
        with_cors,
        "OPTIONS",
        f"{RAY}/namespaces/{NS}/rayclusters/x",
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert (code, body) == (204, b"")
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "DELETE" in headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")
    assert headers["Access-Control-Allow-Headers"] == "content-type, authorization"


@pytest.mark.parametrize(
    "path",
    [
        f"{RAY}/rayclusters",
        f"{RAY}/namespaces/{NS}/rayclusters/no-such-cluster",
        f"{TEMPLATES}/no-such-template",
        "/apis/not.served/v1/things",
    ],
)
def test_cors_origin_is_on_every_answer(with_cors: Proxy, path: str) -> None:
    _, headers, _ = raw(with_cors, "GET", path, {"Origin": ORIGIN})
    assert headers.get("Access-Control-Allow-Origin") == ORIGIN


def test_cors_origin_is_on_a_watch_stream(with_cors: Proxy) -> None:
    with WatchStream(
        with_cors.base, f"{RAY}/rayclusters?watch=true", headers={"Origin": ORIGIN}
    ) as w:
        assert w.status == 200
        assert w.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_without_cors_flag_no_origin_is_allowed(cached: Proxy) -> None:
    _, headers, _ = raw(cached, "GET", f"{RAY}/rayclusters", {"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in headers
