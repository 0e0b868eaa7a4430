"""The small-answer ceiling: a bare Tornado server answering every GET with one fixed body.

One ``tornado.web.Application``, one ``RequestHandler`` that writes the same bytes with the
same content type as watchcache's answer: what Tornado itself costs per request on this
machine, which watchcache (a Tornado server) cannot beat for a small answer. ETag
computation is off, so that the figure is the framework's floor, not a hash of the body.

    python -m benchmarks.tornado_ceiling --port P --body FILE [--content-type T]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import tornado.web


class Fixed(tornado.web.RequestHandler):
    def initialize(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    def compute_etag(self) -> None:
        return None

    def get(self, *_: str) -> None:
        self.set_header("Content-Type", self.content_type)
        self.write(self.body)


async def serve(port: int, body: bytes, content_type: str) -> None:
    app = tornado.web.Application(
        [(r"/.*", Fixed, {"body": body, "content_type": content_type})], log_function=lambda _: None
    )
    app.listen(port, address="127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.body.read_bytes(), args.content_type))


if __name__ == "__main__":
    main()
