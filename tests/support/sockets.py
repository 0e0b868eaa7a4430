"""Raw sockets for tests of clients that misbehave."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def open_unread_watch(base: str, path: str) -> socket.socket:
    """A watch request whose answer's head is read byte by byte, through a tiny receive
    window, and then nothing more: a client that stopped reading."""
    url = urlsplit(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing of the body is taken
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock
