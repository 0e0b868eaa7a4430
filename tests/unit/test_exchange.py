"""The exchange on tornado's HTTP layer: a chain run at once, and what Go's server refuses
before any handler (in-process, on a real socket; no Kubernetes behaviour is judged here)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket

from support.inprocess import Client, in_process

from watchcache.http.adapter import eager
from watchcache.middleware import Next, Request, Response

WHO = contextvars.ContextVar("who", default="nobody")


# ---- eager: a coroutine run up to its first wait, then by a task ---------------------------
def test_a_coroutine_that_never_waits_is_done_before_eager_returns() -> None:
    seen: list[str] = []

    async def answer() -> None:
        seen.append("answered")

    async def scenario() -> None:
        assert eager(answer()) is None
        assert seen == ["answered"]

    asyncio.run(scenario())


def test_a_coroutine_that_waits_goes_on_in_a_task_with_what_it_awaited() -> None:
    seen: list[object] = []

    async def answer(first: asyncio.Future[int], second: asyncio.Future[int]) -> None:
        seen.append(await first)
        await asyncio.sleep(0)
        try:
            await second
        except ValueError as exc:
            seen.append(str(exc))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        task = eager(answer(first, second))
        assert task is not None and seen == []
        first.set_result(7)
        await asyncio.sleep(0.01)
        second.set_exception(ValueError("refused"))
        await task
        assert seen == [7, "refused"]

    asyncio.run(scenario())


def test_cancelling_the_task_reaches_the_waiting_coroutine() -> None:
    seen: list[str] = []

    async def answer(never: asyncio.Event) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def scenario() -> None:
        task = eager(answer(asyncio.Event()))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled() and seen == ["cancelled"]

    asyncio.run(scenario())


def test_context_variables_set_in_the_coroutine_stay_in_it() -> None:
    async def answer(later: asyncio.Future[None]) -> None:
        WHO.set("alice")
        await later
        assert WHO.get() == "alice"

    async def scenario() -> None:
        later = asyncio.get_running_loop().create_future()
        task = eager(answer(later))
        assert WHO.get() == "nobody"
        later.set_result(None)
        assert task is not None
        await task
        assert WHO.get() == "nobody"

    asyncio.run(scenario())


# ---- on the socket -----------------------------------------------------------------------
def raw(client: Client, data: bytes) -> bytes:
    """Sends ``data`` on a new connection and reads until the server closes it."""
    host, port = client.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The (status, headers, body) of each answer with a Content-Length, in order."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("Content-Length", "0"))
        out.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def test_an_http11_request_without_one_host_is_a_400_status_as_go_answers() -> None:
    with in_process() as client:
        for head in (
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        ):
            [(code, headers, body)] = answers(raw(client, head))
            assert (code, headers["Content-Type"]) == (400, "application/json"), head
            assert json.loads(body)["reason"] == "BadRequest"
        # HTTP/1.0 needs no Host.
        [(code, _, body)] = answers(raw(client, b"GET /healthz HTTP/1.0\r\n\r\n"))
        assert (code, body) == (200, b"ok")


def test_head_is_the_gets_head_with_its_length_and_no_body() -> None:
    with in_process() as client:
        got = raw(client, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = raw(client, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    get_head, _, body = got.partition(b"\r\n\r\n")
    head_head, _, nothing = head.partition(b"\r\n\r\n")
    assert body == b"ok" and nothing == b""
    assert b"Content-Length: 2" in head_head and b"Content-Length: 2" in get_head


def test_answers_that_wait_and_answers_that_do_not_keep_their_order_on_one_connection() -> None:
    async def slow(request: Request, call_next: Next) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(0.05)
            return Response.json({"slow": True})
        return await call_next(request)

    pipelined = (
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with in_process(middleware=[slow]) as client:
        got = answers(raw(client, pipelined))
    assert [(code, body) for code, _, body in got] == [
        (200, b'{"slow":true}'),
        (200, b"ok"),
        (200, b'{"slow":true}'),
    ]
    assert all("Date" in headers for _, headers, _ in got)
