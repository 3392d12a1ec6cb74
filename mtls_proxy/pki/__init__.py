"""The private PKI behind ``mtls-proxy pki``: CAs, device certificates, CRL, pins, PKCS#12.

The public API is re-exported here so the demo and the proxy tests can build a PKI
without the CLI::

    store = PkiStore(tmp_path / "pki")
    store.init()
    store.issue_server(dns=["localhost"], ips=["127.0.0.1"])
    phone = store.issue_client("phone-1")
    store.revoke(name="phone-1")
"""

from mtls_proxy.pki.pins import PIN_FORMATS, Pin, PinSet, render
from mtls_proxy.pki.pkcs12 import P12_PROFILES, export_pkcs12
from mtls_proxy.pki.store import (
    REVOCATION_REASONS,
    CertRecord,
    ClientIssue,
    Index,
    PkiError,
    PkiStore,
    build_revocation_list,
    load_private_key,
    parse_serial,
)

__all__ = [
    "P12_PROFILES",
    "PIN_FORMATS",
    "REVOCATION_REASONS",
    "CertRecord",
    "ClientIssue",
    "Index",
    "Pin",
    "PinSet",
    "PkiError",
    "PkiStore",
    "build_revocation_list",
    "export_pkcs12",
    "load_private_key",
    "parse_serial",
    "render",
]
