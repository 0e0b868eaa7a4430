"""A feature of its own: cache the Pods of Ray clusters and serve their names on /ray/pods.

It declares what it needs (a cached resource, an endpoint of its own built from the
server's context) as the built-in KubeRay features do, and runs next to them. The endpoint
runs inside the middleware chain like every other: CORS and authentication apply to it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from watchcache import ResourceSpec, Server, Settings
from watchcache.middleware import Endpoint, Request, Response
from watchcache.middleware.features import Feature, FeatureContext, builtin_features

# Only Pods that KubeRay labels as part of a cluster; cached, not served as a resource.
PODS = ResourceSpec(
    group="", version="v1", plural="pods", kind="Pod", label_selector="ray.io/cluster", served=False
)


def ray_pods(ctx: FeatureContext) -> Sequence[tuple[str, Endpoint]]:
    pods = ctx.store(PODS)  # kept current by its own watch

    async def clusters(request: Request) -> Response:
        by_cluster: dict[str, list[str]] = {}
        for entry in pods.entries():
            by_cluster.setdefault(entry.labels["ray.io/cluster"], []).append(entry.name)
        return Response.json({"clusters": by_cluster})

    return [(r"/ray/pods", clusters)]


async def serve(settings: Settings) -> None:
    mine = Feature(name="ray-pods", resources=(PODS,), endpoints=ray_pods)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with Server(settings, features=[*builtin_features(settings), mine]):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, in-cluster")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    asyncio.run(serve(Settings(kubeconfig=args.kubeconfig, port=args.port)))


if __name__ == "__main__":
    main()
