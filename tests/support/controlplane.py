"""The local control plane's launcher (deploy/controlplane/launcher.py), importable here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "deploy" / "controlplane" / "launcher.py"


def _load() -> object:
    name = "watchcache_launcher"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec is not None and spec.loader is not None, _PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


_launcher = _load()
ControlPlane = _launcher.ControlPlane  # type: ignore[attr-defined]
User = _launcher.User  # type: ignore[attr-defined]
free_port = _launcher.free_port  # type: ignore[attr-defined]
build = _launcher.build  # type: ignore[attr-defined]
log = _launcher.log  # type: ignore[attr-defined]

__all__ = ["ControlPlane", "User", "build", "free_port", "log"]
