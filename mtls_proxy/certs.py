"""Certificates as the proxy sees them: PEM loading, the verified peer's identity, CRLs.

The peer certificate is parsed once per connection into a :class:`PeerIdentity`; the
policy, the identity headers and the logs read that object and never the DER again.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_ATTR_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
}


def name_attributes(name: x509.Name) -> dict[str, tuple[str, ...]]:
    """Subject/issuer attributes by short name; an attribute may repeat (several OUs)."""
    out: dict[str, list[str]] = {}
    for attr in name:
        key = _ATTR_NAMES.get(attr.oid, attr.oid.dotted_string)
        value = attr.value if isinstance(attr.value, str) else attr.value.hex()
        out.setdefault(key, []).append(value)
    return {k: tuple(v) for k, v in out.items()}


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints CA:TRUE (no extension: not a CA)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def spki_sha256(cert: x509.Certificate) -> str:
    """base64(SHA-256(DER SubjectPublicKeyInfo)): the pin format of Android, OkHttp, iOS, HPKP."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class ChainLink:
    """What the per-request judgment needs of one CA certificate above the leaf."""

    subject_dn: str
    issuer_dn: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class PeerIdentity:
    """What the proxy knows about a verified client certificate (the leaf)."""

    der: bytes
    subject: dict[str, tuple[str, ...]]
    subject_dn: str
    issuer: dict[str, tuple[str, ...]]
    issuer_dn: str
    serial: int
    fingerprint_sha256: str  # lowercase hex of SHA-256(DER)
    spki_sha256: str  # base64
    not_before: dt.datetime
    not_after: dt.datetime
    san_dns: tuple[str, ...] = ()
    san_uri: tuple[str, ...] = ()
    san_email: tuple[str, ...] = ()
    san_ip: tuple[str, ...] = ()
    has_client_auth_eku: bool = False
    #: the certificate has an extended key usage extension at all (pinned certificates may lack one)
    has_eku: bool = False
    is_ca: bool = False
    chain_der: tuple[bytes, ...] = field(default=(), compare=False)  # verified chain without the leaf
    #: SHA-256 (hex) of the trust anchor the handshake chained to: lets a reload that drops a CA
    #: refuse that CA's clients on connections opened before it
    anchor_sha256: str = ""
    #: the CA certificates of ``chain_der``, parsed (CRL serials and validity of the whole chain)
    chain: tuple[ChainLink, ...] = field(default=(), compare=False)

    @property
    def common_name(self) -> str:
        return self.subject.get("CN", ("",))[0]

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in ``data``: PEM (one or more blocks) or a single DER certificate.

    ``keytool -exportcert`` writes DER unless given ``-rfc``; both are accepted where a file holds
    client certificates. Raises ValueError when nothing can be read.
    """
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def is_self_signed(cert: x509.Certificate) -> bool:
    """Issuer name equals subject name and the certificate's own key verifies its signature."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def rebuild_chain(leaf_der: bytes, cas: Sequence[x509.Certificate]) -> tuple[bytes, ...]:
    """The chain from ``leaf_der`` up to a self-signed CA among ``cas`` (DER, leaf excluded), or ``()``.

    OpenSSL keeps no verified chain for a resumed TLS session; the proxy rebuilds it from the
    configured client CAs (signatures checked) so the trust anchor can still be judged per request.
    """
    cert = x509.load_der_x509_certificate(leaf_der)
    chain: list[bytes] = []
    for _ in range(len(cas) + 1):
        issuer = None
        for ca in cas:
            if ca.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            issuer = ca
            break
        if issuer is None:
            return ()
        chain.append(issuer.public_bytes(serialization.Encoding.DER))
        if issuer.subject == issuer.issuer:
            return tuple(chain)
        cert = issuer
    return ()


@functools.lru_cache(maxsize=4096)
def parse_peer(der: bytes, chain_der: tuple[bytes, ...] = ()) -> PeerIdentity:
    """Parse a verified leaf certificate (DER) into a :class:`PeerIdentity`.

    Cached: phones reconnect often with the same certificate, and parsing was a fifth of a full
    handshake's CPU; the result is immutable and shared by that device's connections.
    """
    cert = x509.load_der_x509_certificate(der)
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        uri = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        email = tuple(san.get_values_for_type(x509.RFC822Name))
        ip = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth, has_eku = ExtendedKeyUsageOID.CLIENT_AUTH in eku, True
    except x509.ExtensionNotFound:
        client_auth = has_eku = False
    ca = is_ca(cert)
    return PeerIdentity(
        der=der,
        subject=name_attributes(cert.subject),
        subject_dn=cert.subject.rfc4514_string(),
        issuer=name_attributes(cert.issuer),
        issuer_dn=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        spki_sha256=spki_sha256(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        san_dns=dns,
        san_uri=uri,
        san_email=email,
        san_ip=ip,
        has_client_auth_eku=client_auth,
        has_eku=has_eku,
        is_ca=ca,
        chain_der=chain_der,
        anchor_sha256=hashlib.sha256(chain_der[-1] if chain_der else der).hexdigest(),
        chain=tuple(_chain_link(d) for d in chain_der),
    )


def _chain_link(der: bytes) -> ChainLink:
    cert = x509.load_der_x509_certificate(der)
    return ChainLink(
        subject_dn=cert.subject.rfc4514_string(),
        issuer_dn=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )
