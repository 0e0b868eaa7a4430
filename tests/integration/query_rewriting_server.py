"""A custom server whose middleware narrows every list by changing ``request.query`` in
place; run by test_middleware_query.py like the examples are."""

from __future__ import annotations

import argparse
import asyncio

from watchcache import Server, Settings
from watchcache.middleware import Next, Request, Response


async def only_team_a(request: Request, call_next: Next) -> Response:
    request.query.setdefault("labelSelector", ["team=a"])  # in place, on purpose
    return await call_next(request)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig")
    parser.add_argument("--port", type=int)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    settings = Settings(kubeconfig=args.kubeconfig, port=args.port, cache=not args.no_cache)
    asyncio.run(Server(settings, middleware=[only_team_a]).serve_forever())
