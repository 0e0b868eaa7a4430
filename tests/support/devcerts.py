"""The dev-certificate maker (deploy/controlplane/devcerts.py), importable here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

DEVCERTS = Path(__file__).resolve().parents[2] / "deploy" / "controlplane" / "devcerts.py"


def _load() -> Any:
    name = "watchcache_devcerts"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEVCERTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


devcerts = _load()
DevCerts = devcerts.DevCerts
ensure = devcerts.ensure
client_certificate = devcerts.client_certificate
new_ca = devcerts.new_ca
issue = devcerts.issue

__all__ = ["DevCerts", "client_certificate", "devcerts", "ensure", "issue", "new_ca"]
