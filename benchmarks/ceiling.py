"""The ceiling: a minimal asyncio HTTP/1.1 server that answers every GET with one fixed buffer.

No routing, no parsing beyond counting requests, no JSON: the most that this machine's
loopback and a single Python event loop can serve of the same bytes, under the same wrk load.

    python -m benchmarks.ceiling --port P --body FILE
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


class FixedResponse(asyncio.Protocol):
    """Answers each request (its head ends at a blank line; GETs have no body) with ``payload``."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.pending = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data
        count = buf.count(b"\r\n\r\n")
        self.pending = buf[buf.rfind(b"\r\n\r\n") + 4 :] if count else buf
        assert self.transport is not None
        for _ in range(count):
            self.transport.write(self.payload)


def response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def serve(port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    payload = response(body)
    server = await loop.create_server(lambda: FixedResponse(payload), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.body.read_bytes()))


if __name__ == "__main__":
    main()
