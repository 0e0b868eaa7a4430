"""``?watch=true`` over WebSocket, as kube-apiserver serves it.

The API server answers a watch that asks to upgrade (``Upgrade: websocket`` and a
``Connection`` header naming ``upgrade``) with golang.org/x/net/websocket's handshake, after
the query has been parsed and checked; its refusals are that library's:

- no ``Sec-WebSocket-Key``: 400; a ``Sec-WebSocket-Version`` other than 13: 400 (with
  ``Sec-WebSocket-Version: 13``); no ``Origin``, or one that is no URI: 403; more than one
  subprotocol offered: 400 (it picks none). One subprotocol offered is echoed back,
  whatever it is (``base64.binary.k8s.io``, ``binary.k8s.io``, ``v4.channel.k8s.io``...).

Then each event is one text message (the JSON line, newline included), what the client sends
is read and ignored (a ping is answered), and the watch ends with a close frame (1000) when
it times out or the client closes. The refusals here carry a ``Status`` body, where the
library writes bare text; the codes are its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tornado import iostream

from watchcache.kube.status import StatusError
from watchcache.middleware.core import Headers, Request, Writer

if TYPE_CHECKING:
    from watchcache.cache.hub import Watcher

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ORIGIN = re.compile(r"^(/|[A-Za-z][A-Za-z0-9+.-]*:)[^\x00-\x20\x7f]*$")
MAX_CLIENT_FRAME = 1 << 20  # what a client may send in one frame (it should send nothing)


def is_websocket(request: Request) -> bool:
    """wsstream.IsWebSocketRequest."""
    headers = request.headers
    upgrade = (headers.get("Upgrade") or "").lower() == "websocket"
    return upgrade and any("upgrade" in v.lower() for v in headers.get_list("Connection"))


def handshake(request: Request) -> Handshake | None:
    """None for a plain watch; the upgrade to serve for a WebSocket one; raises the
    handshake's refusal as a StatusError."""
    if not is_websocket(request):
        return None
    headers = request.headers
    key = headers.get("Sec-WebSocket-Key")
    if not key:
        raise StatusError(400, "mismatch challenge/response")
    if headers.get("Sec-WebSocket-Version") != "13":
        raise StatusError(
            400, "missing or bad WebSocket Version", headers={"Sec-WebSocket-Version": "13"}
        )
    offered = (headers.get("Sec-WebSocket-Protocol") or "").strip()
    protocols = [p.strip() for p in offered.split(",")] if offered else []
    if not _ORIGIN.match(headers.get("Origin") or ""):
        raise StatusError(403, "the WebSocket handshake needs an Origin that is a URI")
    if len(protocols) > 1:
        raise StatusError(400, "more than one WebSocket subprotocol offered")
    return Handshake(key, protocols[0] if protocols else None)


class Handshake:
    """An accepted upgrade: the 101's headers, and the writer once the connection is ours."""

    def __init__(self, key: str, protocol: str | None) -> None:
        self.key = key
        self.protocol = protocol

    def headers(self) -> Headers:
        accept = base64.b64encode(hashlib.sha1(self.key.encode() + _GUID).digest()).decode()
        headers = Headers(
            {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}
        )
        if self.protocol:
            headers["Sec-WebSocket-Protocol"] = self.protocol
        return headers

    def accept(self, out: Writer, watcher: Watcher | None) -> WebSocketWriter:
        """Sends the 101 and takes the connection over from tornado (no await in between:
        the stream is ours before tornado's loop can read from it again)."""
        return WebSocketWriter(out.upgrade(), watcher)


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def _messages(data: bytes) -> bytes:
    """Event lines as text messages, one a line, the newline kept (as the API server sends)."""
    return b"".join(_frame(0x1, line + b"\n") for line in data.split(b"\n")[:-1])


class WebSocketWriter:
    """The watch's writer once upgraded: the same ``try_write``/``write`` as the HTTP body
    writer, and ``end`` to close."""

    def __init__(self, stream: iostream.IOStream, watcher: Watcher | None) -> None:
        self.stream = stream
        self.busy = False
        self.watcher = watcher
        self.pending: asyncio.Future[None] | None = None
        if watcher is not None:
            watcher.on_overflow = stream.close
        self.reader: asyncio.Task[None] | None = asyncio.ensure_future(self.read(watcher))

    async def read(self, watcher: Watcher | None) -> None:
        """Reads the client's frames and drops them; a close or a lost connection ends the
        watch."""
        stream = self.stream
        try:
            while True:
                head = await stream.read_bytes(2)
                opcode, size = head[0] & 0x0F, head[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await stream.read_bytes(2), "big")
                elif size == 127:
                    size = int.from_bytes(await stream.read_bytes(8), "big")
                if size > MAX_CLIENT_FRAME:
                    break
                mask = await stream.read_bytes(4) if head[1] & 0x80 else b""
                payload = await stream.read_bytes(size) if size else b""
                if opcode == 0x8:
                    break
                if opcode == 0x9 and mask:  # ping: answer with its payload
                    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    stream.write(_frame(0xA, data)).add_done_callback(_ignore)
        except iostream.StreamClosedError:
            pass
        if watcher is not None:
            watcher.end()

    def try_write(self, frames: Sequence[bytes]) -> bool:
        """The fast path, as the HTTP writer's: only onto an idle stream; a write the socket
        does not take at once is left for ``settle`` to bound."""
        stream = self.stream
        if self.busy or stream.closed() or stream.writing():
            return False
        done = stream.write(_messages(b"".join(frames)))
        done.add_done_callback(_ignore)
        if not done.done():
            self.pending = done
            if self.watcher is not None:
                self.watcher.poke()
        return True

    async def settle(self, stall: float) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not pending.done():
            await asyncio.wait_for(asyncio.shield(pending), stall)

    async def write(self, pieces: Sequence[bytes], stall: float) -> None:
        self.busy = True
        try:
            await asyncio.wait_for(self.stream.write(_messages(b"".join(pieces))), stall)
        finally:
            self.busy = False

    def abort(self) -> None:
        """Drops the connection (a client that stopped reading gets no close frame)."""
        self.stream.close()

    async def end(self) -> None:
        """The close frame (1000, normal closure), then the connection."""
        stream = self.stream
        if stream.closed():
            return
        with contextlib.suppress(iostream.StreamClosedError):
            await stream.write(_frame(0x8, (1000).to_bytes(2, "big")))
        stream.close()
        if self.reader is not None:
            self.reader.cancel()


def _ignore(future: object) -> None:
    future.exception()  # type: ignore[attr-defined]
