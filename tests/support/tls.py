"""TLS and authentication helpers for tests: a throw-away PKI made with the `openssl` CLI, and a probe
that can speak TLS and log in.

The PKI is a CA, a server certificate for 127.0.0.1 (SAN IP:127.0.0.1, serverAuth) and a client
certificate (clientAuth), all EC P-256 so that generating them costs milliseconds.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.broker import TlsFiles

_EXTENSIONS = """\
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Pki:
    """Paths of a test CA and the certificates it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_files(self, *, require_certificate: bool = False) -> TlsFiles:
        """What a Broker's TLS listener needs."""
        return TlsFiles(self.ca_cert, self.server_cert, self.server_key, require_certificate)


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the openssl command is not installed")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


def _key_and_csr(workdir: Path, name: str, subject: str) -> tuple[Path, Path]:
    key, csr = workdir / f"{name}.key", workdir / f"{name}.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject, cwd=workdir)
    return key, csr


def make_pki(workdir: Path) -> Pki:
    """Create a CA, a server certificate for 127.0.0.1 and a client certificate under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ext = workdir / "extensions.cnf"
    ext.write_text(_EXTENSIONS)
    ca_key, ca_csr = _key_and_csr(workdir, "ca", f"/CN=capture-bridge test CA {uuid.uuid4().hex[:8]}")
    ca_cert = workdir / "ca.crt"
    _openssl("x509", "-req", "-in", str(ca_csr), "-signkey", str(ca_key), "-out", str(ca_cert), "-days", "2",
             "-extfile", str(ext), "-extensions", "ca", cwd=workdir)

    def sign(name: str, subject: str, section: str) -> tuple[Path, Path]:
        key, csr = _key_and_csr(workdir, name, subject)
        cert = workdir / f"{name}.crt"
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-set_serial", str(uuid.uuid4().int >> 64), "-out", str(cert), "-days", "2",
                 "-extfile", str(ext), "-extensions", section, cwd=workdir)
        return cert, key

    server_cert, server_key = sign("server", "/CN=127.0.0.1", "server")
    client_cert, client_key = sign("client", "/CN=capture-bridge-test-client", "client")
    return Pki(ca_cert, ca_key, server_cert, server_key, client_cert, client_key)


def client_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A verifying client context trusting `ca`, with an optional client certificate."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def broker_extra() -> str:
    """Extra Mosquitto config for a test broker that reads files from a test's tmp_path.

    Started as root, Mosquitto drops to the `mosquitto` user, which can read neither the
    0600 keys nor anything under pytest's 0700 temp directory; `user root` keeps it as is.
    """
    return "user root" if os.geteuid() == 0 else ""


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd) holding `users`."""
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, (user, password) in enumerate(users.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        result = subprocess.run([binary, *flags, str(path), user, password], capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd failed: {result.stderr}")
    return path
