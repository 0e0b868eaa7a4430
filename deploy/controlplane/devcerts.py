"""Dev-only certificates: a local CA and a serving certificate for 127.0.0.1 and localhost.

``watchcache dev --tls`` needs a certificate that curl, kubectl and the Python client can be
told to trust with one flag, without touching the system's trust store. ``ensure(directory)``
makes a CA and a serving certificate signed by it with ``openssl`` (as the launcher does for
the control plane), and reuses both while they are valid for long enough: the CA stays the
same across runs, so a client configured to trust it once keeps working. Not in the package:
a production server is given its certificate, it never makes one.

Run it as a script to get the files and the instructions: ``python devcerts.py DIR``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 365
SERVING_DAYS = 90
MIN_DAYS_LEFT = 7  # a certificate expiring sooner than this is made again
HOSTS = ("127.0.0.1", "localhost")
DEFAULT_URL = "https://127.0.0.1:31888"
# P-256: fast to make, and accepted by Go (kubectl), curl's OpenSSL and Python.
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class DevCerts:
    """Where the files are; ``ca_key_file`` stays next to them to re-issue the serving
    certificate (and client certificates) under the same CA."""

    directory: Path
    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path

    def how_to_trust(self, url: str = DEFAULT_URL) -> str:
        """One paragraph: how each kind of client is told to trust this CA (and only it)."""
        return (
            f"The server's certificate is signed by a local development CA, {self.ca_file}; "
            "trust that file, not the system store, in each client: "
            f"`curl --cacert {self.ca_file} {url}/version`; for kubectl, a cluster entry with "
            f"`server: {url}` and `certificate-authority: {self.ca_file}` (or "
            f"`kubectl --server {url} --certificate-authority {self.ca_file} ...`); for Python, "
            f"`REQUESTS_CA_BUNDLE={self.ca_file}` (requests), "
            f"`ssl.create_default_context(cafile='{self.ca_file}')` (urllib, http.client), or "
            f"`ssl_ca_cert` = {self.ca_file} in the kubernetes client's Configuration."
        )


def ensure(
    directory: Path | str,
    *,
    hosts: Sequence[str] = HOSTS,
    min_days_left: int = MIN_DAYS_LEFT,
) -> DevCerts:
    """The CA and serving certificate in ``directory``, made or re-made only when missing,
    broken, expiring within ``min_days_left`` days, or not covering ``hosts``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    certs = DevCerts(d, d / "ca.crt", d / "ca.key", d / "serving.crt", d / "serving.key")
    left = min_days_left * 86400
    if not (_valid_for(certs.ca_file, left) and _key_matches(certs.ca_file, certs.ca_key_file)):
        new_ca(certs.ca_file, certs.ca_key_file, "watchcache-dev-ca")
    if not (
        _valid_for(certs.cert_file, left)
        and _key_matches(certs.cert_file, certs.key_file)
        and _signed_by(certs.cert_file, certs.ca_file)
        and _covers(certs.cert_file, hosts)
    ):
        issue(
            certs.ca_file,
            certs.ca_key_file,
            certs.cert_file,
            certs.key_file,
            subject="/CN=watchcache",
            extensions=[
                "subjectAltName=" + ",".join(_san(h) for h in hosts),
                "extendedKeyUsage=serverAuth",
            ],
            days=SERVING_DAYS,
        )
    return certs


def client_certificate(
    certs: DevCerts, name: str, user: str, groups: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A client certificate (CN = user, one O per group, the kube-apiserver mapping) signed
    by the dev CA, as ``name.crt`` and ``name.key``: for trying x509 authentication."""
    subject = f"/CN={user}" + "".join(f"/O={g}" for g in groups)
    cert, key = certs.directory / f"{name}.crt", certs.directory / f"{name}.key"
    issue(
        certs.ca_file,
        certs.ca_key_file,
        cert,
        key,
        subject=subject,
        extensions=["extendedKeyUsage=clientAuth"],
        days=SERVING_DAYS,
    )
    return cert, key


def new_ca(cert: Path, key: Path, common_name: str, days: int = CA_DAYS) -> None:
    """A self-signed CA (key usage and key identifiers set: strict verifiers require them)."""
    with _staged(cert, key) as (tmp_cert, tmp_key):
        _openssl(
            "req",
            "-x509",
            *_KEY,
            "-days",
            str(days),
            "-subj",
            f"/CN={common_name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectKeyIdentifier=hash",
            "-keyout",
            str(tmp_key),
            "-out",
            str(tmp_cert),
        )


def issue(
    ca_cert: Path,
    ca_key: Path,
    cert: Path,
    key: Path,
    *,
    subject: str,
    extensions: Sequence[str],
    days: int,
    ca: bool = False,
) -> None:
    """A leaf certificate (or, with ``ca``, an intermediate CA) and its new key, signed by
    the CA; written to temporary names and renamed into place, so a reader never sees half
    a file."""
    with _staged(cert, key) as (tmp_cert, tmp_key):
        csr = tmp_cert.with_suffix(".csr")
        ext = tmp_cert.with_suffix(".ext")
        ext.write_text(
            "\n".join(
                [
                    f"basicConstraints=critical,CA:{'TRUE' if ca else 'FALSE'}",
                    f"keyUsage=critical,{'keyCertSign' if ca else 'digitalSignature'}",
                    "subjectKeyIdentifier=hash",
                    "authorityKeyIdentifier=keyid,issuer",
                    *extensions,
                ]
            )
            + "\n"
        )
        try:
            _openssl("req", *_KEY, "-subj", subject, "-keyout", str(tmp_key), "-out", str(csr))
            _openssl(
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca_cert),
                "-CAkey",
                str(ca_key),
                "-set_serial",
                "0x" + secrets.token_hex(16),
                "-days",
                str(days),
                "-extfile",
                str(ext),
                "-out",
                str(tmp_cert),
            )
        finally:
            csr.unlink(missing_ok=True)
            ext.unlink(missing_ok=True)


class _staged:
    """Temporary names next to ``cert`` and ``key``, renamed over them on success (the key
    first: a server reloading between the two renames sees a mismatched pair, refuses it and
    keeps its last good one) and removed on failure. The key is readable by its owner only."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key

    def __enter__(self) -> tuple[Path, Path]:
        self.dir = tempfile.mkdtemp(prefix=".devcerts-", dir=self.cert.parent)
        self.tmp_cert = Path(self.dir) / "cert.pem"
        self.tmp_key = Path(self.dir) / "key.pem"
        return self.tmp_cert, self.tmp_key

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                os.chmod(self.tmp_key, 0o600)
                os.replace(self.tmp_key, self.key)
                os.replace(self.tmp_cert, self.cert)
        finally:
            for p in Path(self.dir).iterdir():
                p.unlink()
            os.rmdir(self.dir)


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ok(*args: str) -> bool:
    return subprocess.run(["openssl", *args], capture_output=True).returncode == 0


def _valid_for(cert: Path, seconds: int) -> bool:
    return cert.is_file() and _ok("x509", "-noout", "-checkend", str(seconds), "-in", str(cert))


def _key_matches(cert: Path, key: Path) -> bool:
    if not (cert.is_file() and key.is_file()):
        return False
    try:
        from_cert = _openssl("x509", "-noout", "-pubkey", "-in", str(cert)).stdout
        from_key = _openssl("pkey", "-pubout", "-in", str(key)).stdout
    except subprocess.CalledProcessError:
        return False
    return from_cert == from_key


def _signed_by(cert: Path, ca: Path) -> bool:
    return _ok("verify", "-CAfile", str(ca), str(cert))


def _covers(cert: Path, hosts: Sequence[str]) -> bool:
    try:
        text = _openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)).stdout
    except subprocess.CalledProcessError:
        return False
    names = {n.strip() for n in text.decode().splitlines()[-1].split(",")}
    return all(_san(h).replace("IP:", "IP Address:") in names for h in hosts)


def _san(host: str) -> str:
    return f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: devcerts.py DIRECTORY")
    made = ensure(sys.argv[1])
    print(f"CA:          {made.ca_file}")
    print(f"certificate: {made.cert_file}")
    print(f"key:         {made.key_file}")
    print()
    print(made.how_to_trust())
