"""Certificates generated at test time with the project's own builder (mtls_proxy.pki.x509)."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtls_proxy.pki import x509 as X


@dataclass(frozen=True)
class ClientFiles:
    name: str
    cert: Path
    key: Path
    issued: X.Issued

    @property
    def serial_hex(self) -> str:
        return format(self.issued.cert.serial_number, "x")


class TestPki:
    """A client CA, another (untrusted) CA, a server cert for localhost/127.0.0.1, and client certs on demand."""

    __test__ = False

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = X.issue_ca({"CN": "Test Client CA", "O": "Acme"})
        self.other_ca = X.issue_ca({"CN": "Other CA", "O": "Mallory"})
        self.server_ca = X.issue_ca({"CN": "Test Server CA"})
        self.server = X.issue_server("localhost", self.server_ca, dns=["localhost"], ips=["127.0.0.1"])
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem())
        self.other_ca_pem = self._write("other-ca.pem", self.other_ca.cert_pem())
        self.server_ca_pem = self._write("server-ca.pem", self.server_ca.cert_pem())
        self.server_pem = self._write("server.pem", self.server.cert_pem())
        self.server_key = self._write("server.key", self.server.key_pem())
        self.signing_key = self._write("signing.key", b"k" * 48)
        self._clients: dict[str, ClientFiles] = {}

    def _write(self, name: str, data: bytes) -> Path:
        p = self.root / name
        p.write_bytes(data)
        return p

    def client(self, name: str, *, issuer: X.Issued | None = None, subject: dict[str, str] | None = None,
               **kwargs: Any) -> ClientFiles:
        """Issue (once per name) a client cert; kwargs go to ``issue_client``."""
        if name in self._clients:
            return self._clients[name]
        issued = X.issue_client(subject or {"CN": name, "O": "Acme"}, issuer or self.ca, **kwargs)
        files = ClientFiles(name, self._write(f"{name}.pem", issued.cert_pem()),
                            self._write(f"{name}.key", issued.key_pem()), issued)
        self._clients[name] = files
        return files

    def crl(self, name: str, revoked: list[ClientFiles], *, issuer: X.Issued | None = None, **kwargs: Any) -> Path:
        now = dt.datetime.now(dt.UTC)
        crl = X.build_crl(issuer or self.ca, [(c.issued.cert.serial_number, now) for c in revoked], **kwargs)
        return self._write(name, X.crl_pem(crl))

    def client_context(self, client: ClientFiles | None, *,
                       max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client SSLContext trusting only the server CA, presenting ``client`` if given."""
        ctx = ssl.create_default_context(cafile=str(self.server_ca_pem))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx
