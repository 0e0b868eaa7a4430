"""The ceiling: a minimal asyncio HTTP/1.1 server that answers every GET with one fixed buffer.

No routing, no parsing beyond counting requests, no JSON: the most that this machine's
loopback and a single Python event loop can serve of the same bytes, under the same wrk load.
Written on ``loop.sock_sendall``, which sends from the buffer in place: a transport's
``write`` would copy what the socket does not take at once into its own buffer, and for a
50 MB body that copying, not the loopback, would be the limit.

    python -m benchmarks.ceiling --port P --body FILE
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

END = b"\r\n\r\n"


def response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(sock: socket.socket, payload: bytes) -> None:
    """Answers each request (its head ends at a blank line; GETs have no body)."""
    loop = asyncio.get_running_loop()
    pending = b""
    try:
        while data := await loop.sock_recv(sock, 65536):
            buf = pending + data
            count = buf.count(END)
            pending = buf[buf.rfind(END) + len(END) :] if count else buf
            for _ in range(count):
                await loop.sock_sendall(sock, payload)
    except OSError:
        pass  # the client went away
    finally:
        sock.close()


async def serve(port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    payload = response(body)
    server = socket.create_server(("127.0.0.1", port), backlog=1024)
    server.setblocking(False)
    print("ready", flush=True)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        sock, _ = await loop.sock_accept(server)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.create_task(_connection(sock, payload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.body.read_bytes()))


if __name__ == "__main__":
    main()
