"""iOS App Attest: is this request from a genuine instance of our app on a genuine Apple device?

Attestation (enrollment), following Apple's "Validating apps that connect to your server":
the CBOR object ``{fmt: "apple-appattest", attStmt: {x5c: [credCert, CA], receipt}, authData}``;
x5c chains to the Apple App Attestation Root CA at ``at`` (every certificate, the leaf too: Apple
issues it); nonce = SHA256(authData || clientDataHash) equals the OCTET STRING in the credCert's
extension 1.2.840.113635.100.8.2; SHA256(credCert public key) = keyId = authData's credentialId;
rpIdHash = SHA256("TEAMID.bundle.id"); counter 0; AAGUID of the configured environment.

App Attest keys cannot do TLS, so the TLS key is a separate Secure Enclave key whose CSR is bound
through clientDataHash: ``client_data_hash(challenge, csr_der)`` = SHA256(challenge || CSR DER) is
what the app passes to ``attestKey`` / ``generateAssertion``, and what the server recomputes.

Assertion (renewal): ``{signature, authenticatorData}``; the signature (ECDSA P-256, SHA-256) over
nonce = SHA256(authenticatorData || clientDataHash) verifies with the attested key, rpIdHash is the
app's, and the counter is greater than the last one seen.

Pure: roots, time and app ids are arguments. The receipt is not checked (it is for Apple's fraud
metric service, an online exchange).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtls_proxy.attestation import der
from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.chain import load_der_chain, serial_hex, validate_path
from mtls_proxy.attestation.result import Refusal, Verdict

NONCE_OID = x509.ObjectIdentifier("1.2.840.113635.100.8.2")
AAGUIDS = {"development": b"appattestdevelop", "production": b"appattest" + b"\x00" * 7}
ENVIRONMENTS = tuple(AAGUIDS)
FLAG_ATTESTED_CREDENTIAL_DATA = 0x40


def client_data_hash(challenge: bytes, csr_der: bytes) -> bytes:
    """What binds a CSR to App Attest evidence: SHA256(server challenge || CSR DER)."""
    return hashlib.sha256(challenge + csr_der).digest()


def app_id_hash(app_id: str) -> bytes:
    return hashlib.sha256(app_id.encode("utf-8")).digest()


@dataclass(frozen=True)
class IosFacts:
    key_id: bytes
    app_id: str | None = None
    environment: str | None = None
    counter: int | None = None
    aaguid: bytes | None = None
    public_key: bytes | None = None
    """SPKI DER of the attested App Attest key: store it to verify later assertions."""
    chain_serials: tuple[str, ...] = ()
    chain_subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class IosAssertionFacts:
    counter: int | None = None
    app_id: str | None = None


@dataclass(frozen=True)
class AuthData:
    rp_id_hash: bytes
    flags: int
    counter: int
    aaguid: bytes | None
    credential_id: bytes | None


def parse_auth_data(data: bytes, *, attested: bool) -> AuthData:
    """WebAuthn authenticator data: rpIdHash(32) flags(1) signCount(4) [aaguid(16) idLen(2) credentialId ...]."""
    if len(data) < 37:
        raise Refusal(R.AUTH_DATA_MALFORMED, f"authenticator data is {len(data)} bytes, at least 37 expected")
    rp_id_hash, flags, counter = data[:32], data[32], int.from_bytes(data[33:37], "big")
    if not attested:
        return AuthData(rp_id_hash, flags, counter, None, None)
    if not flags & FLAG_ATTESTED_CREDENTIAL_DATA or len(data) < 55:
        raise Refusal(R.AUTH_DATA_MALFORMED, "authenticator data carries no attested credential data")
    length = int.from_bytes(data[53:55], "big")
    if len(data) < 55 + length:
        raise Refusal(R.AUTH_DATA_MALFORMED, "credential id runs past the authenticator data")
    return AuthData(rp_id_hash, flags, counter, data[37:53], data[55:55 + length])


MAX_OBJECT_BYTES = 64 * 1024  # real attestation objects are about 5 KiB, assertions 100 bytes


def _cbor_map(data: bytes, reason: str) -> dict[Any, Any]:
    if len(data) > MAX_OBJECT_BYTES:
        raise Refusal(reason, f"{len(data)} bytes, more than {MAX_OBJECT_BYTES}")
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, EOFError, TypeError, OverflowError, RecursionError) as exc:
        raise Refusal(reason, f"not CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise Refusal(reason, "trailing bytes after the CBOR object")
    if not isinstance(value, dict):
        raise Refusal(reason, "not a CBOR map")
    return value


def _nonce_in(leaf: x509.Certificate) -> bytes:
    try:
        ext = leaf.extensions.get_extension_for_oid(NONCE_OID).value
    except x509.ExtensionNotFound:
        raise Refusal(R.NONCE_MISSING, "the credential certificate has no nonce extension 1.2.840.113635.100.8.2") \
            from None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    try:
        items = der.sequence(der.parse(raw))  # SEQUENCE { [1] EXPLICIT OCTET STRING }
        if len(items) != 1 or items[0].cls != der.CONTEXT or items[0].number != 1:
            raise der.DerError("SEQUENCE { [1] OCTET STRING } expected")
        nonce = der.octets(der.explicit(items[0]))
    except der.DerError as exc:
        raise Refusal(R.NONCE_MALFORMED, f"nonce extension: {exc}") from None
    if len(nonce) != 32:
        raise Refusal(R.NONCE_MALFORMED, f"nonce is {len(nonce)} bytes, 32 expected")
    return nonce


def _raw_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _matching_app(rp_id_hash: bytes, app_ids: Sequence[str]) -> str | None:
    return next((a for a in app_ids if hmac.compare_digest(app_id_hash(a), rp_id_hash)), None)


def verify_ios_attestation(attestation: bytes, *, key_id: bytes, client_data_hash: bytes, app_ids: Sequence[str],
                           environment: str, at: dt.datetime, roots: Sequence[x509.Certificate]) -> Verdict[IosFacts]:
    """Verify an App Attest attestation object (raw CBOR bytes) for ``key_id`` and ``client_data_hash``."""
    if environment not in AAGUIDS:
        raise ValueError(f"environment must be one of {', '.join(ENVIRONMENTS)}")
    facts = IosFacts(key_id=key_id)
    try:
        obj = _cbor_map(attestation, R.ATTESTATION_UNPARSABLE)
        if obj.get("fmt") != "apple-appattest":
            raise Refusal(R.FORMAT_NOT_APPLE_APPATTEST, f"fmt is {obj.get('fmt')!r}, 'apple-appattest' expected")
        statement, auth_data = obj.get("attStmt"), obj.get("authData")
        x5c = statement.get("x5c") if isinstance(statement, dict) else None
        if not (isinstance(x5c, list) and len(x5c) == 2 and all(isinstance(c, bytes) for c in x5c)
                and isinstance(auth_data, bytes)):
            raise Refusal(R.ATTESTATION_UNPARSABLE, "attStmt.x5c (exactly the credential certificate and the CA) "
                          "and authData expected")
        certs = load_der_chain(x5c)
        facts = IosFacts(key_id=key_id, chain_serials=tuple(serial_hex(c) for c in certs),
                         chain_subjects=tuple(c.subject.rfc4514_string() for c in certs))
        validate_path(certs, roots, at, check_leaf_validity=True, require_root_in_chain=False)
        parsed = parse_auth_data(auth_data, attested=True)
        leaf_key = certs[0].public_key()
        if not isinstance(leaf_key, ec.EllipticCurvePublicKey):
            raise Refusal(R.KEY_ID_MISMATCH, "the credential certificate's key is not an EC key")
        nonce = _nonce_in(certs[0])
    except Refusal as refusal:
        return Verdict.refuse(refusal, facts)
    app_id = _matching_app(parsed.rp_id_hash, app_ids)
    facts = IosFacts(
        key_id=key_id, app_id=app_id,
        environment=next((e for e, g in AAGUIDS.items() if g == parsed.aaguid), None),
        counter=parsed.counter, aaguid=parsed.aaguid,
        public_key=leaf_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        chain_serials=facts.chain_serials, chain_subjects=facts.chain_subjects)
    failures: list[Refusal] = []
    if not hmac.compare_digest(nonce, hashlib.sha256(auth_data + client_data_hash).digest()):
        failures.append(Refusal(R.NONCE_MISMATCH, "the certificate's nonce is not SHA256(authData || clientDataHash)"))
    if not hmac.compare_digest(hashlib.sha256(_raw_point(leaf_key)).digest(), key_id):
        failures.append(Refusal(R.KEY_ID_MISMATCH, "SHA256 of the credential certificate's key is not the keyId"))
    if not hmac.compare_digest(parsed.credential_id or b"", key_id):
        failures.append(Refusal(R.CREDENTIAL_ID_MISMATCH, "authData credentialId is not the keyId"))
    if app_id is None:
        failures.append(Refusal(R.RP_ID_MISMATCH, f"rpIdHash is not SHA256 of any allowed app id "
                                f"({', '.join(app_ids) or 'none configured'})"))
    if parsed.counter != 0:
        failures.append(Refusal(R.COUNTER_NOT_ZERO, f"attestation counter is {parsed.counter}, 0 expected"))
    if parsed.aaguid != AAGUIDS[environment]:
        failures.append(Refusal(R.AAGUID_MISMATCH, f"AAGUID {parsed.aaguid!r} is not the {environment} environment's"))
    return Verdict.of(failures, facts)


def verify_ios_assertion(assertion: bytes, *, public_key: bytes | ec.EllipticCurvePublicKey, client_data_hash: bytes,
                         app_ids: Sequence[str], last_counter: int) -> Verdict[IosAssertionFacts]:
    """Verify an App Attest assertion (raw CBOR) made with the key attested earlier (``public_key``: SPKI DER)."""
    key = serialization.load_der_public_key(public_key) if isinstance(public_key, bytes) else public_key
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("an App Attest key is an EC P-256 key")
    try:
        obj = _cbor_map(assertion, R.ASSERTION_UNPARSABLE)
        signature, auth_data = obj.get("signature"), obj.get("authenticatorData")
        if not (isinstance(signature, bytes) and isinstance(auth_data, bytes)):
            raise Refusal(R.ASSERTION_UNPARSABLE, "signature and authenticatorData expected")
        parsed = parse_auth_data(auth_data, attested=False)
    except Refusal as refusal:
        return Verdict.refuse(refusal, IosAssertionFacts())
    app_id = _matching_app(parsed.rp_id_hash, app_ids)
    facts = IosAssertionFacts(counter=parsed.counter, app_id=app_id)
    failures: list[Refusal] = []
    nonce = hashlib.sha256(auth_data + client_data_hash).digest()
    try:
        key.verify(signature, nonce, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        failures.append(Refusal(R.ASSERTION_SIGNATURE_INVALID, "the signature does not verify with the attested key"))
    if app_id is None:
        failures.append(Refusal(R.RP_ID_MISMATCH, "rpIdHash is not SHA256 of any allowed app id"))
    if parsed.counter <= last_counter:
        failures.append(Refusal(R.COUNTER_NOT_INCREASING, f"counter {parsed.counter} is not above the last "
                                f"seen {last_counter}"))
    return Verdict.of(failures, facts)
