"""Pinned client certificates: what may be pinned (config) and the per-request trust checks (pure)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import parse_peer
from mtls_proxy.pki import x509 as X
from mtls_proxy.trust import certificate_refusal, fingerprint_sha256, pin_refusal

CA = X.issue_ca({"CN": "Unit CA"})
CA_FP = fingerprint_sha256(CA.cert)


def der(issued: X.Issued) -> bytes:
    return issued.cert.public_bytes(Encoding.DER)


def self_signed(ekus: list[x509.ObjectIdentifier] | None = None) -> X.Issued:
    """A keytool-like certificate: self-signed, SKI only (optionally an EKU)."""
    key = X.generate_key()
    name = X.build_name({"CN": "myapp"})
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(X.random_serial()).not_valid_before(CA.cert.not_valid_before_utc)
               .not_valid_after(CA.cert.not_valid_after_utc)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return X.Issued(builder.sign(key, hashes.SHA256()), key)


def test_fingerprint_is_the_peer_fingerprint():
    leaf = X.issue_client("d", CA)
    assert fingerprint_sha256(leaf.cert) == parse_peer(der(leaf)).fingerprint_sha256 == hashlib.sha256(
        der(leaf)).hexdigest()


@pytest.mark.parametrize(
    ("make", "refusal"),
    [
        (lambda: self_signed(), None),  # keytool: no basicConstraints, no EKU
        (lambda: self_signed([X.EKU_CLIENT]), None),
        (lambda: X.issue_client("leaf", CA), None),
        (lambda: X.issue_client("no-eku", CA, ekus=None), None),
        (lambda: self_signed([X.EKU_SERVER]), "its extended key usage does not include clientAuth"),
        (lambda: X.issue_ca({"CN": "ca"}), "is a CA certificate (basicConstraints CA:TRUE)"),
    ],
    ids=["keytool", "keytool-clientauth", "ca-issued", "ca-issued-no-eku", "server-eku", "ca"],
)
def test_pin_refusal(make, refusal):
    got = pin_refusal(make().cert)
    assert got == refusal if refusal is None else got is not None and got.startswith(refusal)


def test_pin_refusal_key_cert_sign_without_basic_constraints():
    key = X.generate_key()
    name = X.build_name("signer")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(CA.cert.not_valid_before_utc)
            .not_valid_after(CA.cert.not_valid_after_utc)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    assert pin_refusal(cert) == "has keyUsage keyCertSign (it could sign other certificates): pin only leaves"


PIN = self_signed()
PIN_FP = fingerprint_sha256(PIN.cert)


@pytest.mark.parametrize(
    ("peer", "anchors", "pins", "refusal"),
    [
        # a pinned certificate without EKU, standing alone: accepted
        (lambda: parse_peer(der(PIN)), {CA_FP}, {PIN_FP}, None),
        (lambda: parse_peer(der(PIN)), set(), {PIN_FP}, None),
        # the same certificate, not pinned: no EKU, then not anchored
        (lambda: parse_peer(der(PIN)), {CA_FP}, set(), "client_auth_eku_missing"),
        # a pinned certificate as the anchor of a chain (issuing another): not trusted
        (lambda: parse_peer(der(X.issue_client("child", CA)), (der(PIN),)), {CA_FP}, {PIN_FP}, "ca_not_trusted"),
        # a leaf under the CA: as before
        (lambda: parse_peer(der(X.issue_client("d", CA)), (der(CA),)), {CA_FP}, {PIN_FP}, None),
        (lambda: parse_peer(der(X.issue_client("d", CA)), (der(CA),)), set(), {PIN_FP}, "ca_not_trusted"),
        # a resumed session whose chain could not be rebuilt: the leaf alone, not pinned
        (lambda: parse_peer(der(X.issue_client("d", CA))), {CA_FP}, {PIN_FP}, "ca_not_trusted"),
        # nothing configured (a policy judged without TLS material): the anchor is not checked
        (lambda: parse_peer(der(X.issue_client("d", CA))), set(), set(), None),
        (lambda: parse_peer(der(X.issue_ca({"CN": "leaf CA"}))), {CA_FP}, set(), "client_auth_eku_missing"),
        (lambda: parse_peer(der(X.issue_client("ca-leaf", CA, is_ca=True)), (der(CA),)), {CA_FP}, set(),
         "leaf_is_ca"),
    ],
    ids=["pinned", "pinned-only", "not-pinned", "chain-through-pin", "ca-leaf",
         "ca-dropped", "resumed-unrebuilt", "unchecked", "no-eku-ca", "leaf-is-ca"],
)
def test_certificate_refusal(peer, anchors, pins, refusal):
    assert certificate_refusal(peer(), frozenset(anchors), frozenset(pins)) == refusal


def test_pinned_server_eku_is_refused_even_when_pinned():
    """OpenSSL refuses it at the handshake already (unsuitable purpose); the judge agrees."""
    server_only = self_signed([X.EKU_SERVER])
    fp = fingerprint_sha256(server_only.cert)
    assert certificate_refusal(parse_peer(der(server_only)), frozenset(), frozenset({fp})) == "client_auth_eku_missing"
