"""Many concurrent watchers on one asyncio loop, run as a separate process by the fan-out test.

Usage: ``python fanout.py HOST PORT PATH COUNT``. It opens COUNT watches of PATH, prints
``{"connected": n}`` once every one has its response headers, then reads on. The test then
writes one JSON line to stdin, ``{"expected": [[type, name, rv], ...], "timeout": s}``, and
gets back ``{"complete": k, "watchers": n, "wrong": [...]}``: how many watchers received
exactly the expected changes, in order (bookmarks aside), within the timeout.

A separate process keeps a thousand sockets and their parsing off the test's interpreter,
and the chunked decoding here is written out so that a malformed stream cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys

import orjson

Summary = tuple[str, str, int]


class Watcher:
    def __init__(self) -> None:
        self.changes: list[Summary] = []
        self.error: str | None = None
        self.connected = asyncio.Event()
        self.target: int | None = None  # how many changes are expected, once known
        self.done = asyncio.Event()  # set at the target, or when the stream ends

    async def run(self, host: str, port: int, path: str, gate: asyncio.Semaphore) -> None:
        try:
            async with gate:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Accept: application/json\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status or b"transfer-encoding: chunked" not in head.lower():
                raise RuntimeError(f"unexpected response head: {head[:300]!r}")
            self.connected.set()
            await self._read_chunks(reader)
            writer.close()
        except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.connected.set()
            self.done.set()

    async def _read_chunks(self, reader: asyncio.StreamReader) -> None:
        pending = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return
            pending += data[:-2]
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        event = orjson.loads(line)
        if event["type"] == "BOOKMARK":
            return
        meta = event["object"]["metadata"]
        self.changes.append((event["type"], meta.get("name"), int(meta["resourceVersion"])))
        self.check()

    def check(self) -> None:
        if self.target is not None and len(self.changes) >= self.target:
            self.done.set()


async def main(host: str, port: int, path: str, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gate = asyncio.Semaphore(64)  # connects in flight: stays under the server's listen backlog
    watchers = [Watcher() for _ in range(count)]
    tasks = [asyncio.create_task(w.run(host, port, path, gate)) for w in watchers]
    await asyncio.gather(*(w.connected.wait() for w in watchers))
    errors = [w.error for w in watchers if w.error]
    print(json.dumps({"connected": count - len(errors), "errors": errors[:3]}), flush=True)

    loop = asyncio.get_running_loop()
    order = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    expected = [tuple(e) for e in order["expected"]]
    for w in watchers:
        w.target = len(expected)
        w.check()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watchers)), order["timeout"])
    wrong = [
        {"index": i, "error": w.error, "got": len(w.changes),
         "first_difference": next(
             (j for j, (a, b) in enumerate(zip(w.changes, expected, strict=False)) if a != b),
             None)}
        for i, w in enumerate(watchers) if w.changes != expected
    ]  # fmt: skip
    result = {"watchers": count, "complete": count - len(wrong), "wrong": wrong[:5]}
    print(json.dumps(result), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    host_, port_, path_, count_ = sys.argv[1:5]
    asyncio.run(main(host_, int(port_), path_, int(count_)))
