"""``check``'s notes on the trust setup and its verdict on one client certificate (no sockets)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mtls_proxy.config import settings_from_mapping
from mtls_proxy.diagnose import (
    NOT_STRICT_NOTE,
    PARTIAL_CHAIN_NOTE,
    STRICT_NOTE,
    TrustMaterial,
    judge_client_cert,
    trust_notes,
)
from mtls_proxy.pki import x509 as X

# a day after collection: certificates issued later by fixtures (back-dated 5 min) are valid at NOW
# however long the run before this module took
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def settings(tmp_path: Path, pki, **tls):
    raw = {"listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:8000",
           "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), **tls},
           "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]}}
    s = settings_from_mapping(raw, tmp_path / "c.yaml")
    return s, TrustMaterial.read(s)


def pem(tmp_path: Path, name: str, issued: X.Issued) -> str:
    p = tmp_path / name
    p.write_bytes(issued.cert_pem())
    return str(p)


def no_akid_leaf(issuer: X.Issued) -> x509.Certificate:
    key = X.generate_key()
    return (x509.CertificateBuilder().subject_name(X.build_name("old")).issuer_name(issuer.cert.subject)
            .public_key(key.public_key()).serial_number(7).not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([X.EKU_CLIENT]), critical=False)
            .sign(issuer.key, hashes.SHA256()))


def test_notes_for_ca_only(tmp_path, pki):
    s, m = settings(tmp_path, pki, client_ca=str(pki.ca_pem))
    assert trust_notes(s, m, NOW) == [STRICT_NOTE]
    s, m = settings(tmp_path, pki, client_ca=str(pki.ca_pem), x509_strict=False)
    assert trust_notes(s, m, NOW) == [NOT_STRICT_NOTE]


def test_notes_for_pins(tmp_path, pki):
    self_signed = X.issue_certificate("app", ekus=None)
    expired = X.issue_certificate("gone", ekus=None, not_before=NOW - dt.timedelta(days=3),
                                  not_after=NOW - dt.timedelta(days=1))
    ca_issued = X.issue_client("vendor", X.issue_ca("Vendor"))
    s, m = settings(tmp_path, pki, client_certs=[pem(tmp_path, "a.pem", self_signed), pem(tmp_path, "b.pem", expired)])
    notes = trust_notes(s, m, NOW)
    assert notes[0].startswith("tls.client_certs pins 2 certificate(s). Each pinned certificate is ONE identity")
    assert notes[1:] == [
        f"tls.client_certs[0]: 'CN=app' is valid until {self_signed.cert.not_valid_after_utc:%Y-%m-%d}; then every "
        "install that carries it is refused",
        f"tls.client_certs[1]: 'CN=gone' expired on {expired.cert.not_valid_after_utc:%Y-%m-%d}: handshakes with it "
        "are refused (cert_expired)",
    ]  # no client CA: nothing about strictness
    s, m = settings(tmp_path, pki, client_certs=pem(tmp_path, "c.pem", ca_issued), client_ca=str(pki.ca_pem))
    notes = trust_notes(s, m, NOW)
    assert notes[1] == PARTIAL_CHAIN_NOTE and notes[3] == STRICT_NOTE and len(notes) == 4


@pytest.mark.parametrize("strict", [True, False])
def test_judge_a_leaf_without_akid(tmp_path, pki, strict):
    s, m = settings(tmp_path, pki, client_ca=str(pki.ca_pem), x509_strict=strict)
    accepted, reasons = judge_client_cert(s, m, no_akid_leaf(pki.ca), NOW)
    assert accepted is not strict
    assert reasons[0] == "issued under the client CA 'O=Acme,CN=Test Client CA'"
    assert reasons[1:] == (["refused at the handshake by tls.x509_strict: true (reason=x509_strict): it has no "
                            "Authority Key Identifier (keyid); accepted with tls.x509_strict: false"] if strict else [])


def test_judge_refusals(tmp_path, pki):
    pinned = X.issue_certificate("app", ekus=None)
    s, m = settings(tmp_path, pki, client_ca=str(pki.ca_pem), client_certs=pem(tmp_path, "p.pem", pinned))
    assert judge_client_cert(s, m, pinned.cert, NOW) == (True, [
        f"pinned by tls.client_certs (SHA-256 {pinned.cert.fingerprint(hashes.SHA256()).hex()})"])
    no_eku = X.issue_client("no-eku", pki.ca, ekus=None)
    assert judge_client_cert(s, m, no_eku.cert, NOW)[1][-1] == "refused on every request: 403 client_auth_eku_missing"
    stranger = X.issue_client("stranger", pki.other_ca)
    accepted, reasons = judge_client_cert(s, m, stranger.cert, NOW)
    assert not accepted and reasons[0].startswith("refused at the handshake (unknown_ca): not issued by a configured")

    revoked = pki.client("diag-revoked")
    s, m = settings(tmp_path, pki, client_ca=str(pki.ca_pem), crl=str(pki.crl("diag-crl.pem", [revoked])))
    accepted, reasons = judge_client_cert(s, m, revoked.issued.cert, NOW)
    assert not accepted
    assert reasons[-1] == ("revoked by tls.crl: refused at the handshake (cert_revoked); open connections get 403 "
                           "revoked")
