"""The upstream pool's bound: at most ``max_connections`` open, waiters served in order, a
bounded wait ending in kube-apiserver's 429, idle connections used before new ones; and
the client-connection limit that the bound leaves (descriptor_cap).

The server here is a real TCP listener on loopback speaking just enough HTTP/1.1 (keep-alive,
a Content-Length body); it stands for no Kubernetes behaviour, only for a peer that holds a
request until told to answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from support.statuses import UPSTREAM_BUSY

from watchcache.config import ServerLimits
from watchcache.http.proxy import Forward
from watchcache.http.serving import FD_RESERVE, descriptor_cap, fit_upstream
from watchcache.kube.status import StatusError
from watchcache.middleware import Request
from watchcache.middleware.core import Headers
from watchcache.upstream import client as upstream_client
from watchcache.upstream.client import (
    Credentials,
    LineSink,
    Response,
    Upstream,
    UpstreamBusy,
)
from watchcache.upstream.retry import RetryPolicy


class Peer:
    """A loopback HTTP/1.1 server: ``/hold/NAME`` answers once ``release(NAME)`` is called,
    any other path at once; ``/close`` answers and closes the connection."""

    def __init__(self) -> None:
        self.accepted = 0
        self.holds: dict[str, asyncio.Event] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    def hang_up(self) -> None:
        """Closes every connection, as a server's idle timeout does: no answer, a FIN."""
        for writer in self.writers:
            writer.close()

    def hold(self, name: str) -> asyncio.Event:
        return self.arrived.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.holds.setdefault(name, asyncio.Event()).set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if path.startswith("/hold/"):
                    name = path.removeprefix("/hold/")
                    self.hold(name).set()
                    await self.holds.setdefault(name, asyncio.Event()).wait()
                body = path.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                if path == "/close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def upstream(self, *, max_connections: int, wait: float) -> Upstream:
        creds = Credentials(f"http://127.0.0.1:{self.port}", None, lambda: None)
        return Upstream(creds, max_connections=max_connections, wait=wait)


@asynccontextmanager
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    p.server = await asyncio.start_server(p.serve, "127.0.0.1", 0)
    p.port = p.server.sockets[0].getsockname()[1]
    try:
        yield p
    finally:
        for event in p.holds.values():
            event.set()
        p.server.close()


async def settle() -> None:
    """Lets every ready callback run (a request reaching its wait, a waiter queueing)."""
    for _ in range(20):
        await asyncio.sleep(0)


def get(client: Upstream, path: str) -> asyncio.Task[Response]:
    return asyncio.ensure_future(client.fetch("GET", path))


def test_the_pool_never_opens_more_than_its_bound_and_a_release_serves_the_waiter() -> None:
    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=2, wait=60.0)
            a, b = get(client, "/hold/a"), get(client, "/hold/b")
            await p.hold("a").wait()
            await p.hold("b").wait()
            c = get(client, "/c")
            await settle()
            assert not c.done() and client.waiting == 1
            assert client.open_connections == 2 and p.accepted == 2
            p.release("a")
            assert (await a).body == b"/hold/a"
            assert (await c).body == b"/c"  # on a's connection, handed over
            assert p.accepted == 2
            p.release("b")
            await b
            assert client.open_connections == 2  # both idle now, still within the bound
            client.close()
            assert client.open_connections == 0

    asyncio.run(run())


def test_waiters_are_served_in_the_order_they_came() -> None:
    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=60.0)
            held = get(client, "/hold/x")
            await p.hold("x").wait()
            done: list[str] = []

            async def one(name: str) -> None:
                await client.fetch("GET", f"/{name}")
                done.append(name)

            waiters = []
            for name in ("first", "second", "third"):
                waiters.append(asyncio.ensure_future(one(name)))
                await settle()  # each queues before the next is made
            assert client.waiting == 3
            p.release("x")
            await held
            await asyncio.gather(*waiters)
            assert done == ["first", "second", "third"]
            assert p.accepted == 1  # one connection, passed from each to the next

    asyncio.run(run())


def test_a_request_that_waits_in_vain_is_refused_and_counted() -> None:
    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=0.05)
            held = get(client, "/hold/x")
            await p.hold("x").wait()
            with pytest.raises(UpstreamBusy, match="too many requests in flight"):
                await client.fetch("GET", "/late")
            assert client.refused == 1 and client.waiting == 0
            assert p.accepted == 1  # nothing was sent for the refused one
            p.release("x")
            await held
            assert (await client.fetch("GET", "/after")).body == b"/after"

    asyncio.run(run())


def test_a_waiter_cancelled_while_waiting_takes_no_slot_with_it() -> None:
    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=60.0)
            held = get(client, "/hold/x")
            await p.hold("x").wait()
            gone = get(client, "/gone")
            await settle()
            gone.cancel()
            await settle()
            assert client.waiting == 0
            p.release("x")
            await held
            assert (await client.fetch("GET", "/next")).body == b"/next"
            assert client.open_connections == 1

    asyncio.run(run())


def test_a_request_cancelled_mid_answer_frees_its_slot() -> None:
    """A reflector's page timing out, a client leaving a forwarded watch: the connection is
    closed, and the waiter gets a new one."""

    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=60.0)
            held = get(client, "/hold/x")
            await p.hold("x").wait()
            waiter = get(client, "/w")
            await settle()
            held.cancel()
            assert (await waiter).body == b"/w"
            assert p.accepted == 2  # the cancelled connection could not be reused
            assert client.open_connections == 1

    asyncio.run(run())


def test_idle_connections_are_reused_before_any_is_opened() -> None:
    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=4, wait=60.0)
            for i in range(5):
                assert (await client.fetch("GET", f"/{i}")).body == f"/{i}".encode()
            assert p.accepted == 1 and client.open_connections == 1

    asyncio.run(run())


def test_an_idle_connection_the_server_closed_is_let_go_and_its_slot_reused() -> None:
    """At the bound, the stale idle connection is tried (and closed) first; its slot then
    opens the fresh one, with no wait and no refusal."""

    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=0.05)
            await client.fetch("GET", "/close")  # answered, then closed without a word
            await settle()
            assert (await client.fetch("GET", "/again")).body == b"/again"
            assert p.accepted == 2 and client.refused == 0
            assert client.open_connections == 1

    asyncio.run(run())


def test_idle_connections_the_server_hung_up_on_are_not_used_however_many() -> None:
    """Two connections left idle, then both closed by the server (kube-apiserver's idle
    timeout): the next request opens a fresh one instead of failing on the second stale one
    after the first (kubectl's discovery got a 503 so after two idle minutes)."""

    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=4, wait=1.0)
            held = [get(client, "/hold/a"), get(client, "/hold/b")]
            await p.hold("a").wait()
            await p.hold("b").wait()
            p.release("a")
            p.release("b")
            await asyncio.gather(*held)
            assert p.accepted == 2 and client.open_connections == 2
            p.hang_up()
            await asyncio.sleep(0.05)  # the FINs arrive
            assert (await client.fetch("GET", "/after")).body == b"/after"
            assert p.accepted == 3 and client.open_connections == 1

    asyncio.run(run())


def test_a_watch_holds_its_connection_for_as_long_as_it_runs() -> None:
    async def run() -> None:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=0.05)
            watch = asyncio.ensure_future(
                client.send("GET", "/hold/watch", LineSink(lambda _: None))
            )
            await p.hold("watch").wait()
            with pytest.raises(UpstreamBusy):
                await client.fetch("GET", "/other")
            p.release("watch")
            await watch

    asyncio.run(run())


def forwarded(path: str) -> Request:
    return Request(method="GET", path=path, query={}, headers=Headers(), target=path)


def test_a_forwarded_request_refused_for_want_of_a_connection_is_kubes_429() -> None:
    """The Status kube-apiserver's max-in-flight filter sends, with Retry-After: 1, and no
    retry of it (the wait was the retry): the peer sees one request only."""

    async def run() -> StatusError:
        async with peer() as p:
            client = p.upstream(max_connections=1, wait=0.05)
            forward = Forward(client, RetryPolicy(), 60.0)
            held = get(client, "/hold/x")
            await p.hold("x").wait()
            with pytest.raises(StatusError) as caught:
                await forward(forwarded("/api/v1/namespaces/default/pods"))
            assert client.refused == 1 and p.accepted == 1
            p.release("x")
            await held
            return caught.value

    err = asyncio.run(run())
    assert err.code == 429 and err.headers == {"Retry-After": "1"}
    assert json.loads(err.body()) == UPSTREAM_BUSY


def test_the_defaults_agree() -> None:
    limits = ServerLimits()
    assert limits.max_upstream_connections == upstream_client.MAX_CONNECTIONS == 1024
    assert limits.upstream_connection_wait == upstream_client.CONNECTION_WAIT


def test_clients_get_what_the_descriptor_limit_leaves_after_the_upstream_bound() -> None:
    # A hard limit of 20,000 with the default pools (1,024 forwarded, 6 reflector feeds and a
    # spare, 64 reviews): 18,841 clients, where half the descriptors allowed 9,968.
    assert descriptor_cap(50_000, 1024 + 7 + 64, soft=20_000) == 20_000 - FD_RESERVE - 1095
    assert descriptor_cap(50_000, 1024 + 7 + 64, soft=20_000) == 18_841
    assert descriptor_cap(2048, 1034, soft=20_000) == 2048  # what was asked, when it fits
    assert descriptor_cap(2048, 1034, soft=1024) == 1  # never below one
    assert descriptor_cap(2048, 2, soft=1024) == 1024 - FD_RESERVE - 2


def test_the_upstream_bound_is_lowered_only_under_a_small_descriptor_limit() -> None:
    """At most half of what the reserve and the other pools leave, so that the clients keep
    the other half: 256 descriptors (tests/hostile) give 60 upstream and 61 clients."""
    assert fit_upstream(1024, 71, soft=20_000) == 1024
    assert fit_upstream(1024, 71, soft=None) == 1024  # no limit to fit
    assert fit_upstream(1024, 71, soft=256) == 60
    assert descriptor_cap(2048, 60 + 71, soft=256) == 61
    assert fit_upstream(1024, 71, soft=64) == 1  # never below one
