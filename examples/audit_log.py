"""A custom watchcache server that writes an audit line for every request it answers.

    python examples/audit_log.py --kubeconfig ~/.kube/config --port 8888 [--audit-file F]

Each line is one JSON object: time, method, path, query, user, status and duration, to
stderr or appended to ``--audit-file``. Given first, the middleware is the outermost of the
user's own, so it logs what any later one refuses, with the refusal's status. (The built-in
KubeRay features run before every user middleware: what they answer on their own, a CORS
preflight for one, does not reach it.) A watch is logged when it ends, with the time it
stayed open.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

import orjson

from watchcache import Server, Settings
from watchcache.middleware import Middleware, Next, Request, Response


def audit_log(out: TextIO) -> Middleware:
    """A middleware writing one JSON line per request to ``out``."""

    async def audit(request: Request, call_next: Next) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "method": request.method,
            "path": request.path,
            "query": {k: v[0] if len(v) == 1 else v for k, v in request.query.items()},
            # set by authentication (--authentication), when there is one
            "user": request.user.name if request.user is not None else None,
            "status": response.status,
            "streamed": response.streamed,
            "duration_ms": round(1000 * (time.monotonic() - started), 3),
        }
        out.write(orjson.dumps(line).decode() + "\n")
        out.flush()
        return response

    return audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, in-cluster")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--audit-file", default=None, help="append here instead of stderr")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    out = open(args.audit_file, "a") if args.audit_file else sys.stderr  # noqa: SIM115
    settings = Settings(kubeconfig=args.kubeconfig, port=args.port)
    try:
        asyncio.run(Server(settings, middleware=[audit_log(out)]).serve_forever())
    finally:
        if out is not sys.stderr:
            out.close()


if __name__ == "__main__":
    main()
