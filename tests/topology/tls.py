"""A CA, a server certificate and a stranger CA, made with the openssl CLI; a TLS-only server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ratelimit.server import Engine
from topology.server import Server
from topology.waiting import DEADLINE_S, TopologyError


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate it signed (for 127.0.0.1 and localhost), and
    an unrelated CA whose clients must refuse that server."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path
    """A CA that did not sign the server certificate: verifying with it fails."""


def _openssl(workdir: Path, *args: str) -> None:
    result = subprocess.run(
        ["openssl", *args],
        check=False,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    if result.returncode != 0:
        raise TopologyError(f"openssl {' '.join(args)} failed: {result.stderr}")


def _make_ca(workdir: Path, name: str) -> None:
    _openssl(
        workdir,
        "req", "-x509", "-new", "-nodes", "-days", "30",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", f"{name}.key", "-out", f"{name}.crt",
        "-subj", f"/CN=ratelimit topology {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


@contextmanager
def tls_files() -> Iterator[TlsFiles]:
    """Make a CA, a server key and certificate, and another CA, with the openssl CLI.

    Keys are P-256 (fast to make); the certificates are valid for 30 days and
    carry the extensions strict verifiers require (SAN, key identifiers).
    Skips the test when ``openssl`` is not on PATH. Removed on exit.
    """
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not on PATH: no certificates for the TLS server")
    workdir = Path(tempfile.mkdtemp(prefix="ratelimit-topology-tls-"))
    try:
        _make_ca(workdir, "ca")
        _make_ca(workdir, "other-ca")
        (workdir / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl(
            workdir,
            "req", "-new", "-nodes",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        )  # fmt: skip
        _openssl(
            workdir,
            "x509", "-req", "-in", "server.csr", "-days", "30",
            "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-extfile", "server.ext", "-out", "server.crt",
        )  # fmt: skip
        yield TlsFiles(
            ca_cert=workdir / "ca.crt",
            server_cert=workdir / "server.crt",
            server_key=workdir / "server.key",
            other_ca_cert=workdir / "other-ca.crt",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def tls_server(files: TlsFiles, *options: str, engine: Engine = "redis") -> Iterator[Server]:
    """A ``Server`` listening only on TLS with ``files``; skips when the binary lacks TLS."""
    server = Server(*options, engine=engine, tls=files)
    try:
        server.start()
    except TopologyError as exc:
        server.stop()
        if "tls" in str(exc).lower() and "support" in str(exc).lower():
            pytest.skip(f"{server.binary} was built without TLS: {exc}")
        raise
    with server:
        yield server
