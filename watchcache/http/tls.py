"""HTTPS serving: the TLS context, its certificate reloaded from disk, and the accept step.

Two pieces, wired by the server's ``handle_stream``:

- ``ServingCertificate(cert_file, key_file, client_ca_file)`` owns the ``ssl.SSLContext``:
  TLS 1.2 and 1.3 only, forward-secret AEAD suites, ALPN ``http/1.1`` (tornado speaks no
  HTTP/2). ``context()`` returns the context for a new connection, and at most once per
  second looks at the files first: when they changed, a new context is built from them, so a
  rotated certificate (cert-manager, a Secret update) is served to the next connection with
  no restart and no thread. A pair that does not load (a half-written rotation, a key that
  does not match) keeps the last good one in service and is logged once.
- ``accept_tls(stream, ctx, handshake_timeout)`` takes a connection as ``TCPServer`` accepted
  it, before any byte is read, and looks at its first byte without consuming it: a TLS
  record (0x16) is upgraded to an ``SSLIOStream`` and returned once the handshake is done; a
  plain HTTP request gets kube-apiserver's answer (``HTTP/1.0 400 Bad Request``, body
  ``Client sent an HTTP request to an HTTPS server.``) rather than a hang or a reset (Go
  recognizes only GET, HEAD, POST, PUT and OPTIONS and closes on PATCH or DELETE; here any
  first byte that is a letter, as a method's is, gets the answer); anything else is closed.
  Looking and handshaking together are bounded by ``handshake_timeout``, so a client that
  connects and says nothing, or stops mid-handshake, does not hold a descriptor.

Client certificates. With a client CA the server asks for a certificate but does not require
one (``CERT_OPTIONAL``), and, like kube-apiserver, judges it as a credential after the
handshake rather than in it (``clientcerts``): a client without one is anonymous to x509
authentication, one that verifies against the CA is its subject, and one that does not
(another CA, expired, not for client use) completes the handshake and gets a 401 ``Status``
on its request, unless another credential of the request is good. The verdict is reached
once per connection, in ``accept_tls``, and kept on the stream (``JudgedStream``). Where
OpenSSL's callback cannot be reached (see ``clientcerts``), the handshake verifies as
Python's ``ssl`` does and a certificate that does not verify gets a TLS alert instead
(``unknown_ca`` for another CA), logged once at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.netutil import ssl_wrap_socket

from watchcache.http.clientcerts import ClientCAs, ClientCertificate, defer_verification

log = logging.getLogger("watchcache.http.tls")

# kube-apiserver's answer (Go's net/http) to plain HTTP on a TLS port, byte for byte.
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
CHECK_EVERY = 1.0  # seconds between two looks at the certificate files
LINGER_SECONDS, LINGER_BYTES = 1.0, 1 << 20  # reading what follows the 400, see _refuse
_TLS_HANDSHAKE_RECORD = 0x16
# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with AES-GCM or ChaCha20-Poly1305,
# what Go offers by default. TLS 1.3 suites are all AEAD and left to OpenSSL.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_Signature = tuple[tuple[int, int, int] | None, ...]


class ServerContext(ssl.SSLContext):
    """A server context, and the client CA that judges client certificates after the
    handshake (None when there is no client CA, or the handshake verifies them itself)."""

    client_cas: ClientCAs | None = None


class JudgedStream(SSLIOStream):
    """A TLS connection and the verdict on its client certificate (None: it sent none)."""

    client_certificate: ClientCertificate | None = None


def server_context(
    cert_file: str, key_file: str, client_ca_file: str | None = None
) -> ServerContext:
    """A fresh server context from the files; raises ``OSError``/``ssl.SSLError`` when they
    do not load (missing, unparsable, a key that does not match the certificate)."""
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
        | ssl.OP_NO_RENEGOTIATION
    )
    ctx.set_ciphers(CIPHERS)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        # Ask, do not require: a client without a certificate is served (and is anonymous
        # to x509 authentication). What it sends is judged after the handshake.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=client_ca_file)
        if defer_verification(ctx):
            ctx.client_cas = ClientCAs(client_ca_file)
    return ctx


class ServingCertificate:
    """The serving context, rebuilt when the certificate, key or client CA files change.

    Checked on new connections, at most once per ``check_every`` seconds (a ``stat`` of each
    file), so no thread and no cost per request. The first load raises: a server must not
    start with a certificate it cannot serve. A later one that fails is logged once per
    state of the files and the previous context stays in use; a connection always gets a
    context that loaded completely.
    """

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        client_ca_file: str | None = None,
        *,
        check_every: float = CHECK_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.check_every = check_every
        self._clock = clock
        self._loaded = self._signature()
        self._context = server_context(cert_file, key_file, client_ca_file)
        self._failed: _Signature | None = None
        self._checked = clock()
        self.reloads = 0  # successful reloads, for metrics and tests
        self.failures = 0  # changes of the files that did not load

    def context(self) -> ServerContext:
        """The context for a connection being accepted now."""
        now = self._clock()
        if now - self._checked < self.check_every:
            return self._context
        self._checked = now
        signature = self._signature()
        if signature in (self._loaded, self._failed):
            return self._context
        try:
            fresh = server_context(self.cert_file, self.key_file, self.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as err:
            self._failed = signature
            self.failures += 1
            # The reason only (an errno text or OpenSSL's reason code): never file contents.
            reason = getattr(err, "reason", None) or getattr(err, "strerror", None)
            log.warning(
                "TLS: %s changed but do not load (%s: %s); still serving the certificate"
                " loaded before",
                ", ".join(self._paths()),
                type(err).__name__,
                reason or "unreadable",
            )
            return self._context
        self._context, self._loaded, self._failed = fresh, signature, None
        self.reloads += 1
        log.info("TLS: reloaded the serving certificate from %s", self.cert_file)
        return self._context

    def _paths(self) -> list[str]:
        paths = [self.cert_file, self.key_file]
        if self.client_ca_file is not None:
            paths.append(self.client_ca_file)
        return paths

    def _signature(self) -> _Signature:
        """What identifies the files' contents without reading them: a rename (the usual
        atomic rotation, and how a Kubernetes Secret volume updates) changes the inode, an
        in-place write the size or the modification time."""
        out: list[tuple[int, int, int] | None] = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)


async def accept_tls(
    stream: IOStream,
    ctx: ssl.SSLContext | ServingCertificate,
    handshake_timeout: float,
    *,
    make_stream: Callable[[ssl.SSLSocket], JudgedStream] | None = None,
) -> JudgedStream | None:
    """The accepted plain ``stream`` as a ``JudgedStream`` whose handshake is done, ready for
    ``HTTP1ServerConnection``; ``None`` when the connection was answered or dropped instead
    (plain HTTP gets the 400, anything else or a timeout is closed). Never raises for what
    a client does.

    ``stream`` must be as ``TCPServer.handle_stream`` receives it: nothing read, written or
    registered on it yet (no close callback). Afterwards it is no longer used; its socket
    belongs to the returned stream. ``make_stream`` builds that stream from the wrapped
    socket, for a server whose streams are a subclass; by default a plain ``JudgedStream``
    with the same buffer sizes as ``stream``.
    """
    sock = stream.socket
    # One deadline for the first byte and the handshake together.
    deadline = asyncio.get_running_loop().time() + handshake_timeout
    try:
        async with asyncio.timeout_at(deadline):
            first = await _peek(sock)
    except TimeoutError:
        stream.close()
        return None
    except asyncio.CancelledError:  # the server is stopping
        stream.close()
        raise
    if first[:1] != bytes([_TLS_HANDSHAKE_RECORD]):
        if first[:1].isalpha():  # a request line's method: plain HTTP
            await _refuse(stream)
        else:  # nothing (the client closed) or not TLS at all
            stream.close()
        return None
    context = ctx.context() if isinstance(ctx, ServingCertificate) else ctx
    try:
        wrapped = ssl_wrap_socket(sock, context, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError):
        stream.close()
        return None
    if make_stream is None:
        tls = JudgedStream(
            wrapped, max_buffer_size=stream.max_buffer_size, read_chunk_size=stream.read_chunk_size
        )
    else:
        tls = make_stream(wrapped)
    try:
        async with asyncio.timeout_at(deadline):
            await tls.wait_for_handshake()
    except Exception:
        # A failed handshake is logged by tornado (one warning line naming the peer and
        # OpenSSL's reason); a timed-out one only counts as closed.
        tls.close()
        return None
    except asyncio.CancelledError:
        tls.close()
        raise
    tls.client_certificate = judge(wrapped, context)
    return tls


def judge(sock: ssl.SSLSocket, ctx: ssl.SSLContext) -> ClientCertificate | None:
    """The verdict on the client certificate of a connection whose handshake is done."""
    cas = ctx.client_cas if isinstance(ctx, ServerContext) else None
    if cas is not None:
        return cas.judge(sock)
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    # Verified in the handshake (or no client CA, so none was asked for).
    return ClientCertificate(der, sock.getpeercert() or None)


async def _peek(sock: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for the TLS handshake to read;
    ``b""`` when the client closed first."""
    loop = IOLoop.current()
    while True:
        readable: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ready(fd: object, events: int, readable: asyncio.Future[None] = readable) -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_handler(sock, ready, IOLoop.READ | IOLoop.ERROR)
        try:
            await readable
        finally:
            loop.remove_handler(sock)
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue  # woken with nothing to read: wait again
        except OSError:
            return b""  # reset by the client


async def _refuse(stream: IOStream) -> None:
    """Answer plain HTTP as kube-apiserver does, then close without a reset.

    The client's request is still unread in the socket; closing with unread data makes the
    kernel send a reset, which can destroy the answer before the client reads it. So: the
    answer, a FIN, then what the client sends is read and dropped until it closes, bounded
    in time and bytes."""
    try:
        await stream.write(PLAIN_HTTP_ANSWER)
        stream.socket.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_SECONDS):
            drained = 0
            while drained < LINGER_BYTES:
                drained += len(await stream.read_bytes(LINGER_BYTES, partial=True))
    except (StreamClosedError, OSError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(OSError):
            stream.close()
