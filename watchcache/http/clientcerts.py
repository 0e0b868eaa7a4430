"""Client certificates judged after the TLS handshake, as kube-apiserver judges them.

kube-apiserver asks for a client certificate without verifying it in the handshake (Go's
``RequestClientCert``) and verifies it as a credential: one it does not trust (another CA,
expired, not for client use) is a 401 ``Status``, and a request that also carries a good
token is that token's user. Python's ``ssl`` has no such mode: with ``CERT_OPTIONAL`` it
verifies in the handshake and ends it with an alert; with ``CERT_NONE`` it asks for nothing.
The standard library has no verification callback and no path validation of its own. Both
are OpenSSL's, so this module reaches them with ctypes, in two steps:

- ``defer_verification(ctx)`` replaces the verification callback of the context's
  ``SSL_CTX`` with one that accepts, so every handshake completes. The ``SSL_CTX`` pointer is
  read from CPython's ``SSLContext`` object (its first field); before anything is called on
  it, the pointer must give back this context's verify mode and options through OpenSSL's
  own getters, and the OpenSSL that answers must be the one ``ssl`` is linked to. On any
  doubt nothing is changed and the handshake verifies as before (an alert, logged once).
- ``ClientCAs(cafile).judge(sock)`` then verifies what the client sent with OpenSSL's
  ``X509_verify_cert`` (the client CA as the only trust anchor, the client's intermediates
  as untrusted, purpose SSL client, the current time) and returns a ``ClientCertificate``:
  the subject (``getpeercert()``'s dict) only when verified, otherwise the reason.

Once the callback accepts, ``getpeercert()`` returns an unverified subject as readily as a
verified one; so nothing reads it but ``judge``, which the TLS accept step calls once per
connection, and a request only ever sees its ``ClientCertificate``.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("watchcache.http.tls")

_SSL_VERIFY_PEER = 0x01
_X509_PURPOSE_SSL_CLIENT = 1
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What a connection's client certificate is worth: ``subject`` (``getpeercert()``'s
    dict) and ``der`` when it verified against the client CA; ``error`` (OpenSSL's reason,
    e.g. "unable to get local issuer certificate") when it did not."""

    der: bytes
    subject: dict[str, Any] | None = None
    error: str | None = None


def _accept(preverify_ok: int, store_ctx: int | None) -> int:
    """OpenSSL's verification callback: go on whatever the verdict; ``judge`` decides."""
    return 1


_ACCEPT = _VerifyCallback(_accept)  # kept alive for as long as any context uses it


class _OpenSSL:
    """The functions of the OpenSSL that ``ssl`` uses, typed for ctypes."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(_ssl.__file__)  # its own symbols and those of libssl/libcrypto
        p, i, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64
        self.lib = lib
        sig: dict[str, tuple[Any, list[Any]]] = {
            "OpenSSL_version_num": (ctypes.c_ulong, []),
            "SSL_CTX_set_verify": (None, [p, i, _VerifyCallback]),
            "SSL_CTX_get_verify_mode": (i, [p]),
            "SSL_CTX_get_options": (u64, [p]),
            "X509_STORE_new": (p, []),
            "X509_STORE_free": (None, [p]),
            "X509_STORE_load_locations": (i, [p, ctypes.c_char_p, ctypes.c_char_p]),
            "X509_STORE_CTX_new": (p, []),
            "X509_STORE_CTX_free": (None, [p]),
            "X509_STORE_CTX_init": (i, [p, p, p, p]),
            "X509_STORE_CTX_set_purpose": (i, [p, i]),
            "X509_STORE_CTX_get_error": (i, [p]),
            "X509_verify_cert": (i, [p]),
            "X509_verify_cert_error_string": (ctypes.c_char_p, [ctypes.c_long]),
            "d2i_X509": (p, [p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
            "X509_free": (None, [p]),
            "OPENSSL_sk_new_null": (p, []),
            "OPENSSL_sk_push": (i, [p, p]),
            "OPENSSL_sk_free": (None, [p]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError("the OpenSSL found is not the one ssl uses")

    def ssl_ctx(self, ctx: ssl.SSLContext) -> int | None:
        """The ``SSL_CTX *`` of ``ctx``, or None unless OpenSSL confirms it is that one."""
        if sys.implementation.name != "cpython":
            return None
        # PySSLContext: PyObject_HEAD, then SSL_CTX *ctx.
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr:
            return None
        mode = self.lib.SSL_CTX_get_verify_mode(ptr)
        if mode != _SSL_VERIFY_PEER or self.lib.SSL_CTX_get_options(ptr) != int(ctx.options):
            return None
        return int(ptr)


_openssl: _OpenSSL | None = None
_unavailable: str | None = None  # why OpenSSL's functions could not be reached
_warned = False


def _lib() -> _OpenSSL | None:
    global _openssl, _unavailable
    if _openssl is None and _unavailable is None:
        try:
            _openssl = _OpenSSL()
        except (OSError, AttributeError, ImportError) as exc:
            _unavailable = str(exc) or type(exc).__name__
    return _openssl


def defer_verification(ctx: ssl.SSLContext) -> bool:
    """Lets every handshake of ``ctx`` (``CERT_OPTIONAL``, client CA loaded) complete with
    whatever certificate the client sends; True if done. When it cannot be done here, the
    handshake keeps verifying (a certificate of another CA gets an alert), logged once."""
    global _warned
    lib = _lib()
    ptr = lib.ssl_ctx(ctx) if lib is not None else None
    if lib is None or ptr is None:
        if not _warned:
            log.warning(
                "TLS: client certificates are verified in the handshake (%s): one that does"
                " not verify gets a TLS alert, not a 401",
                _unavailable or "this Python's SSLContext is not understood",
            )
            _warned = True
        return False
    lib.lib.SSL_CTX_set_verify(ptr, _SSL_VERIFY_PEER, _ACCEPT)
    return True


class ClientCAs:
    """The client CA file as an OpenSSL trust store, and the verification of a peer."""

    def __init__(self, cafile: str) -> None:
        lib = _lib()
        if lib is None:
            raise OSError(_unavailable or "OpenSSL is not reachable")
        self._lib = lib
        self._store = lib.lib.X509_STORE_new()
        if not self._store:
            raise MemoryError("X509_STORE_new")
        if lib.lib.X509_STORE_load_locations(self._store, cafile.encode(), None) != 1:
            lib.lib.X509_STORE_free(self._store)
            self._store = None
            raise ssl.SSLError(f"cannot load the client CA file {cafile}")

    def __del__(self) -> None:
        if getattr(self, "_store", None):
            self._lib.lib.X509_STORE_free(self._store)

    def verify(self, leaf: bytes, intermediates: Sequence[bytes] = ()) -> str | None:
        """None when ``leaf`` (DER) chains to the client CA for client use now, otherwise
        OpenSSL's reason."""
        lib = self._lib.lib
        certs: list[int] = []
        stack = store_ctx = None
        try:
            for der in (leaf, *intermediates):
                buf = ctypes.c_char_p(der)
                x509 = lib.d2i_X509(None, ctypes.byref(buf), len(der))
                if not x509:
                    return "unparsable certificate"
                certs.append(x509)
            stack = lib.OPENSSL_sk_new_null()
            for x509 in certs[1:]:
                lib.OPENSSL_sk_push(stack, x509)
            store_ctx = lib.X509_STORE_CTX_new()
            if not stack or not store_ctx:
                return "out of memory"
            if lib.X509_STORE_CTX_init(store_ctx, self._store, certs[0], stack) != 1:
                return "cannot verify"
            lib.X509_STORE_CTX_set_purpose(store_ctx, _X509_PURPOSE_SSL_CLIENT)
            if lib.X509_verify_cert(store_ctx) == 1:
                return None
            reason = lib.X509_verify_cert_error_string(lib.X509_STORE_CTX_get_error(store_ctx))
            return (reason or b"certificate verify failed").decode("ascii", "replace")
        finally:
            if store_ctx:
                lib.X509_STORE_CTX_free(store_ctx)
            if stack:
                lib.OPENSSL_sk_free(stack)  # the certificates are freed below, not by the stack
            for x509 in certs:
                lib.X509_free(x509)

    def judge(self, sock: ssl.SSLSocket | ssl.SSLObject) -> ClientCertificate | None:
        """The client certificate of a connection whose handshake is done, or None when the
        client sent none."""
        der = sock.getpeercert(binary_form=True)
        if not der:
            return None
        intermediates: list[bytes] = []
        chain = getattr(getattr(sock, "_sslobj", sock), "get_unverified_chain", None)
        if chain is not None:
            # On the server side OpenSSL's peer chain may or may not start with the leaf.
            for cert in chain() or ():
                blob = cert.public_bytes(_ssl.ENCODING_DER)
                if blob != der:
                    intermediates.append(blob)
        error = self.verify(der, intermediates)
        if error is not None:
            return ClientCertificate(der, None, error)
        return ClientCertificate(der, sock.getpeercert() or None)
