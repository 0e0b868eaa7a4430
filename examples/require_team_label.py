"""A custom watchcache server: Ray resources may only be created with a ``team`` label.

    python examples/require_team_label.py --kubeconfig ~/.kube/config --port 8888

Everything else is stock watchcache (the cache, the KubeRay features); the one middleware
below runs after the built-in ones, so it sees a compute template or defaults already
applied, and answers a create without the label on its own, with a Kubernetes 422 Status
that kubectl and the client libraries show as they show the API server's own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from watchcache import Server, Settings
from watchcache.middleware import Next, Request, Response, StatusError

LABEL = "team"


async def require_team_label(request: Request, call_next: Next) -> Response:
    """Refuses a create of a RayCluster, RayJob or RayService that has no ``team`` label."""
    spec = request.resource
    if request.method == "POST" and spec is not None and spec.group == "ray.io":
        obj = request.json()  # JSON or YAML, as the client sent it
        meta: dict[str, Any] = (obj.get("metadata") or {}) if isinstance(obj, dict) else {}
        if not (meta.get("labels") or {}).get(LABEL):
            name = meta.get("name") or meta.get("generateName") or ""
            why = f"every Ray resource needs a {LABEL!r} label naming the team that owns it"
            raise StatusError(
                422,
                f'{spec.kind}.{spec.group} "{name}" is invalid: '
                f"metadata.labels.{LABEL}: Required value: {why}",
                details={
                    "name": name,
                    "group": spec.group,
                    "kind": spec.kind,
                    "causes": [
                        {
                            "reason": "FieldValueRequired",
                            "message": f"Required value: {why}",
                            "field": f"metadata.labels.{LABEL}",
                        }
                    ],
                },
            )
    return await call_next(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, in-cluster")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    settings = Settings(kubeconfig=args.kubeconfig, port=args.port)
    asyncio.run(Server(settings, middleware=[require_team_label]).serve_forever())


if __name__ == "__main__":
    main()
