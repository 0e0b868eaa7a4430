"""What the container image holds, proven without a container engine.

No engine runs here, so deploy/Dockerfile cannot be built. Instead this module replays its
steps on the host: the build context of three sources, `pip wheel`, an install into a fresh
venv from those wheels alone, pip and setuptools removed, and `watchcache serve` from the
result as uid/gid 65532 with no home, outside the checkout, against the real kube-apiserver.
The steps run are the token lists below, and `test_the_dockerfile_says_the_steps_replayed_here`
checks that the Dockerfile says exactly those, so neither can change without the other.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Proxy
from kubeio import kube_json, small_cluster
from support import population
from support.controlplane import ControlPlane
from watchclient import WatchStream, reached, summary

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"  # its build context's filter

# The build context the Dockerfile copies, and the steps it runs, as tokens. WHEELS is the
# build stage's wheel directory (mounted into the run stage); on the host, a temp folder.
CONTEXT = ("pyproject.toml", "README.md", "watchcache")
WHEELS = "/wheels"
BUILD_WHEELS = ("pip", "wheel", "--no-cache-dir", "--wheel-dir", WHEELS, ".")
INSTALL = ("pip", "install", "--no-cache-dir", "--no-index", "--find-links", WHEELS, "watchcache")
UNINSTALL = ("pip", "uninstall", "--yes", "pip", "setuptools", "wheel")
UID = GID = 65532
HOME = "/nonexistent"  # the Dockerfile's useradd --home-dir, with --no-create-home
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # its ENV line
NOT_SHIPPED = ("tests", "benchmarks", "examples", "deploy")

NS = "wc-image"
API = "/apis/ray.io/v1"
GRACE = 10.0
MERGE = "application/merge-patch+json"


# ---- the Dockerfile, read as Docker reads it -------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """Comments dropped and continuation lines joined, as Docker's parser does."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, f"the Dockerfile ends inside a continued line: {pending!r}"
    return out


def stages(text: str) -> dict[str, list[Instruction]]:
    """Each stage's instructions by its name (`AS name`; the unnamed last one is "run")."""
    found: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else "run"
            current = found.setdefault(name, [])
        elif current is not None:
            current.append(ins)
    return found


def run_commands(ins: Instruction) -> tuple[list[str], list[tuple[str, ...]]]:
    """A RUN's flags (`--mount=...`) and its shell commands joined by `&&`, each as tokens."""
    words = shlex.split(ins.args)
    flags = [w for w in words if w.startswith("--mount=") or w.startswith("--network=")]
    words = words[len(flags) :]
    commands: list[tuple[str, ...]] = [()]
    for word in words:
        if word == "&&":
            commands.append(())
        else:
            commands[-1] = (*commands[-1], word)
    return flags, commands


def test_the_dockerfile_says_the_steps_replayed_here() -> None:
    """The steps the host replays below are the Dockerfile's own: a change to either that is
    not made to the other fails here."""
    found = stages(DOCKERFILE.read_text())
    assert set(found) == {"build", "run"}, found.keys()
    build, final = found["build"], found["run"]

    # The build context: exactly the three sources, each under its own name in WORKDIR.
    assert [i.keyword for i in build if i.keyword in ("COPY", "ADD")] == ["COPY"] * 2, build
    copies = [shlex.split(i.args) for i in build if i.keyword == "COPY"]
    sources = [src for words in copies for src in words[:-1]]
    assert sorted(sources) == sorted(CONTEXT), copies
    for *srcs, dest in copies:
        assert dest == "./" or [dest] == [f"./{s}" for s in srcs], copies
    assert [i for i in final if i.keyword in ("COPY", "ADD")] == [], "the run stage copies nothing"
    # The context itself: everything out but the three (and their __pycache__ out too).
    rules = [r for r in DOCKERIGNORE.read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*" and "**/__pycache__" in rules, rules
    assert sorted(r[1:].rstrip("/") for r in rules if r.startswith("!")) == sorted(CONTEXT)

    build_runs = [cmd for i in build if i.keyword == "RUN" for cmd in run_commands(i)[1]]
    assert build_runs == [BUILD_WHEELS], build_runs

    (install_run,) = [i for i in final if i.keyword == "RUN"]
    flags, commands = run_commands(install_run)
    assert flags == [f"--mount=type=bind,from=build,source={WHEELS},target={WHEELS}"], flags
    assert commands[:2] == [INSTALL, UNINSTALL], commands
    assert ("groupadd", "--system", "--gid", str(GID), "watchcache") in commands
    useradd = next(c for c in commands if c[0] == "useradd")
    for flag, value in (("--uid", str(UID)), ("--gid", str(GID)), ("--home-dir", HOME)):
        assert value == useradd[useradd.index(flag) + 1], useradd
    assert "--no-create-home" in useradd, useradd

    env = next(i for i in final if i.keyword == "ENV")
    assert dict(w.split("=", 1) for w in shlex.split(env.args)) == IMAGE_ENV

    # What the container runs: the last USER, ENTRYPOINT and CMD of the run stage.
    assert [i.args for i in final if i.keyword == "USER"][-1] == f"{UID}:{GID}"
    assert json.loads([i.args for i in final if i.keyword == "ENTRYPOINT"][-1]) == ["watchcache"]
    cmd = json.loads([i.args for i in final if i.keyword == "CMD"][-1])
    assert cmd[0] == "serve", cmd


# ---- the image's steps, on the host -----------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """What the replayed build left: its wheels, the run stage's venv, a folder outside the
    checkout that the image's user owns (its working directory), and a kubeconfig it may read."""

    wheels: Path
    venv: Path
    workdir: Path
    kubeconfig: Path

    def as_user(self) -> dict[str, Any]:
        """Popen arguments that run a command as the image's user would run it."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": HOME, **IMAGE_ENV}
        return {
            "user": UID,
            "group": GID,
            "extra_groups": [],
            "cwd": self.workdir,
            "env": env,
        }


def on_host(step: Sequence[str], wheels: Path) -> list[str]:
    """A Dockerfile step as the host runs it: `python -m pip ...`, the wheel folder moved."""
    return ["-m", *(str(wheels) if word == WHEELS else word for word in step)]


def run(argv: Sequence[str | Path], timeout: float, **kw: Any) -> str:
    """Runs one step, bounded; fails with its output when it fails."""
    proc: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        **kw,
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def runtime_python(workdir: Path) -> str:
    """The interpreter the run stage's venv is made from: this venv's own base when the image's
    user can run it, else the system's of the same version. (A user-installed Python under a
    home folder of mode 0700 cannot be run by uid 65532; the image's python sits in
    /usr/local, readable by everyone, as a system one does.)"""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        str(Path(getattr(sys, "_base_executable", sys.executable)).resolve()),
        f"/usr/local/bin/{version}",
        f"/usr/bin/{version}",
    ]
    tried = []
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            tried.append(f"{candidate}: absent")
            continue
        try:
            proc = subprocess.run(
                [candidate, "-I", "-c", "import venv, ensurepip"],
                capture_output=True,
                text=True,
                timeout=30,
                user=UID,
                group=GID,
                extra_groups=[],
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin"},
                check=False,
            )
        except PermissionError as exc:  # a folder on its path is closed to that user
            tried.append(f"{candidate}: {exc.strerror}")
            continue
        if proc.returncode == 0:
            return candidate
        tried.append(f"{candidate}: {proc.returncode} {proc.stderr.strip()[-200:]}")
    raise AssertionError(f"no {version} that uid {UID} can run: {tried}")


def readable_by_all(top: Path) -> None:
    """o+r on every file, o+x on folders and executables: the image's files are root's too."""
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            extra = stat.S_IROTH
            if path.is_dir() or mode & stat.S_IXUSR:
                extra |= stat.S_IXOTH
            path.chmod(mode | extra)


@pytest.fixture(scope="module")
def image(controlplane: ControlPlane) -> Iterator[Image]:
    """The Dockerfile's two stages replayed in a temp folder (not pytest's: it is 0700 to all
    but root, and the image's user must reach the venv)."""
    top = Path(tempfile.mkdtemp(prefix="watchcache-image-"))
    try:
        top.chmod(0o755)
        context, wheels, venv = top / "src", top / "wheels", top / "venv"
        workdir, kube = top / "work", top / "kube"

        # Build stage: COPY the three sources (no __pycache__: the .dockerignore drops them),
        # then `pip wheel` with the project venv's python and the machine's pip settings
        # (index, find-links), as pip runs anywhere.
        context.mkdir()
        for name in CONTEXT:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, context / name)
        run([sys.executable, *on_host(BUILD_WHEELS, wheels)], timeout=120, cwd=context)

        # Run stage: a fresh venv, installed from those wheels only (no pip configuration of
        # this machine's, no index, no other find-links), then pip and setuptools removed.
        for folder in (workdir, kube):
            folder.mkdir(mode=0o700)
            os.chown(folder, UID, GID)
        base = runtime_python(workdir)
        run([base, "-m", "venv", venv], timeout=120)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        clean["PIP_CONFIG_FILE"] = os.devnull
        python = venv / "bin" / "python"
        run([python, *on_host(INSTALL, wheels)], timeout=120, env=clean, cwd=top)
        run([python, *on_host(UNINSTALL, wheels)], timeout=60, env=clean, cwd=top)
        readable_by_all(venv)

        # The credentials, where only the image's user may read them (mounted, in a pod).
        ca = kube / "ca.crt"
        shutil.copy(controlplane.ca_file, ca)
        kubeconfig = controlplane.write_kubeconfig(
            kube / "kubeconfig", controlplane.admin, ca_file=ca
        )
        for path in (ca, kubeconfig):
            os.chown(path, UID, GID)
            path.chmod(0o400)
        yield Image(wheels, venv, workdir, kubeconfig)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_the_wheel_holds_the_package_alone(image: Image) -> None:
    (wheel,) = image.wheels.glob("watchcache-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"watchcache", dist_info}, sorted(tops)
    assert not [n for n in names if n.split("/")[0] in NOT_SHIPPED], "dev files in the wheel"
    assert "watchcache = watchcache.cli:main" in entry_points, entry_points
    # The dev tools stay out (the control-plane launcher lives in deploy/, loaded from a checkout).
    assert not [n for n in names if "launcher" in n or n.endswith("conftest.py")], names


def test_the_venv_runs_the_installed_package_without_pip(image: Image) -> None:
    """Run as the image's user from its folder: the installed package, not the checkout, and
    nothing of pip, setuptools or wheel left."""
    probe = (
        "import importlib.util, json, sys, watchcache; print(json.dumps({"
        "'file': watchcache.__file__, 'path': sys.path,"
        "'left': [m for m in ('pip', 'setuptools', 'wheel') if importlib.util.find_spec(m)]}))"
    )
    found = json.loads(run([image.venv / "bin" / "python", "-c", probe], 30, **image.as_user()))
    assert Path(found["file"]).is_relative_to(image.venv), found["file"]
    assert not [p for p in found["path"] if p and Path(p).is_relative_to(ROOT)], found["path"]
    assert found["left"] == []
    assert not list(image.venv.glob("bin/pip*"))


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_the_installed_server_serves_as_uid_65532_and_stops_on_sigterm(
    image: Image, controlplane: ControlPlane, proxy_factory: Callable[..., Proxy]
) -> None:
    proxy = proxy_factory(
        "--bind",
        "127.0.0.1",
        "--shutdown-grace",
        str(GRACE),
        command=("serve",),
        executable=str(image.venv / "bin" / "watchcache"),
        kubeconfig=image.kubeconfig,
        **image.as_user(),
    )
    status = proc_status(proxy.proc.pid)
    assert status["Uid"].split() == [str(UID)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(GID)] * 4, status["Gid"]
    assert status["Groups"] == "", status["Groups"]
    assert Path(f"/proc/{proxy.proc.pid}/cwd").resolve() == image.workdir
    code, _, body = proxy.request("GET", "/readyz")
    assert code == 200, body

    population.ensure_namespaces(controlplane.request, [NS])
    collection = f"{API}/namespaces/{NS}/rayclusters"
    path = f"{collection}/image-probe"
    try:
        code, created = proxy.json(
            "POST", collection, small_cluster("image-probe", NS, {"built": "on-host"})
        )
        assert code == 201, created
        code, got = proxy.json("GET", path)
        assert code == 200, got
        assert got == kube_json(controlplane, "GET", path)

        selected = collection + "?labelSelector=" + urllib.parse.quote("built=on-host")
        code, listed = proxy.json("GET", selected)
        assert code == 200, listed
        want = kube_json(controlplane, "GET", selected)
        assert listed["kind"] == want["kind"] == "RayClusterList"
        assert listed["items"] == want["items"]
        assert [i["metadata"]["name"] for i in listed["items"]] == ["image-probe"]

        rv = created["metadata"]["resourceVersion"]
        watch_path = f"{selected}&watch=true&resourceVersion={rv}"
        with WatchStream(proxy.base, watch_path) as watch:
            assert watch.status == 200
            patch = json.dumps({"metadata": {"annotations": {"image": "patched"}}}).encode()
            code, _, body = proxy.request("PATCH", path, patch, {"Content-Type": MERGE})
            assert code == 200, body
            patched = json.loads(body)
            events = watch.read_until(reached(int(patched["metadata"]["resourceVersion"])))
            assert [summary(e)[:2] for e in events if e["type"] != "BOOKMARK"] == [
                ("MODIFIED", "image-probe")
            ]
            assert events[-1]["object"] == kube_json(controlplane, "GET", path)

            # SIGTERM with the watch still open: the watch ends, the process exits 0.
            proxy.proc.send_signal(signal.SIGTERM)
            assert proxy.proc.wait(GRACE + 30) == 0, proxy.log()[-3000:]
            watch.read_to_end(timeout=30)
            assert watch.clean_end, watch.error  # the closing chunk, not a cut-off stream
        assert "Traceback" not in proxy.log(), proxy.log()[-3000:]
    finally:
        population.delete_all(controlplane.request, [NS])
