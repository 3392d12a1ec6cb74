"""CSR checks of the enrollment service: proof of possession and key strength, each refusal's reason code."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from mtls_proxy.django.enrollment.csr import check_csr
from mtls_proxy.django.enrollment.refusals import EnrollmentRefusal


def csr(key: object) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                                "x")]))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def refusal(der: bytes) -> tuple[str, int, str]:
    with pytest.raises(EnrollmentRefusal) as info:
        check_csr(der)
    return info.value.reason, info.value.status, info.value.detail


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048)])
def test_accepted_keys_yield_the_csr_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    checked = check_csr(csr(key))
    assert checked.spki_der == key.public_key().public_bytes(serialization.Encoding.DER,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def test_weak_and_unsupported_keys() -> None:
    assert refusal(csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))) == (
        "weak_key", 400, "RSA key of 1024 bits: at least 2048 required")
    assert refusal(csr(ec.generate_private_key(ec.SECP521R1()))) == (
        "weak_key", 400, "EC curve secp521r1: only P-256 and P-384 are accepted")
    assert refusal(csr(ec.generate_private_key(ec.SECP256K1()))) == (
        "weak_key", 400, "EC curve secp256k1: only P-256 and P-384 are accepted")
    assert refusal(csr(ed25519.Ed25519PrivateKey.generate())) == (
        "key_type_unsupported", 400, "Ed25519PublicKey: only RSA and EC (P-256, P-384) keys are accepted")


def test_bad_signature_and_garbage() -> None:
    der = bytearray(csr(ec.generate_private_key(ec.SECP256R1())))
    der[-1] ^= 1
    assert refusal(bytes(der)) == ("csr_signature_invalid", 400, "the CSR's signature does not verify with its own key")
    assert refusal(b"")[0] == "csr_malformed"
    assert refusal(b"\x30\x00")[0] == "csr_malformed"
    assert refusal(b"\x30" * 20000)[0] == "csr_malformed"
