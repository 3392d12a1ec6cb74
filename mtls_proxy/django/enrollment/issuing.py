"""Certificates and CRLs of the issuing CA, and their wire encodings. Pure: the CA, keys and time are arguments."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from mtls_proxy.pki.store import CertRecord, build_revocation_list
from mtls_proxy.pki.x509 import EKU_CLIENT, Issued, PublicKey, build_name, certify_public_key, random_serial

#: the URI SAN naming the device (also the CN, without the prefix)
DEVICE_URI_PREFIX = "urn:mtls-proxy:device:"


def device_uri(device_id: uuid.UUID) -> str:
    return f"{DEVICE_URI_PREFIX}{device_id}"


def device_certificate(ca: Issued, public_key: PublicKey, device_id: uuid.UUID, *, validity: dt.timedelta,
                       now: dt.datetime) -> x509.Certificate:
    """CN=<device id>, O=<the CA's O>, URI SAN ``urn:mtls-proxy:device:<id>``, clientAuth, never past the CA."""
    subject = {"CN": str(device_id)}
    orgs = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if orgs:
        subject["O"] = str(orgs[0].value)
    not_after = min(now + validity, ca.cert.not_valid_after_utc)
    return certify_public_key(build_name(subject), public_key, issuer=ca, ekus=[EKU_CLIENT],
                              uris=[device_uri(device_id)], not_before=now - dt.timedelta(minutes=5),
                              not_after=not_after, serial=random_serial())


def certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A degenerate certs-only PKCS#7 SignedData, DER (RFC 7030 section 4.1.3 / 4.2.3)."""
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER, as ``request.client_cert.fingerprint`` carries it."""
    return cert.fingerprint(hashes.SHA256()).hex()


def spki_sha256_hex(cert: x509.Certificate) -> str:
    """Hex (not the base64 pin format of :func:`mtls_proxy.certs.spki_sha256`): compared with a CSR's."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True)
class Revoked:
    serial: int
    revoked_at: dt.datetime
    reason: str  # RFC 5280 reason name, "" for unspecified


def revocation_list(ca: Issued, revoked: Sequence[Revoked], *, number: int, next_update: dt.timedelta,
                    now: dt.datetime) -> x509.CertificateRevocationList:
    """The issuing CA's CRL (the same builder as ``pki revoke``: CRL number, reasons, AKI)."""
    records = [CertRecord(name="", serial=r.serial, not_before=now, not_after=now, spki_sha256="",
                          fingerprint_sha256="", revoked_at=r.revoked_at, reason=r.reason or None) for r in revoked]
    return build_revocation_list(ca, records, number=number, days=next_update.total_seconds() / 86400, now=now)
