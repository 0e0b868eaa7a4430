"""The local control plane's launcher (deploy/controlplane/launcher.py), importable here."""

from __future__ import annotations

from watchcache.cli import load_launcher

_launcher = load_launcher()
ControlPlane = _launcher.ControlPlane
User = _launcher.User
free_port = _launcher.free_port
build = _launcher.build
log = _launcher.log

__all__ = ["ControlPlane", "User", "build", "free_port", "log"]
