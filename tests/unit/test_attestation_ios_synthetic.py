"""App Attest negatives built under a test root (each asserts its exact reason code)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.ios import client_data_hash, verify_ios_assertion, verify_ios_attestation
from tests.support import der_encode as D
from tests.support.attestation_pki import (
    AAGUID_DEVELOPMENT,
    APP_ID,
    APPLE_NONCE_OID,
    NOW,
    AppAttestTestRoot,
    assertion,
    key_id_of,
    new_key,
)

CHALLENGE = b"enrollment challenge"


@pytest.fixture(scope="module")
def root() -> AppAttestTestRoot:
    return AppAttestTestRoot()


@pytest.fixture(scope="module")
def app_key():
    return new_key()


@pytest.fixture(scope="module")
def csr_der() -> bytes:
    tls_key = new_key()  # the TLS key is a separate Secure Enclave key: its CSR is what gets bound
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(tls_key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def verify(root: AppAttestTestRoot, obj: bytes, key_id: bytes, cdh: bytes, **overrides: Any):
    args: dict[str, Any] = {"key_id": key_id, "client_data_hash": cdh, "app_ids": [APP_ID],
                            "environment": "production", "at": NOW, "roots": [root.root]}
    args.update(overrides)
    return verify_ios_attestation(obj, **args)


def reasons(root, app_key, csr_der, *, verify_args: dict[str, Any] | None = None, **make: Any) -> tuple[str, ...]:
    cdh = client_data_hash(CHALLENGE, csr_der)
    obj = root.attestation(app_key.public_key(), cdh, **make)
    return verify(root, obj, key_id_of(app_key.public_key()), cdh, **(verify_args or {})).reasons


def test_a_well_formed_attestation_verifies(root, app_key, csr_der):
    cdh = client_data_hash(CHALLENGE, csr_der)
    verdict = verify(root, root.attestation(app_key.public_key(), cdh), key_id_of(app_key.public_key()), cdh)
    assert verdict.ok, verdict
    assert (verdict.facts.app_id, verdict.facts.environment, verdict.facts.counter) == (APP_ID, "production", 0)


def test_development_environment(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, aaguid=AAGUID_DEVELOPMENT,
                   verify_args={"environment": "development"}) == ()


def test_the_csr_binding(root, app_key, csr_der):
    """Evidence made for one CSR does not pass for another: the server recomputes clientDataHash."""
    cdh = client_data_hash(CHALLENGE, csr_der)
    obj = root.attestation(app_key.public_key(), cdh)
    other = client_data_hash(CHALLENGE, csr_der + b"\x00")
    assert verify(root, obj, key_id_of(app_key.public_key()), other).reasons == (R.NONCE_MISMATCH,)
    stale = client_data_hash(b"an earlier challenge", csr_der)
    assert verify(root, obj, key_id_of(app_key.public_key()), stale).reasons == (R.NONCE_MISMATCH,)


# -- the negatives the issue names --

def test_wrong_app_id(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, app_id="ABCDE12345.com.example.other") == (R.RP_ID_MISMATCH,)
    assert reasons(root, app_key, csr_der, verify_args={"app_ids": ["ZZZZZ99999.com.example.app"]}) == (
        R.RP_ID_MISMATCH,)


def test_counter_not_zero(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, counter=1) == (R.COUNTER_NOT_ZERO,)


def test_wrong_aaguid(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, aaguid=AAGUID_DEVELOPMENT) == (R.AAGUID_MISMATCH,)
    assert reasons(root, app_key, csr_der, aaguid=b"\x00" * 16) == (R.AAGUID_MISMATCH,)


@pytest.mark.parametrize("extension_der", [
    D.sequence(D.explicit(2, D.octets(b"\x00" * 32))),  # wrong tag
    D.sequence(D.explicit(1, D.octets(b"\x00" * 31))),  # wrong length
    D.sequence(D.explicit(1, D.integer(5))),  # not an OCTET STRING
    D.sequence(D.explicit(1, D.octets(b"\x00" * 32)))[:-1],  # truncated
    D.sequence(D.explicit(1, D.octets(b"\x00" * 32)), D.null()),  # extra element
    D.octets(b"\x00" * 32),  # the bare octets
], ids=["wrong_tag", "short_nonce", "not_octets", "truncated", "extra_element", "bare_octets"])
def test_mangled_nonce_extension(root, app_key, csr_der, extension_der: bytes):
    ext = x509.UnrecognizedExtension(APPLE_NONCE_OID, extension_der)
    assert reasons(root, app_key, csr_der, nonce_ext=ext) == (R.NONCE_MALFORMED,)


def test_nonce_of_other_data(root, app_key, csr_der):
    ext = x509.UnrecognizedExtension(APPLE_NONCE_OID, D.sequence(D.explicit(1, D.octets(b"\x42" * 32))))
    assert reasons(root, app_key, csr_der, nonce_ext=ext) == (R.NONCE_MISMATCH,)


def test_nonce_missing(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, include_nonce=False) == (R.NONCE_MISSING,)


# -- the rest --

def test_credential_id_of_another_key(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, credential_id=b"\x01" * 32) == (R.CREDENTIAL_ID_MISMATCH,)


def test_key_id_not_the_certified_key(root, app_key, csr_der):
    other = key_id_of(new_key().public_key())
    cdh = client_data_hash(CHALLENGE, csr_der)
    obj = root.attestation(app_key.public_key(), cdh, key_id=other)  # credentialId = keyId = other
    assert verify(root, obj, other, cdh).reasons == (R.KEY_ID_MISMATCH,)


def test_expired_credential_certificate(root, app_key, csr_der):
    """Apple, not the device, dates the App Attest leaf: its validity is checked."""
    assert reasons(root, app_key, csr_der, cert_not_after=NOW - dt.timedelta(seconds=1)) == (R.CHAIN_EXPIRED,)


def test_untrusted_root(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, verify_args={"roots": [AppAttestTestRoot().root]}) == (R.ROOT_UNTRUSTED,)


def test_auth_data_without_attested_credential(root, app_key, csr_der):
    assert reasons(root, app_key, csr_der, flags=0x01) == (R.AUTH_DATA_MALFORMED,)


def test_credential_id_length_past_the_end(root, app_key, csr_der):
    cdh = client_data_hash(CHALLENGE, csr_der)
    obj = cbor2.loads(root.attestation(app_key.public_key(), cdh))
    data = bytearray(obj["authData"])
    data[53:55] = (1000).to_bytes(2, "big")
    verdict = verify(root, cbor2.dumps({**obj, "authData": bytes(data)}), key_id_of(app_key.public_key()), cdh)
    assert verdict.reasons == (R.AUTH_DATA_MALFORMED,)


def test_x5c_is_exactly_two_certificates(root, app_key, csr_der):
    cdh = client_data_hash(CHALLENGE, csr_der)
    obj = cbor2.loads(root.attestation(app_key.public_key(), cdh))
    x5c = obj["attStmt"]["x5c"]
    obj["attStmt"]["x5c"] = x5c[:1]
    assert verify(root, cbor2.dumps(obj), key_id_of(app_key.public_key()), cdh).reasons == (R.ATTESTATION_UNPARSABLE,)
    obj["attStmt"]["x5c"] = [*x5c, root.root.public_bytes(serialization.Encoding.DER)]
    assert verify(root, cbor2.dumps(obj), key_id_of(app_key.public_key()), cdh).reasons == (R.ATTESTATION_UNPARSABLE,)


# -- assertions --

def test_assertions_need_an_increasing_counter(app_key):
    cdh = client_data_hash(b"renewal challenge", b"new csr")
    good = verify_ios_assertion(assertion(app_key, cdh, counter=5), public_key=app_key.public_key(),
                                client_data_hash=cdh, app_ids=[APP_ID], last_counter=4)
    assert good.ok and good.facts.counter == 5
    replay = verify_ios_assertion(assertion(app_key, cdh, counter=5), public_key=app_key.public_key(),
                                  client_data_hash=cdh, app_ids=[APP_ID], last_counter=5)
    assert replay.reasons == (R.COUNTER_NOT_INCREASING,)


def test_assertion_of_another_key_or_app(app_key):
    cdh = client_data_hash(b"renewal challenge", b"new csr")
    other = verify_ios_assertion(assertion(new_key(), cdh, counter=1), public_key=app_key.public_key(),
                                 client_data_hash=cdh, app_ids=[APP_ID], last_counter=0)
    assert other.reasons == (R.ASSERTION_SIGNATURE_INVALID,)
    wrong_app = verify_ios_assertion(assertion(app_key, cdh, counter=1, app_id="ABCDE12345.other"),
                                     public_key=app_key.public_key(), client_data_hash=cdh, app_ids=[APP_ID],
                                     last_counter=0)
    assert wrong_app.reasons == (R.RP_ID_MISMATCH,)


def test_assertion_with_short_auth_data(app_key):
    obj = cbor2.dumps({"signature": b"x", "authenticatorData": b"\x00" * 36})
    verdict = verify_ios_assertion(obj, public_key=app_key.public_key(), client_data_hash=b"\x00" * 32,
                                   app_ids=[APP_ID], last_counter=0)
    assert verdict.reasons == (R.AUTH_DATA_MALFORMED,)
