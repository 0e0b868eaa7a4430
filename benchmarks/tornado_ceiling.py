"""The small-answer ceiling: a bare Tornado server answering every GET with one fixed body.

``--layer web`` (the default, the ceiling of scenario 12's goals): one
``tornado.web.Application`` and one ``RequestHandler`` that writes the same bytes with the
same content type as watchcache's answer: what a Tornado application costs per request on
this machine. ETag computation is off, so that the figure is the framework's, not a hash
of the body.

``--layer http``: Tornado's HTTP/1.1 layer alone (an ``HTTPMessageDelegate`` writing the
fixed answer through the connection), with no ``tornado.web`` above it: the layer watchcache
itself is built on, and so the floor of what any Tornado server can cost for these bytes.

    python -m benchmarks.tornado_ceiling --port P --body FILE [--content-type T] [--layer L]
"""

from __future__ import annotations

import argparse
import asyncio
from email.utils import formatdate
from pathlib import Path

import tornado.web
from tornado import httputil
from tornado.httpserver import HTTPServer


class Fixed(tornado.web.RequestHandler):
    def initialize(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    def compute_etag(self) -> None:
        return None

    def get(self, *_: str) -> None:
        self.set_header("Content-Type", self.content_type)
        self.write(self.body)


class FixedAnswer(httputil.HTTPMessageDelegate):
    """One request on Tornado's HTTP layer: the fixed answer once the request is in."""

    def __init__(self, conn: httputil.HTTPConnection, body: bytes, content_type: str) -> None:
        self.conn = conn
        self.body = body
        self.content_type = content_type

    def finish(self) -> None:
        headers = httputil.HTTPHeaders()
        headers["Date"] = formatdate(usegmt=True)
        headers["Content-Type"] = self.content_type
        headers["Content-Length"] = str(len(self.body))
        start = httputil.ResponseStartLine("", 200, "OK")
        self.conn.write_headers(start, headers, self.body)
        self.conn.finish()


class FixedServer(httputil.HTTPServerConnectionDelegate):
    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return FixedAnswer(request_conn, self.body, self.content_type)


async def serve(port: int, body: bytes, content_type: str, layer: str) -> None:
    if layer == "http":
        HTTPServer(FixedServer(body, content_type)).listen(port, address="127.0.0.1")
    else:
        app = tornado.web.Application(
            [(r"/.*", Fixed, {"body": body, "content_type": content_type})],
            log_function=lambda _: None,
        )
        app.listen(port, address="127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--layer", choices=("web", "http"), default="web")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.body.read_bytes(), args.content_type, args.layer))


if __name__ == "__main__":
    main()
