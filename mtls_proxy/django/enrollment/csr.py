"""The PKCS#10 request: parsed, its signature verified, its key strong enough. Pure.

Only the key is taken from a CSR: the subject, SANs, extensions and validity of the certificate
are the server's (a CSR's requested names and extensions are ignored, as RFC 7030 section 4.2.1
lets a CA do).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mtls_proxy.django.enrollment import refusals as E
from mtls_proxy.pki.x509 import PublicKey

MIN_RSA_BITS = 2048
#: a phone has no reason to send a bigger one; a 16k-bit key would make every handshake slow
MAX_RSA_BITS = 8192
EC_CURVES = ("secp256r1", "secp384r1")
MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True)
class CheckedCsr:
    der: bytes
    public_key: PublicKey
    spki_der: bytes

    @property
    def spki_sha256_hex(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()


def check_key(key: object) -> PublicKey:
    """RSA 2048..8192 bits, or EC P-256/P-384; anything else is refused with its reason code."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise E.bad_request(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} required", E.WEAK_KEY)
        if key.key_size > MAX_RSA_BITS:
            raise E.bad_request(f"RSA key of {key.key_size} bits: at most {MAX_RSA_BITS}", E.KEY_TYPE_UNSUPPORTED)
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise E.bad_request(f"EC curve {key.curve.name}: only P-256 and P-384 are accepted", E.WEAK_KEY)
        return key
    raise E.bad_request(f"{type(key).__name__}: only RSA and EC (P-256, P-384) keys are accepted",
                        E.KEY_TYPE_UNSUPPORTED)


def check_csr(der: bytes) -> CheckedCsr:
    """Parse a DER PKCS#10, verify its self-signature (proof of possession), check its key."""
    if not der or len(der) > MAX_CSR_BYTES:
        raise E.bad_request(f"the CSR must be 1..{MAX_CSR_BYTES} bytes of DER", E.CSR_MALFORMED)
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, TypeError) as exc:  # unparsable, or an algorithm cryptography cannot verify
        raise E.bad_request(f"the CSR is not a PKCS#10 request cryptography can read: {exc}",
                            E.CSR_MALFORMED) from None
    if not valid:
        raise E.bad_request("the CSR's signature does not verify with its own key", E.CSR_SIGNATURE_INVALID)
    public_key = check_key(key)
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return CheckedCsr(der=der, public_key=public_key, spki_der=spki)
