"""PKCS#12 bundles a phone can import.

OpenSSL 3's default PKCS#12 (PBES2/AES-256 with an HMAC-SHA256 MAC) is rejected by many
Android versions ("wrong password") and by iOS ``SecPKCS12Import`` (errSecAuthFailed,
-25293). The ``compat`` profile therefore uses the legacy 3DES + SHA-1 MAC encoding that
imports everywhere; ``modern`` is there for clients known to handle PBES2 (JDK 12+,
recent OpenSSL) when a policy forbids 3DES.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12

from mtls_proxy.pki.x509 import Issued

#: Profiles accepted by :func:`export_pkcs12` (first one is the default).
P12_PROFILES = ("compat", "modern")

#: PBKDF iterations for both the key encryption and the MAC. High enough to slow down a
#: brute force of a stolen bundle, low enough to import in well under a second on old phones.
KDF_ROUNDS = 50_000


def export_pkcs12(
    issued: Issued,
    ca_cert: x509.Certificate | None,
    password: bytes | str,
    profile: str = "compat",
    *,
    friendly_name: bytes | None = None,
) -> bytes:
    """Serialise a key, its certificate and (optionally) the issuing CA as PKCS#12.

    The CA is included so that a client building its chain (JSSE's ``KeyManager``, iOS
    identities) can send leaf + CA; the proxy does not need it but it costs nothing.

    Args:
        issued: the device certificate and its private key.
        ca_cert: the client CA to embed, or None.
        password: the import password; must not be empty (mobile importers reject it).
        profile: ``"compat"`` (3DES, SHA-1 MAC) or ``"modern"`` (AES-256 PBES2, SHA-256 MAC).
        friendly_name: the alias shown by ``keytool -list``; defaults to the certificate's CN.

    Returns:
        The DER-encoded PKCS#12 bundle.

    Raises:
        ValueError: unknown profile or empty password.
    """
    pw = password.encode("utf-8") if isinstance(password, str) else password
    if not pw:
        raise ValueError("the PKCS#12 password must not be empty (Android and iOS refuse empty passwords)")
    builder = PrivateFormat.PKCS12.encryption_builder().kdf_rounds(KDF_ROUNDS)
    if profile == "compat":
        encryption = (
            builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1()).build(pw)
        )
    elif profile == "modern":
        encryption = (
            builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256()).build(pw)
        )
    else:
        raise ValueError(f"unknown PKCS#12 profile {profile!r}; choose one of {', '.join(P12_PROFILES)}")
    if friendly_name is None:
        cns = issued.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        friendly_name = str(cns[0].value).encode("utf-8") if cns else None
    cas = [ca_cert] if ca_cert is not None else None
    return pkcs12.serialize_key_and_certificates(friendly_name, issued.key, issued.cert, cas, encryption)
