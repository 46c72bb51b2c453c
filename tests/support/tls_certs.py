"""A throwaway PKI for TLS tests, made with the openssl command.

The server certificate names only ``localhost``: connecting to ``127.0.0.1`` passes a chain
check but must fail a host-name check.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Files in one directory: a CA, an unrelated CA, and a server and a client pair from the CA."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
    )  # fmt: skip


def _issue(directory: Path, name: str, subject: str, extensions: str | None) -> None:
    _openssl(
        directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
        "-keyout", f"{name}.key", "-out", f"{name}.csr",
    )  # fmt: skip
    signing = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]
    signing += ["-CAcreateserial", "-days", "2", "-out", f"{name}.pem"]
    if extensions is not None:
        (directory / f"{name}.ext").write_text(extensions)
        signing += ["-extfile", f"{name}.ext"]
    _openssl(directory, *signing)


def make_pki(directory: Path) -> Pki:
    """Write the CA, the other CA, ``server`` (for ``localhost``) and ``client`` (CN postgres)."""
    _make_ca(directory, "ca")
    _make_ca(directory, "other_ca")
    _issue(directory, "server", "/CN=localhost", "subjectAltName=DNS:localhost\n")
    _issue(directory, "client", "/CN=postgres", None)
    return Pki(
        ca=directory / "ca.pem",
        other_ca=directory / "other_ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
