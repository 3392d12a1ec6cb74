"""Synthetic attestation evidence under a test root made at test time (Android chains, App Attest objects).

The shapes copy the real ones (tests/vectors/attestation): Android root -> intermediate -> attestation
key certificate -> leaf with a KeyDescription extension; App Attest root -> "Apple App Attestation CA 1"
-> credential certificate with the nonce extension, inside a CBOR object with authData.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import der_encode as D

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
KEY_DESCRIPTION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.1.17")
APPLE_NONCE_OID = x509.ObjectIdentifier("1.2.840.113635.100.8.2")
PACKAGE = "com.example.app"
SIGNER_DIGEST = hashlib.sha256(b"the app's signing certificate").digest()
CHALLENGE = b"server nonce 0123456789abcdef"
AppPackage = tuple[str, int]


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool | None, serial: int | None = None,
          not_before: dt.datetime = NOW - dt.timedelta(days=30), not_after: dt.datetime = NOW + dt.timedelta(days=30),
          extensions: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(serial or x509.random_serial_number()).not_valid_before(not_before)
               .not_valid_after(not_after))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# -- Android --

def authorization_list(entries: dict[int, bytes], *, order: Sequence[int] | None = None) -> bytes:
    """A SEQUENCE of EXPLICIT [tag] elements, ascending unless ``order`` says otherwise."""
    tags = list(order) if order is not None else sorted(entries)
    return D.sequence(*(D.explicit(t, entries[t]) for t in tags))


def root_of_trust(*, locked: bool = True, state: int = 0, locked_raw: int | None = None) -> bytes:
    return D.sequence(D.octets(b"\x11" * 32), D.boolean(locked, raw=locked_raw), D.enumerated(state),
                      D.octets(b"\x22" * 32))


def application_id(packages: Sequence[AppPackage] = ((PACKAGE, 7),),
                   digests: Sequence[bytes] = (SIGNER_DIGEST,)) -> bytes:
    infos = D.set_of(*(D.sequence(D.octets(n.encode()), D.integer(v)) for n, v in packages))
    return D.octets(D.sequence(infos, D.set_of(*(D.octets(d) for d in digests))))


@dataclass
class KeyDescriptionSpec:
    """Fields of a synthetic KeyDescription; ``hw``/``sw`` map tag -> inner DER and may be edited freely."""

    challenge: bytes = CHALLENGE
    attestation_version: int = 400
    security_level: int = 1
    keymint_security_level: int = 1
    hw: dict[int, bytes] = field(default_factory=lambda: {
        1: D.set_of(D.integer(2), D.integer(3)),  # purpose SIGN, VERIFY
        2: D.integer(3),  # EC
        3: D.integer(256),
        10: D.integer(1),
        503: D.null(),
        702: D.integer(0),  # GENERATED
        704: root_of_trust(),
        705: D.integer(160000),
        706: D.integer(202601),
        718: D.integer(20260105),
        719: D.integer(20260105),
    })
    sw: dict[int, bytes] = field(default_factory=lambda: {
        701: D.integer(int(NOW.timestamp() * 1000)),
        709: application_id(),
    })
    hw_order: Sequence[int] | None = None

    def der(self) -> bytes:
        return D.sequence(
            D.integer(self.attestation_version), D.enumerated(self.security_level), D.integer(self.attestation_version),
            D.enumerated(self.keymint_security_level), D.octets(self.challenge), D.octets(b""),
            authorization_list(self.sw), authorization_list(self.hw, order=self.hw_order))


def key_description_extension(der: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(KEY_DESCRIPTION_OID, der)


class AndroidTestRoot:
    """A root -> intermediate -> attestation-key chain; ``chain()`` adds a leaf for a device key.

    ``now``: the time the chain is valid around (the enrollment service verifies at the real time).
    """

    __test__ = False

    def __init__(self, cn: str = "Test Attestation Root", *, now: dt.datetime = NOW) -> None:
        self.root_key, self.intermediate_key, self.attestation_key = new_key(), new_key(), new_key()
        window = {"not_before": now - dt.timedelta(days=30), "not_after": now + dt.timedelta(days=30)}
        self.root = issue(name(cn), self.root_key.public_key(), name(cn), self.root_key, ca=True,
                          not_before=window["not_before"], not_after=now + dt.timedelta(days=3650))
        self.intermediate = issue(name("Test Intermediate"), self.intermediate_key.public_key(), self.root.subject,
                                  self.root_key, ca=True, **window)
        self.attestation = issue(name("Test TEE attestation key"), self.attestation_key.public_key(),
                                 self.intermediate.subject, self.intermediate_key, ca=True, **window)

    def leaf(self, device_key: ec.EllipticCurvePublicKey, spec: KeyDescriptionSpec | None = None, *,
             not_after: dt.datetime = NOW + dt.timedelta(days=30)) -> x509.Certificate:
        ext = key_description_extension((spec or KeyDescriptionSpec()).der())
        return issue(name("Android Keystore Key"), device_key, self.attestation.subject, self.attestation_key,
                     ca=None, not_before=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), not_after=not_after,
                     extensions=[ext])

    def chain(self, device_key: ec.EllipticCurvePublicKey, spec: KeyDescriptionSpec | None = None,
              **leaf_args: dt.datetime) -> list[x509.Certificate]:
        return [self.leaf(device_key, spec, **leaf_args), self.attestation, self.intermediate, self.root]


# -- iOS App Attest --

APP_ID = "ABCDE12345.com.example.app"
AAGUID_DEVELOPMENT = b"appattestdevelop"
AAGUID_PRODUCTION = b"appattest" + b"\x00" * 7


def _raw_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def key_id_of(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(_raw_point(key)).digest()


def auth_data(*, app_id: str = APP_ID, counter: int = 0, aaguid: bytes | None = AAGUID_PRODUCTION,
              credential_id: bytes = b"", flags: int = 0x40) -> bytes:
    head = hashlib.sha256(app_id.encode()).digest() + bytes([flags]) + counter.to_bytes(4, "big")
    if aaguid is None:
        return head
    return head + aaguid + len(credential_id).to_bytes(2, "big") + credential_id


def nonce_extension(nonce: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(APPLE_NONCE_OID, D.sequence(D.explicit(1, D.octets(nonce))))


class AppAttestTestRoot:
    """A root -> "App Attestation CA" chain issuing credential certificates for App Attest keys."""

    __test__ = False

    def __init__(self, *, now: dt.datetime = NOW) -> None:
        self.now = now
        self.root_key, self.ca_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
        self.root = issue(name("Test App Attestation Root CA"), self.root_key.public_key(),
                          name("Test App Attestation Root CA"), self.root_key, ca=True,
                          not_before=now - dt.timedelta(days=30), not_after=now + dt.timedelta(days=3650))
        self.ca = issue(name("Test App Attestation CA 1"), self.ca_key.public_key(), self.root.subject,
                        self.root_key, ca=True, not_before=now - dt.timedelta(days=30),
                        not_after=now + dt.timedelta(days=30))

    def attestation(self, app_key: ec.EllipticCurvePublicKey, client_data_hash: bytes, *,
                    nonce_ext: x509.UnrecognizedExtension | None = None, include_nonce: bool = True,
                    key_id: bytes | None = None, cert_not_after: dt.datetime | None = None,
                    **auth: object) -> bytes:
        """A CBOR attestation object; ``auth`` goes to auth_data (credential_id defaults to the key id)."""
        kid = key_id if key_id is not None else key_id_of(app_key)
        data = auth_data(**{"credential_id": kid, **auth})  # type: ignore[arg-type]
        nonce = hashlib.sha256(data + client_data_hash).digest()
        extensions = [] if not include_nonce else [nonce_ext or nonce_extension(nonce)]
        cred = issue(name(kid.hex()), app_key, self.ca.subject, self.ca_key, ca=False,
                     not_before=self.now - dt.timedelta(days=30),
                     not_after=cert_not_after or self.now + dt.timedelta(days=30), extensions=extensions)
        return cbor2.dumps({"fmt": "apple-appattest", "attStmt": {
            "x5c": [cred.public_bytes(serialization.Encoding.DER), self.ca.public_bytes(serialization.Encoding.DER)],
            "receipt": b"not checked offline"}, "authData": data})


def assertion(app_key: ec.EllipticCurvePrivateKey, client_data_hash: bytes, *, counter: int,
              app_id: str = APP_ID) -> bytes:
    data = auth_data(app_id=app_id, counter=counter, aaguid=None, flags=0x01)
    nonce = hashlib.sha256(data + client_data_hash).digest()
    return cbor2.dumps({"signature": app_key.sign(nonce, ec.ECDSA(hashes.SHA256())), "authenticatorData": data})
