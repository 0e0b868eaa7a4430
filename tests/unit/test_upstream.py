"""The upstream client's connection handling: what a failed connect becomes, and keepalive."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import pytest

from watchcache.upstream.client import Credentials, LineSink, Upstream, UpstreamError


def upstream(port: int = 1) -> Upstream:
    return Upstream(Credentials(f"http://127.0.0.1:{port}", None, lambda: None))


def test_a_connection_closed_before_its_tls_handshake_is_an_upstream_error() -> None:
    """tornado's start_tls refuses a stream the server already closed with a ValueError."""
    client = upstream()

    async def connect(*_: Any, **__: Any) -> None:
        raise ValueError("IOStream is not idle; cannot convert to SSL")

    client._tcp.connect = connect  # type: ignore[method-assign]
    with pytest.raises(UpstreamError, match="not idle"):
        asyncio.run(client.send("DELETE", "/x", LineSink(lambda _: None)))


def test_a_refused_connection_is_an_upstream_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(UpstreamError, match="cannot connect"):
            asyncio.run(upstream(port).send("GET", "/x", LineSink(lambda _: None)))


def test_upstream_sockets_have_tcp_keepalive() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = upstream(listener.getsockname()[1])

        async def options() -> tuple[int, int]:
            stream, _ = await client._connect()
            sock = stream.socket
            try:
                keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            finally:
                stream.close()
            return keepalive, idle

        keepalive, idle = asyncio.run(options())
    assert keepalive == 1
    assert idle == 30


def test_a_tls_handshake_that_never_completes_is_bounded() -> None:
    """A listener that accepts (the kernel does) and never answers the ClientHello."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        creds = Credentials(f"https://127.0.0.1:{port}", ssl.create_default_context(), lambda: None)
        client = Upstream(creds, connect_timeout=0.2)
        with pytest.raises(UpstreamError, match=r"no connection within 0\.2s"):
            asyncio.run(client.send("GET", "/x", LineSink(lambda _: None)))
