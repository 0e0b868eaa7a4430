"""The dev-certificate maker (deploy/controlplane/devcerts.py), importable here."""

from __future__ import annotations

from watchcache.cli import load_dev_tool

devcerts = load_dev_tool("devcerts")
DevCerts = devcerts.DevCerts
ensure = devcerts.ensure
client_certificate = devcerts.client_certificate
new_ca = devcerts.new_ca
issue = devcerts.issue

__all__ = ["DevCerts", "client_certificate", "devcerts", "ensure", "issue", "new_ca"]
