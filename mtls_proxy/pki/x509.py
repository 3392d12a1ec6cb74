"""Low-level certificate and CRL builders.

Everything that mints X.509 material goes through here: the ``pki`` command, the
``demo`` and the test suite (which also needs deliberately broken certificates:
expired, wrong EKU, CA:TRUE leaves...). Keeping one builder means the tests
exercise the same code that issues real device certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Key algorithms ``generate_key`` understands.
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "rsa-1024")

_NAME_OIDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
}

EKU_CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
EKU_SERVER = ExtendedKeyUsageOID.SERVER_AUTH


def generate_key(key_type: str = "ec-p256") -> PrivateKey:
    """Make a private key; RSA-1024 exists only so tests can prove it is refused."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


def build_name(attributes: dict[str, str] | str) -> x509.Name:
    """``{"CN": "x", "O": "y"}`` (or just a CN string) -> x509.Name."""
    if isinstance(attributes, str):
        attributes = {"CN": attributes}
    return x509.Name([x509.NameAttribute(_NAME_OIDS[k], v) for k, v in attributes.items()])


def random_serial() -> int:
    """A positive serial with 127 random bits (CA/B Forum asks for at least 64)."""
    return secrets.randbits(127) | (1 << 126)


@dataclass(frozen=True)
class Issued:
    """A certificate together with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _san_entries(
    dns: Iterable[str] = (), ips: Iterable[str] = (), uris: Iterable[str] = (), emails: Iterable[str] = ()
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.RFC822Name(e) for e in emails]
    return names


def issue_certificate(
    subject: dict[str, str] | str,
    *,
    issuer: Issued | None = None,
    key: PrivateKey | None = None,
    key_type: str = "ec-p256",
    is_ca: bool = False,
    path_length: int | None = None,
    ekus: Sequence[x509.ObjectIdentifier] | None = (),
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    uris: Iterable[str] = (),
    emails: Iterable[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: float = 365,
    serial: int | None = None,
    hash_algorithm: hashes.HashAlgorithm | None = None,
    permitted_dns: Sequence[str] | None = None,
) -> Issued:
    """Issue one certificate, self-signed when ``issuer`` is None.

    ``ekus=None`` leaves the extended key usage extension out entirely (tests use it
    to prove that a leaf without clientAuth is refused).
    """
    key = key or generate_key(key_type)
    cert = certify_public_key(
        subject, key.public_key(), issuer=issuer, self_signing_key=key, is_ca=is_ca, path_length=path_length,
        ekus=ekus, dns=dns, ips=ips, uris=uris, emails=emails, not_before=not_before, not_after=not_after,
        days=days, serial=serial, hash_algorithm=hash_algorithm, permitted_dns=permitted_dns,
    )
    return Issued(cert=cert, key=key)


def certify_public_key(
    subject: dict[str, str] | str | x509.Name,
    public_key: PublicKey,
    *,
    issuer: Issued | None,
    self_signing_key: PrivateKey | None = None,
    is_ca: bool = False,
    path_length: int | None = None,
    ekus: Sequence[x509.ObjectIdentifier] | None = (),
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    uris: Iterable[str] = (),
    emails: Iterable[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: float = 365,
    serial: int | None = None,
    hash_algorithm: hashes.HashAlgorithm | None = None,
    permitted_dns: Sequence[str] | None = None,
) -> x509.Certificate:
    """The certificate of :func:`issue_certificate` for a public key whose private half is elsewhere.

    The enrollment service certifies keys that never leave a phone's secure hardware (from a
    CSR); ``self_signing_key`` is only for self-signed certificates (``issuer`` None).
    """
    if issuer is None and self_signing_key is None:
        raise ValueError("a self-signed certificate needs self_signing_key")
    now = dt.datetime.now(dt.UTC)
    not_before = not_before or now - dt.timedelta(minutes=5)
    not_after = not_after or now + dt.timedelta(days=days)
    name = subject if isinstance(subject, x509.Name) else build_name(subject)
    signer_key = issuer.key if issuer else self_signing_key
    issuer_name = issuer.cert.subject if issuer else name
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        if permitted_dns:
            builder = builder.add_extension(
                x509.NameConstraints(
                    permitted_subtrees=[x509.DNSName(d) for d in permitted_dns], excluded_subtrees=None
                ),
                critical=True,
            )
    else:
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    sans = _san_entries(dns, ips, uris, emails)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = hash_algorithm or hashes.SHA256()
    return builder.sign(signer_key, algorithm)  # type: ignore[arg-type]  # narrower stub; bad hashes fail at runtime


def issue_ca(subject: dict[str, str] | str, *, key_type: str = "ec-p256", days: float = 3650,
             issuer: Issued | None = None, **kwargs: object) -> Issued:
    """A CA certificate (self-signed root, or an intermediate when ``issuer`` is given)."""
    return issue_certificate(subject, issuer=issuer, key_type=key_type, is_ca=True, ekus=None, days=days, **kwargs)  # type: ignore[arg-type]


def issue_client(subject: dict[str, str] | str, issuer: Issued, **kwargs: object) -> Issued:
    """A device/client leaf with the clientAuth EKU."""
    kwargs.setdefault("ekus", [EKU_CLIENT])
    return issue_certificate(subject, issuer=issuer, **kwargs)  # type: ignore[arg-type]


def issue_server(subject: dict[str, str] | str, issuer: Issued | None, **kwargs: object) -> Issued:
    """A server leaf with the serverAuth EKU (self-signed when ``issuer`` is None)."""
    kwargs.setdefault("ekus", [EKU_SERVER])
    return issue_certificate(subject, issuer=issuer, **kwargs)  # type: ignore[arg-type]


def build_crl(
    issuer: Issued,
    revoked: Iterable[tuple[int, dt.datetime]] = (),
    *,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    days: float = 7,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer`` listing ``(serial, revocation_time)`` pairs."""
    now = dt.datetime.now(dt.UTC)
    this_update = this_update or now - dt.timedelta(minutes=5)
    next_update = next_update or now + dt.timedelta(days=days)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(issuer.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)
