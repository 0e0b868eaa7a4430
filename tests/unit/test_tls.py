"""HTTPS serving (watchcache.http.tls) on loopback: real clients against a small harness.

The harness is what the server's wiring will be: a ``TCPServer`` whose ``handle_stream``
calls ``accept_tls`` and hands the stream to tornado's HTTP/1.1 connection, serving a
``tornado.web.Application``. It runs on its own event loop in a thread, so the clients here
(curl, urllib, http.client, kubectl, raw sockets) are the ordinary blocking ones. No control
plane: certificates come from the dev-certificate maker, made per test module.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import devcerts
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer
from tornado.web import Application, RequestHandler

from watchcache.http import clientcerts
from watchcache.http.tls import (
    PLAIN_HTTP_ANSWER,
    JudgedStream,
    ServingCertificate,
    accept_tls,
    server_context,
)

# Generous for the clients that do connect, so a loaded machine does not fail them; the
# tests of stalled clients use a server of their own with a short one.
HANDSHAKE_TIMEOUT = 10.0
SHORT_HANDSHAKE_TIMEOUT = 0.3
CLIENT_TIMEOUT = 30.0  # a bound on each blocking client call, so a hang fails the test


# ---- certificates ------------------------------------------------------------------------
@dataclass
class Certs:
    dev: Any  # devcerts.DevCerts: the CA, the serving pair
    rotated: tuple[Path, Path]  # another serving pair under the same CA
    alice: tuple[Path, Path]  # a client of the CA: CN=alice, O=team-a, O=viewers
    stranger: tuple[Path, Path]  # a client certificate from another CA
    other_ca: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    dev = devcerts.ensure(root / "dev")
    rotated = (root / "rotated.crt", root / "rotated.key")
    devcerts.issue(
        dev.ca_file,
        dev.ca_key_file,
        *rotated,
        subject="/CN=watchcache-rotated",
        extensions=["subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"],
        days=2,
    )
    alice = devcerts.client_certificate(dev, "alice", "alice", ["team-a", "viewers"])
    other = devcerts.ensure(root / "other")  # a second, unrelated CA
    stranger = devcerts.client_certificate(other, "stranger", "alice", ["system:masters"])
    return Certs(dev, rotated, alice, stranger, other.ca_file)


# ---- the harness -------------------------------------------------------------------------
class _Context:
    """What tornado's HTTPServerRequest reads from its connection's context."""

    def __init__(self, address: tuple[Any, ...]) -> None:
        self.address = address
        self.remote_ip = address[0]
        self.protocol = "https"

    def __str__(self) -> str:
        return str(self.remote_ip)


class Ok(RequestHandler):
    def get(self) -> None:
        self.write("ok")


class WhoAmI(RequestHandler):
    """The verdict on the client certificate, as x509 authentication reads it: the verified
    subject, or why it did not verify."""

    def get(self) -> None:
        stream = self.request.connection.stream  # type: ignore[union-attr]
        cert = stream.client_certificate
        subject = cert.subject["subject"] if cert and cert.subject else None
        self.write(json.dumps({"subject": subject, "error": cert.error if cert else None}))


class Port(RequestHandler):
    """The client's port as the server sees it: equal for two requests of one connection."""

    def get(self) -> None:
        self.write(str(self.request.connection.context.address[1]))  # type: ignore[union-attr]


class Root(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write('{"paths":["/api","/apis","/version"]}')


class Version(RequestHandler):
    """A /version answer the kubernetes Python client can parse."""

    def get(self) -> None:
        fields = ["buildDate", "compiler", "gitCommit", "gitTreeState", "goVersion", "platform"]
        info = {"major": "1", "minor": "36", "gitVersion": "v1.36.3", **dict.fromkeys(fields, "-")}
        self.write(info)


class StreamType(RequestHandler):
    def get(self) -> None:
        self.write(type(self.request.connection.stream).__name__)  # type: ignore[union-attr]


class OwnStream(JudgedStream):
    """A server's own stream class, as ``make_stream`` builds it."""


class Harness(TCPServer):
    def __init__(
        self,
        tls: ServingCertificate | ssl.SSLContext,
        timeout: float,
        make_stream: Callable[[ssl.SSLSocket], JudgedStream] | None = None,
    ) -> None:
        super().__init__()
        self.tls, self.timeout, self.make_stream = tls, timeout, make_stream
        self.app = Application(
            [
                ("/", Ok),
                ("/whoami", WhoAmI),
                ("/port", Port),
                ("/kube", Root),
                ("/version/?", Version),
                ("/stream", StreamType),
            ]
        )

    async def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        tls = await accept_tls(stream, self.tls, self.timeout, make_stream=self.make_stream)
        if tls is None:
            return
        conn = HTTP1ServerConnection(tls, HTTP1ConnectionParameters(), _Context(address))
        conn.start_serving(self.app)


class Running:
    """The harness on a free loopback port, on an event loop of its own thread."""

    def __init__(
        self,
        tls: ServingCertificate | ssl.SSLContext,
        timeout: float = HANDSHAKE_TIMEOUT,
        make_stream: Callable[[ssl.SSLSocket], JudgedStream] | None = None,
    ) -> None:
        self.tls = tls
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self.server = Harness(tls, timeout, make_stream)
            socks = bind_sockets(0, "127.0.0.1")
            self.port = socks[0].getsockname()[1]
            self.server.add_sockets(socks)

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(CLIENT_TIMEOUT)
        self.url = f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stops listening and cancels the connections still being accepted (accept_tls
        closes their sockets), so no task is left pending when the loop closes."""

        async def halt() -> list[Any]:
            self.server.stop()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            return await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(halt(), self.loop).result(CLIENT_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CLIENT_TIMEOUT)
        self.loop.close()


def run(certs: Certs, timeout: float) -> Iterator[Running]:
    tls = ServingCertificate(
        str(certs.dev.cert_file), str(certs.dev.key_file), str(certs.dev.ca_file)
    )
    running = Running(tls, timeout)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def serving(certs: Certs) -> Iterator[Running]:
    yield from run(certs, HANDSHAKE_TIMEOUT)


@pytest.fixture
def impatient(certs: Certs) -> Iterator[Running]:
    """A server that gives a connection SHORT_HANDSHAKE_TIMEOUT to finish its handshake."""
    yield from run(certs, SHORT_HANDSHAKE_TIMEOUT)


def client_context(certs: Certs, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.dev.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def https(serving: Running, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", serving.port, context=ctx, timeout=CLIENT_TIMEOUT
    )


def whoami(serving: Running, ctx: ssl.SSLContext) -> dict[str, Any]:
    """The /whoami answer (the verdict on the client certificate) over a new connection."""
    conn = https(serving, ctx)
    try:
        conn.request("GET", "/whoami")
        resp = conn.getresponse()
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(resp.read())
        return answer
    finally:
        conn.close()


def raw(serving: Running) -> socket.socket:
    return socket.create_connection(("127.0.0.1", serving.port), timeout=CLIENT_TIMEOUT)


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---- clients that speak TLS --------------------------------------------------------------
def test_curl_over_https_with_the_ca(serving: Running, certs: Certs) -> None:
    assert shutil.which("curl"), "curl is needed for this test"
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(certs.dev.ca_file), "-w", " %{http_version}",
         f"{serving.url}/"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=True,
    )  # fmt: skip
    assert out.stdout == "ok 1.1"  # ALPN: HTTP/1.1 even when curl offers h2
    # and by name: the certificate is for localhost too
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(certs.dev.ca_file), f"https://localhost:{serving.port}/"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=True,
    )  # fmt: skip
    assert out.stdout == "ok"


def test_python_urllib_over_https(serving: Running, certs: Certs) -> None:
    with urllib.request.urlopen(
        f"{serving.url}/", context=client_context(certs), timeout=CLIENT_TIMEOUT
    ) as resp:
        assert resp.status == 200
        assert resp.read() == b"ok"


def test_keep_alive_two_requests_on_one_connection(serving: Running, certs: Certs) -> None:
    conn = https(serving, client_context(certs))
    ports = []
    for _ in range(2):
        conn.request("GET", "/port")
        resp = conn.getresponse()
        assert resp.status == 200
        ports.append(resp.read())
    conn.close()
    assert ports[0] == ports[1]


def test_alpn_is_http11_and_tls_below_12_is_refused(serving: Running, certs: Certs) -> None:
    ctx = client_context(certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with ctx.wrap_socket(raw(serving), server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = client_context(certs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point: an old version
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        old.wrap_socket(raw(serving), server_hostname="127.0.0.1")


def test_the_kubernetes_python_client_over_https(serving: Running, certs: Certs) -> None:
    import kubernetes.client

    config = kubernetes.client.Configuration()
    config.host = serving.url
    config.ssl_ca_cert = str(certs.dev.ca_file)
    with kubernetes.client.ApiClient(config) as api:
        assert kubernetes.client.VersionApi(api).get_code().git_version == "v1.36.3"


def test_a_plain_context_and_a_stream_class_of_the_servers_own(certs: Certs) -> None:
    ctx = server_context(str(certs.dev.cert_file), str(certs.dev.key_file))
    running = Running(ctx, make_stream=lambda sock: OwnStream(sock, max_buffer_size=1 << 20))
    try:
        with urllib.request.urlopen(
            f"{running.url}/stream", context=client_context(certs), timeout=CLIENT_TIMEOUT
        ) as resp:
            assert resp.read() == b"OwnStream"
    finally:
        running.stop()


# ---- client certificates -----------------------------------------------------------------
def test_a_client_certificate_of_the_ca_is_seen_by_the_application(
    serving: Running, certs: Certs
) -> None:
    conn = https(serving, client_context(certs, certs.alice))
    conn.request("GET", "/whoami")
    resp = conn.getresponse()
    assert resp.status == 200
    subject = json.loads(resp.read())["subject"]
    conn.close()
    rdns = [tuple(pair) for rdn in subject for pair in rdn]
    assert ("commonName", "alice") in rdns
    assert [v for k, v in rdns if k == "organizationName"] == ["team-a", "viewers"]


def test_a_client_without_a_certificate_is_served(serving: Running, certs: Certs) -> None:
    conn = https(serving, client_context(certs))
    conn.request("GET", "/whoami")
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read()) == {"subject": None, "error": None}
    conn.close()


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_client_certificate_of_another_ca_is_served_and_judged_untrusted(
    serving: Running, certs: Certs, tls_max: ssl.TLSVersion
) -> None:
    """As kube-apiserver: the handshake completes and the request learns that the
    certificate did not verify (authentication then answers 401); its subject, which names
    system:masters, is never read."""
    ctx = client_context(certs, certs.stranger)
    ctx.maximum_version = tls_max
    assert whoami(serving, ctx) == {
        "subject": None,
        "error": "unable to get local issuer certificate",
    }


def test_a_client_certificate_under_an_intermediate_it_sends_is_verified(
    serving: Running, certs: Certs, tmp_path: Path
) -> None:
    """As Go verifies: the client's own intermediates count, only the CA is trusted."""
    inter = (tmp_path / "intermediate.crt", tmp_path / "intermediate.key")
    devcerts.issue(
        certs.dev.ca_file, certs.dev.ca_key_file, *inter, subject="/CN=intermediate",
        extensions=[], days=2, ca=True,
    )  # fmt: skip
    leaf = (tmp_path / "ivy.crt", tmp_path / "ivy.key")
    devcerts.issue(
        *inter, *leaf, subject="/CN=ivy/O=g1", extensions=["extendedKeyUsage=clientAuth"], days=2
    )
    chain = tmp_path / "ivy-chain.crt"
    chain.write_bytes(leaf[0].read_bytes() + inter[0].read_bytes())
    for cert, verified in ((chain, True), (leaf[0], False)):
        answer = whoami(serving, client_context(certs, (cert, leaf[1])))
        if verified:
            assert answer["error"] is None
            assert [["commonName", "ivy"]] in answer["subject"]
        else:
            assert answer == {"subject": None, "error": "unable to get local issuer certificate"}


def test_an_expired_client_certificate_and_one_for_servers_only_are_judged_untrusted(
    serving: Running, certs: Certs, tmp_path: Path
) -> None:
    expired = (tmp_path / "expired.crt", tmp_path / "expired.key")
    devcerts.issue(
        certs.dev.ca_file, certs.dev.ca_key_file, *expired, subject="/CN=alice",
        extensions=["extendedKeyUsage=clientAuth"], days=-1,
    )  # fmt: skip
    server_only = (tmp_path / "server.crt", tmp_path / "server.key")
    devcerts.issue(
        certs.dev.ca_file, certs.dev.ca_key_file, *server_only, subject="/CN=alice",
        extensions=["extendedKeyUsage=serverAuth"], days=2,
    )  # fmt: skip
    for pair, reason in ((expired, "certificate has expired"),
                         (server_only, "unsuitable certificate purpose")):  # fmt: skip
        assert whoami(serving, client_context(certs, pair)) == {"subject": None, "error": reason}


# ---- clients that do not speak TLS -------------------------------------------------------
def test_plain_http_gets_kube_apiservers_400(serving: Running) -> None:
    for line in (b"GET /api", b"PATCH /apis/ray.io/v1/x", b"DELETE /api/v1/y"):
        with raw(serving) as sock:
            sock.sendall(line + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n")
            assert read_to_eof(sock) == PLAIN_HTTP_ANSWER
    assert PLAIN_HTTP_ANSWER == (
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    )
    plain = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=CLIENT_TIMEOUT)
    plain.request("POST", "/apis", body=b"x" * 100_000)  # a body the server never reads
    resp = plain.getresponse()
    assert (resp.status, resp.read()) == (400, b"Client sent an HTTP request to an HTTPS server.\n")
    plain.close()


def test_plain_http_with_curl(serving: Running) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-w", "%{http_code}", f"http://127.0.0.1:{serving.port}/"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
    )  # fmt: skip
    assert out.stdout == "Client sent an HTTP request to an HTTPS server.\n400"


def test_a_client_that_sends_nothing_is_dropped(impatient: Running) -> None:
    with raw(impatient) as sock:
        assert read_to_eof(sock) == b""  # closed by the server, before CLIENT_TIMEOUT


def test_silent_clients_do_not_hold_up_the_others(serving: Running, certs: Certs) -> None:
    silent = [raw(serving) for _ in range(20)]  # each waits out its own handshake timeout
    try:
        with urllib.request.urlopen(
            f"{serving.url}/", context=client_context(certs), timeout=CLIENT_TIMEOUT
        ) as resp:
            assert resp.read() == b"ok"
    finally:
        for sock in silent:
            sock.close()


def test_a_handshake_that_stops_halfway_is_dropped(impatient: Running) -> None:
    with raw(impatient) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then silence
        assert read_to_eof(sock) == b""


def test_bytes_that_are_neither_tls_nor_http_are_closed(serving: Running) -> None:
    with raw(serving) as sock:
        sock.sendall(b"\x00\xff\x00\xff")
        try:
            answer = read_to_eof(sock)
        except ConnectionResetError:
            answer = b""  # closed with the bytes unread: the kernel resets, as Go's would
        assert answer == b""


def test_a_client_that_closes_at_once_leaves_the_server_serving(
    serving: Running, certs: Certs
) -> None:
    raw(serving).close()
    with urllib.request.urlopen(
        f"{serving.url}/", context=client_context(certs), timeout=CLIENT_TIMEOUT
    ) as resp:
        assert resp.read() == b"ok"


# ---- reloading the certificate -----------------------------------------------------------
def served_common_name(serving: Running, certs: Certs) -> str:
    with client_context(certs).wrap_socket(raw(serving), server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    subject: Any = cert["subject"]
    return str(dict(pair for rdn in subject for pair in rdn)["commonName"])


def test_a_changed_certificate_is_served_to_the_next_connection(
    certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.dev.cert_file, cert)
    shutil.copy(certs.dev.key_file, key)
    tls = ServingCertificate(str(cert), str(key), check_every=0.0)
    running = Running(tls)
    try:
        assert served_common_name(running, certs) == "watchcache"
        # a rotation as a Secret volume or cert-manager does it: new files renamed in
        for src, dst in zip(certs.rotated, (cert, key), strict=True):
            shutil.copy(src, tmp_path / "new")
            os.replace(tmp_path / "new", dst)
        assert served_common_name(running, certs) == "watchcache-rotated"
        assert tls.reloads == 1
        # a broken pair (the first key back under the rotated certificate): not served,
        # the last good one is, and it is said once, without key material
        caplog.set_level(logging.INFO, logger="watchcache.http.tls")
        shutil.copy(certs.dev.key_file, tmp_path / "new")
        os.replace(tmp_path / "new", key)
        for _ in range(3):
            assert served_common_name(running, certs) == "watchcache-rotated"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "KEY_VALUES_MISMATCH" in warnings[0].getMessage()
        assert "PRIVATE KEY" not in caplog.text
        assert key.read_text().splitlines()[1] not in caplog.text
        assert tls.failures == 1
        # the matching key arrives: served from the next connection on
        shutil.copy(certs.rotated[1], tmp_path / "new")
        os.replace(tmp_path / "new", key)
        assert served_common_name(running, certs) == "watchcache-rotated"
        assert tls.reloads == 2
    finally:
        running.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_files_are_looked_at_once_per_interval(certs: Certs, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs.dev.cert_file, cert)
    shutil.copy(certs.dev.key_file, key)
    clock = FakeClock()
    tls = ServingCertificate(str(cert), str(key), clock=clock)
    first = tls.context()
    shutil.copy(certs.rotated[0], cert)
    shutil.copy(certs.rotated[1], key)
    clock.now += 0.5
    assert tls.context() is first  # not looked at yet
    clock.now += 0.6
    assert tls.context() is not first
    assert tls.reloads == 1
    again = tls.context()
    clock.now += 5
    assert tls.context() is again  # unchanged files: the same context, nothing rebuilt


def test_a_certificate_that_does_not_load_at_start_raises(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ServingCertificate(str(tmp_path / "missing.crt"), str(certs.dev.key_file))
    with pytest.raises(ssl.SSLError):
        ServingCertificate(str(certs.rotated[0]), str(certs.dev.key_file))


def test_the_server_context(certs: Certs) -> None:
    ctx = server_context(str(certs.dev.cert_file), str(certs.dev.key_file))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE  # no client CA: no certificate is asked for
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA" in n) for n in tls12)
    with_ca = server_context(
        str(certs.dev.cert_file), str(certs.dev.key_file), str(certs.dev.ca_file)
    )
    assert with_ca.verify_mode == ssl.CERT_OPTIONAL


# ---- the dev certificates ----------------------------------------------------------------
def test_dev_certificates_are_reused_while_valid(tmp_path: Path) -> None:
    first = devcerts.ensure(tmp_path)
    files = [first.ca_file, first.ca_key_file, first.cert_file, first.key_file]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    assert first.key_file.stat().st_mode & 0o077 == 0
    assert first.ca_key_file.stat().st_mode & 0o077 == 0
    second = devcerts.ensure(tmp_path)
    assert second == first
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before
    # a serving certificate too close to its end is made again, under the same CA
    devcerts.ensure(tmp_path, min_days_left=100)  # serving: 90 days; CA: 365
    after = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    assert after[:2] == before[:2]
    assert after[2:] != before[2:]
    # a new host name: a new serving certificate covering it
    devcerts.ensure(tmp_path, hosts=("127.0.0.1", "localhost", "watchcache.local"))
    text = first.cert_file.read_bytes()
    assert b"-----BEGIN CERTIFICATE-----" in text
    listed = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(first.cert_file)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "DNS:watchcache.local" in listed
    how = first.how_to_trust("https://127.0.0.1:4443")
    assert f"--cacert {first.ca_file}" in how
    assert f"certificate-authority: {first.ca_file}" in how
    assert f"REQUESTS_CA_BUNDLE={first.ca_file}" in how


# ---- where OpenSSL's callback cannot be reached ------------------------------------------
def test_the_ssl_ctx_pointer_is_used_only_when_openssl_confirms_it(certs: Certs) -> None:
    lib = clientcerts._lib()
    assert lib is not None
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # verify mode none: not the context asked for
    assert lib.ssl_ctx(plain) is None
    asking = server_context(str(certs.dev.cert_file), str(certs.dev.key_file), str(certs.other_ca))
    assert asking.client_cas is not None


def test_without_openssls_callback_the_handshake_verifies_as_python_does(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(clientcerts, "_lib", lambda: None)
    monkeypatch.setattr(clientcerts, "_unavailable", "no OpenSSL here")
    monkeypatch.setattr(clientcerts, "_warned", False)
    with caplog.at_level(logging.WARNING, "watchcache.http.tls"):
        ctx = server_context(
            str(certs.dev.cert_file), str(certs.dev.key_file), str(certs.dev.ca_file)
        )
    assert ctx.client_cas is None and ctx.verify_mode == ssl.CERT_OPTIONAL
    assert "TLS alert" in caplog.text and "no OpenSSL here" in caplog.text
    running = Running(ServingCertificate(str(certs.dev.cert_file), str(certs.dev.key_file),
                                         str(certs.dev.ca_file)))  # fmt: skip
    try:
        ctx12 = client_context(certs, certs.stranger)
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
            https(running, ctx12).connect()
    finally:
        running.stop()
