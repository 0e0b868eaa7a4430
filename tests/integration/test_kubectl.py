"""kubectl with its server set to watchcache prints what it prints against kube-apiserver.

kubectl is built from the same k8s.io/kubernetes module as kube-apiserver. Reads are run
twice on the same objects, through the proxy and straight to kube-apiserver; writes are run
twice on objects that start the same, through the proxy in one namespace and straight to
kube-apiserver in another, each followed at once by a ``get`` on its own side: the proxy's
``get`` must already show the proxy's write (read-your-writes), and every output must match
its direct twin once what must differ is set aside (namespace names, uids, resourceVersions,
timestamps, and the AGE column, whose widths also move the columns after it).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support import population
from support.controlplane import ControlPlane

if TYPE_CHECKING:
    from conftest import Proxy

READ_NS = "wc-kubectl-read"
MARK = "watchcache.test/kubectl"
UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
RESOURCE_VERSION = re.compile(r'(resourceVersion"?:\s*)"\d+"')
AGE = re.compile(r"(?<![\w.-])(\d+[smhdy]){1,2}(?![\w.-])|<unknown>|<invalid>")


def normalise(text: str, namespaces: Sequence[str] = ()) -> str:
    for ns in namespaces:
        text = text.replace(ns, "NS")
    text = UID.sub("UID", text)
    text = TIMESTAMP.sub("TIME", text)
    text = RESOURCE_VERSION.sub(r'\1"RV"', text)
    text = AGE.sub("AGE", text)
    return "\n".join(re.sub(r"[ \t]+", " ", line).rstrip() for line in text.splitlines())


@dataclass(frozen=True)
class Out:
    code: int
    stdout: str
    stderr: str

    def same_as(self, other: Out, namespaces: Sequence[str] = ()) -> tuple[Any, Any]:
        return (
            (self.code, normalise(self.stdout, namespaces), normalise(self.stderr, namespaces)),
            (other.code, normalise(other.stdout, namespaces), normalise(other.stderr, namespaces)),
        )


@dataclass
class Kubectl:
    """kubectl with one kubeconfig (the proxy's or kube-apiserver's) and one HOME (its
    discovery and OpenAPI caches), in one namespace."""

    binary: Path
    kubeconfig: Path
    home: Path
    namespace: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return [str(self.binary), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args]

    def environ(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), **self.env}

    def __call__(self, *args: str) -> Out:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=120, env=self.environ()
        )
        return Out(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str) -> str:
        out = self(*args)
        assert out.code == 0, f"kubectl {' '.join(args)}: {out.stderr}"
        return out.stdout


@pytest.fixture(scope="module")
def kubectl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kubectl-home")


@pytest.fixture(scope="module")
def proxy_kubeconfig(
    controlplane: ControlPlane, cached: Proxy, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("kubeconfig") / "proxy"
    return controlplane.write_kubeconfig(path, controlplane.admin, server=cached.base)


def _namespace(cp: ControlPlane, name: str) -> str:
    population.ensure_namespaces(cp.request, [name])
    return name


@dataclass
class Pair:
    """The same commands, through the proxy (in ``proxy.namespace``) and straight to
    kube-apiserver (in ``kube.namespace``)."""

    proxy: Kubectl
    kube: Kubectl
    tmp: Path

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.proxy.namespace, self.kube.namespace)

    def step(self, write: Sequence[str], *checks: Sequence[str], ok: bool = True) -> list[str]:
        """Runs ``write`` then, at once, each check on the proxy's side, then the same on
        kube-apiserver's; asserts every output matches its twin, and that ``write``
        succeeded (or, ``ok=False``, failed); returns the proxy's outputs."""
        proxy_outs = [self.proxy(*write), *(self.proxy(*c) for c in checks)]
        kube_outs = [self.kube(*write), *(self.kube(*c) for c in checks)]
        for args, mine, theirs in zip([write, *checks], proxy_outs, kube_outs, strict=True):
            got, want = mine.same_as(theirs, self.namespaces)
            assert got == want, f"kubectl {' '.join(args)}"
        assert (proxy_outs[0].code == 0) == ok, proxy_outs[0].stderr
        return [o.stdout for o in proxy_outs]

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
    controlplane: ControlPlane,
    proxy_kubeconfig: Path,
    kubectl_home: Path,
    tmp_path: Path,
) -> Iterator[Pair]:
    """Two fresh namespaces for one test (namespaces are never deleted here: without a
    controller manager a deleted namespace never finishes)."""
    tag = hashlib.blake2b(request.node.name.encode(), digest_size=4).hexdigest()
    proxy_ns = _namespace(controlplane, f"wc-kubectl-{tag}-p")
    kube_ns = _namespace(controlplane, f"wc-kubectl-{tag}-k")
    binary = controlplane.kubectl
    yield Pair(
        Kubectl(binary, proxy_kubeconfig, kubectl_home, proxy_ns),
        Kubectl(binary, controlplane.kubeconfig, kubectl_home, kube_ns),
        tmp_path,
    )
    population.delete_all(controlplane.request, [proxy_ns, kube_ns])


def ray_docs(path: Path) -> str:
    """The Ray objects of a sample file (some samples also carry ConfigMaps, not served)."""
    docs = [
        d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in population.PLURALS
    ]
    return yaml.safe_dump_all(docs)


# ---- reads ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def read_objects(controlplane: ControlPlane, cached: Proxy) -> Iterator[list[dict[str, Any]]]:
    """Objects as the operator leaves them (statuses, labels), in the proxy's cache."""
    plans = population.plan(12, [READ_NS, READ_NS + "-2"], seed=23)
    objects = [population.build(p, controlplane.samples_dir) for p in plans]
    for obj in objects:
        obj["metadata"].setdefault("labels", {})[MARK] = "1"
    stored = population.populate(controlplane.request, objects)
    deadline = time.monotonic() + 30
    for plural in population.PLURALS.values():
        path = f"/apis/ray.io/v1/{plural}?labelSelector={MARK}%3D1"
        want = _versions(controlplane.request("GET", path)[1])
        while _versions(cached.request("GET", path)[2]) != want:
            assert time.monotonic() < deadline, f"the cache did not catch up on {plural}"
            time.sleep(0.05)
    yield stored
    population.delete_all(controlplane.request, [READ_NS, READ_NS + "-2"])


def _versions(body: bytes) -> list[tuple[str, str, str]]:
    meta = [item["metadata"] for item in json.loads(body)["items"]]
    return [(m["namespace"], m["name"], m["resourceVersion"]) for m in meta]


READS = [
    ("get", "rayclusters"),
    ("get", "rayjobs"),
    ("get", "rayservices"),
    ("get", "rayclusters,rayjobs,rayservices"),
    ("get", "rayclusters", "-o", "wide"),
    ("get", "rayclusters", "-o", "yaml"),
    ("get", "rayjobs", "-o", "json"),
    ("get", "rayservices", "-o", "name"),
    ("get", "rayclusters", "-l", "team=ml"),
    ("get", "rayjobs", "-l", "env in (prod,staging),tier"),
    ("get", "rayclusters", "-A", "-l", f"{MARK}=1"),
    ("get", "rayjobs", "-A", "-l", f"{MARK}=1", "-o", "wide"),
    ("get", "rayclusters", "--show-labels"),
    ("get", "rayclusters", "-L", "team,env"),
    ("get", "rayjobs", "--sort-by=.metadata.creationTimestamp"),
    ("get", "rayservices", "-o", "custom-columns=NAME:.metadata.name,STATE:.status.serviceStatus"),
    ("get", "rayclusters", "--chunk-size=2"),
    ("get", "rayclusters", "--no-headers"),
    ("get", "rayclusters", "--field-selector", "metadata.name=nothing-here"),
    ("get", "raycluster", "no-such-cluster"),
]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a) for a in READS])
def test_read_prints_what_kube_apiserver_prints(
    controlplane: ControlPlane,
    proxy_kubeconfig: Path,
    kubectl_home: Path,
    read_objects: list[dict[str, Any]],
    args: tuple[str, ...],
) -> None:
    proxy = Kubectl(controlplane.kubectl, proxy_kubeconfig, kubectl_home, READ_NS)
    kube = Kubectl(controlplane.kubectl, controlplane.kubeconfig, kubectl_home, READ_NS)
    got, want = proxy(*args).same_as(kube(*args))
    assert got == want
    if "no-such-cluster" not in args and "metadata.name=nothing-here" not in args:
        assert want[0] == 0 and want[1], want  # a read that shows something, on both sides


def test_get_of_each_object_prints_what_kube_apiserver_prints(
    controlplane: ControlPlane,
    proxy_kubeconfig: Path,
    kubectl_home: Path,
    read_objects: list[dict[str, Any]],
) -> None:
    for obj in read_objects:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        proxy = Kubectl(controlplane.kubectl, proxy_kubeconfig, kubectl_home, ns)
        kube = Kubectl(controlplane.kubectl, controlplane.kubeconfig, kubectl_home, ns)
        for out in ([], ["-o", "yaml"]):
            args = ("get", obj["kind"].lower(), name, *out)
            got, want = proxy(*args).same_as(kube(*args))
            assert got == want, args


def test_explain_reads_the_served_openapi(
    controlplane: ControlPlane, proxy_kubeconfig: Path, kubectl_home: Path
) -> None:
    proxy = Kubectl(controlplane.kubectl, proxy_kubeconfig, kubectl_home, "default")
    kube = Kubectl(controlplane.kubectl, controlplane.kubeconfig, kubectl_home, "default")
    for args in (("explain", "rayclusters.spec.headGroupSpec"), ("explain", "rayjob.status")):
        got, want = proxy(*args).same_as(kube(*args))
        assert got == want


def test_api_resources_lists_only_what_watchcache_serves(
    controlplane: ControlPlane, proxy_kubeconfig: Path, kubectl_home: Path
) -> None:
    proxy = Kubectl(controlplane.kubectl, proxy_kubeconfig, kubectl_home, "default")
    names = proxy.ok("api-resources", "-o", "name").split()
    assert names == [
        "namespaces",  # get only: kubectl asks for the namespace after a 404 in it
        "events.events.k8s.io",
        "rayclusters.ray.io",
        "rayjobs.ray.io",
        "rayservices.ray.io",
    ]
    assert proxy.ok("api-versions").split() == ["events.k8s.io/v1", "ray.io/v1", "v1"]


# ---- writes --------------------------------------------------------------------------------
def test_create_from_samples_shows_in_the_next_get(pair: Pair, samples: Path) -> None:
    job = pair.file("rayjob.yaml", ray_docs(samples / "ray-job.sample.yaml"))
    for path in (str(samples / "ray-cluster.sample.yaml"), job):
        out = pair.step(("create", "-f", path), ("get", "rayclusters,rayjobs"))
        assert " created" in out[0]
    listed = pair.step(("get", "rayclusters,rayjobs", "-o", "yaml"))[0]
    assert "raycluster-kuberay" in listed and "rayjob-sample" in listed


def test_client_side_apply_creates_then_updates(pair: Pair, samples: Path) -> None:
    sample = (samples / "ray-cluster.complete.yaml").read_text()
    name = yaml.safe_load(sample)["metadata"]["name"]
    first = pair.file("v1.yaml", sample)
    out = pair.step(("apply", "-f", first), ("get", "raycluster", name, "-o", "yaml"))
    assert out[0].strip().endswith("created")
    changed = re.sub(r"rayVersion: .*", "rayVersion: '2.99.0'", sample)
    second = pair.file("v2.yaml", changed)
    out = pair.step(("apply", "-f", second), ("get", "raycluster", name, "-o", "yaml"))
    assert out[0].strip().endswith("configured")
    assert "rayVersion: 2.99.0" in out[1]


def test_server_side_apply_creates_then_updates(pair: Pair, samples: Path) -> None:
    sample = (samples / "ray-service.sample.yaml").read_text()
    name = yaml.safe_load(sample)["metadata"]["name"]
    first = pair.file("v1.yaml", sample)
    checks = ("get", "rayservice", name, "-o", "yaml", "--show-managed-fields")
    out = pair.step(("apply", "--server-side", "-f", first), checks)
    assert "serverside-applied" in out[0]
    doc = yaml.safe_load(sample)
    doc["metadata"].setdefault("labels", {})["applied"] = "twice"
    changed = pair.file("v2.yaml", yaml.safe_dump(doc))
    out = pair.step(("apply", "--server-side", "-f", changed), checks)
    assert "applied: twice" in out[1]


def test_patches_of_each_type_show_in_the_next_get(pair: Pair, samples: Path) -> None:
    pair.step(("create", "-f", str(samples / "ray-cluster.sample.yaml")))
    name = "raycluster-kuberay"
    get = ("get", "raycluster", name, "-o", "jsonpath={.spec.suspend} {.spec.rayVersion}")
    merge = ("patch", "raycluster", name, "--type", "merge", "-p", '{"spec":{"suspend":true}}')
    out = pair.step(merge, get)
    assert out[1].startswith("true ")
    ops = '[{"op":"replace","path":"/spec/rayVersion","value":"2.41.0"}]'
    out = pair.step(("patch", "raycluster", name, "--type", "json", "-p", ops), get)
    assert out[1] == "true 2.41.0"
    bad = '[{"op":"test","path":"/spec/rayVersion","value":"0.0.0"}]'
    pair.step(("patch", "raycluster", name, "--type", "json", "-p", bad), get, ok=False)


def test_label_and_annotate_show_in_the_next_get(pair: Pair, samples: Path) -> None:
    pair.step(("create", "-f", str(samples / "ray-cluster.sample.yaml")))
    name = "raycluster-kuberay"
    out = pair.step(
        ("label", "raycluster", name, "team=ml"), ("get", "rayclusters", "-l", "team=ml")
    )
    assert name in out[1]
    out = pair.step(
        ("annotate", "raycluster", name, "owner=alice"),
        ("get", "raycluster", name, "-o", "jsonpath={.metadata.annotations.owner}"),
    )
    assert out[1] == "alice"
    out = pair.step(("label", "raycluster", name, "team-"), ("get", "rayclusters", "-l", "team"))
    assert name not in out[1]


def test_edit_with_kube_editor_shows_in_the_next_get(pair: Pair, samples: Path) -> None:
    pair.step(("create", "-f", str(samples / "ray-cluster.sample.yaml")))
    editor = pair.file(
        "editor.sh", "#!/bin/sh\nsed -i 's/rayVersion: .*/rayVersion: 2.50.0/' \"$1\"\n"
    )
    os.chmod(editor, 0o755)
    pair.proxy.env["KUBE_EDITOR"] = pair.kube.env["KUBE_EDITOR"] = editor
    out = pair.step(
        ("edit", "raycluster", "raycluster-kuberay"),
        ("get", "raycluster", "raycluster-kuberay", "-o", "jsonpath={.spec.rayVersion}"),
    )
    assert "edited" in out[0] and out[1] == "2.50.0"


def test_delete_is_gone_from_the_next_get(pair: Pair, samples: Path) -> None:
    pair.step(("create", "-f", str(samples / "ray-cluster.sample.yaml")))
    out = pair.step(
        ("delete", "raycluster", "raycluster-kuberay"),
        ("get", "rayclusters"),
        ("get", "raycluster", "raycluster-kuberay"),
    )
    assert "deleted" in out[0] and out[1] == ""


# ---- watch ---------------------------------------------------------------------------------
class Lines:
    """A running kubectl whose output lines are read as they come, each within a bound."""

    def __init__(self, kubectl: Kubectl, *args: str) -> None:
        self.proc = subprocess.Popen(
            kubectl.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=kubectl.environ(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def take(self, n: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(out)} of {n} lines within {timeout}s: {out}"
            try:
                out.append(self.lines.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_watch_prints_the_list_then_each_change(pair: Pair, samples: Path) -> None:
    """``get -w``: the list is rendered from the cache, the watch's Table events come from
    the API server; both sides watch the proxy's namespace and see one write."""
    pair.proxy.ok("create", "-f", str(samples / "ray-cluster.sample.yaml"))
    ns = pair.proxy.namespace
    direct = Kubectl(pair.kube.binary, pair.kube.kubeconfig, pair.kube.home, ns)
    args = ("get", "rayclusters", "-w", "-L", "watched")
    watchers = [Lines(pair.proxy, *args), Lines(direct, *args)]
    try:
        first = [w.take(2) for w in watchers]  # header and the one cluster
        pair.proxy.ok("label", "raycluster", "raycluster-kuberay", "watched=yes")
        then = [w.take(1) for w in watchers]
    finally:
        for w in watchers:
            w.stop()
    proxy_lines, kube_lines = (normalise("".join(f + t)) for f, t in zip(first, then, strict=True))
    assert proxy_lines == kube_lines
    assert proxy_lines.splitlines()[-1].split()[-1] == "yes"
