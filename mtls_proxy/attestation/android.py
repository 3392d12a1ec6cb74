"""Android Key Attestation: is this key pair born in a TEE/StrongBox of a genuine, locked device, for our app?

Checks, in order (the first failing chain check refuses alone; all failing policy checks are listed):

1. Structure (Google's "chain extension attack" rules): the KeyDescription extension is in the leaf
   and in no other certificate. A certificate whose *issuer* carries the extension was signed by an
   attested key, i.e. appended after the real leaf (``certificate_after_leaf``); a CA certificate
   carrying it is ``extension_in_intermediate``.
2. Path: names chain, signatures verify, every certificate but the leaf is valid at ``at`` (the
   leaf's dates come from the device), the chain ends in a self-issued root whose *public key* is a
   configured anchor (the copy in the chain is not checked further: all re-issues count).
3. Status: no serial of the chain is REVOKED or SUSPENDED in Google's status list.
4. KeyDescription parsed by a tolerant tag walk (keydescription.py).
5. Policy: attestation security level TEE or StrongBox (and equal to KeyMint's), challenge equal to
   the server's nonce, leaf key equal to the CSR's key, origin GENERATED, purpose SIGN, rootOfTrust
   device locked and VERIFIED (all hardware-enforced), attestationApplicationId packages and
   signing-certificate digests in the allow-list, optional minimum OS patch level.

Pure: roots, status list, time and app identities are arguments.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.chain import checked, load_der_chain, load_pem_chain, serial_hex, spki, validate_path
from mtls_proxy.attestation.keydescription import OID, PURPOSE_SIGN, KeyDescription, parse_key_description
from mtls_proxy.attestation.result import Refusal, Verdict
from mtls_proxy.attestation.status import REVOKED, StatusList
from mtls_proxy.certs import is_ca

KEY_DESCRIPTION_OID = x509.ObjectIdentifier(OID)
HARDWARE_LEVELS = ("TRUSTED_ENVIRONMENT", "STRONG_BOX")


@dataclass(frozen=True)
class AppIdentity:
    """One Android app allowed to enroll: its package name and the SHA-256 digests of its signing certificates."""

    package: str
    signer_digests: frozenset[bytes]


@dataclass(frozen=True)
class AndroidPolicy:
    apps: tuple[AppIdentity, ...]
    min_os_patch_level: int | None = None
    """YYYYMM, e.g. 202501; None: not checked."""


@dataclass(frozen=True)
class AndroidFacts:
    """What the evidence says (JSON-friendly): for logs, the CLI and the device record."""

    chain_serials: tuple[str, ...]
    chain_subjects: tuple[str, ...]
    anchor_subject: str | None = None
    attestation_version: int | None = None
    security_level: str | None = None
    keymint_version: int | None = None
    keymint_security_level: str | None = None
    challenge: bytes | None = None
    device_locked: bool | None = None
    boot_state: str | None = None
    verified_boot_key: bytes | None = None
    os_version: int | None = None
    os_patch_level: int | None = None
    vendor_patch_level: int | None = None
    boot_patch_level: int | None = None
    origin: str | None = None
    purposes: tuple[int, ...] = ()
    packages: tuple[str, ...] = ()
    signer_digests_hex: tuple[str, ...] = ()
    brand: str | None = None
    model: str | None = None
    leaf_public_key_sha256_hex: str | None = None


def _has_key_description(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(KEY_DESCRIPTION_OID)
    except x509.ExtensionNotFound:
        return False
    return True



def _check_structure(chain: Sequence[x509.Certificate]) -> None:
    for index, cert in enumerate(chain[1:], start=1):
        if _has_key_description(cert):
            if is_ca(cert):
                raise Refusal(R.EXTENSION_IN_INTERMEDIATE, f"certificate {index} is a CA and carries the attestation "
                              "extension: only the leaf may")
            raise Refusal(R.CERTIFICATE_AFTER_LEAF, f"certificate {index} carries the attestation extension: the "
                          f"{index} certificate(s) before it were appended after the attested key")
    if not _has_key_description(chain[0]):
        raise Refusal(R.EXTENSION_MISSING, "the leaf has no KeyDescription extension (1.3.6.1.4.1.11129.2.1.17)")


def _check_status(chain: Sequence[x509.Certificate], status: StatusList) -> None:
    for index, cert in enumerate(chain):
        state = status.status_of(serial_hex(cert))
        if state is not None:
            reason = R.SERIAL_REVOKED if state == REVOKED else R.SERIAL_SUSPENDED
            raise Refusal(reason, f"certificate {index} serial {serial_hex(cert)} is {state} in the status list")


def _spki_of(key: bytes | PublicKeyTypes) -> bytes:
    if isinstance(key, bytes):
        return key
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _facts(chain: Sequence[x509.Certificate], kd: KeyDescription | None, anchor: str | None) -> AndroidFacts:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki(chain[0]))
    base = AndroidFacts(
        chain_serials=tuple(serial_hex(c) for c in chain),
        chain_subjects=tuple(c.subject.rfc4514_string() for c in chain),
        anchor_subject=anchor,
        leaf_public_key_sha256_hex=digest.finalize().hex(),
    )
    if kd is None:
        return base
    hw, sw = kd.hardware_enforced, kd.software_enforced
    rot = hw.root_of_trust
    app = sw.attestation_application_id or hw.attestation_application_id
    return replace(
        base,
        anchor_subject=anchor,
        attestation_version=kd.attestation_version,
        security_level=kd.attestation_security_level,
        keymint_version=kd.keymint_version,
        keymint_security_level=kd.keymint_security_level,
        challenge=kd.attestation_challenge,
        device_locked=rot.device_locked if rot else None,
        boot_state=rot.verified_boot_state if rot else None,
        verified_boot_key=rot.verified_boot_key if rot else None,
        os_version=hw.os_version,
        os_patch_level=hw.os_patch_level,
        vendor_patch_level=hw.vendor_patch_level,
        boot_patch_level=hw.boot_patch_level,
        origin=hw.origin,
        purposes=tuple(sorted(hw.purposes or ())),
        packages=tuple(p.name for p in app.packages) if app else (),
        signer_digests_hex=tuple(d.hex() for d in app.signature_digests) if app else (),
        brand=hw.brand,
        model=hw.model,
    )


def _policy(chain: Sequence[x509.Certificate], kd: KeyDescription, challenge: bytes,
            expected_key: bytes | None, policy: AndroidPolicy) -> list[Refusal]:
    failures: list[Refusal] = []
    hw = kd.hardware_enforced
    if kd.attestation_security_level not in HARDWARE_LEVELS:
        failures.append(Refusal(R.SECURITY_LEVEL_SOFTWARE, f"attestationSecurityLevel is "
                                f"{kd.attestation_security_level}: the key is not in TEE or StrongBox"))
    if kd.keymint_security_level != kd.attestation_security_level:
        failures.append(Refusal(R.SECURITY_LEVEL_MISMATCH, f"keyMintSecurityLevel {kd.keymint_security_level} != "
                                f"attestationSecurityLevel {kd.attestation_security_level}"))
    if not hmac.compare_digest(kd.attestation_challenge, challenge):
        failures.append(Refusal(R.CHALLENGE_MISMATCH, "attestationChallenge is not the server's nonce"))
    if expected_key is not None and not hmac.compare_digest(spki(chain[0]), expected_key):
        failures.append(Refusal(R.KEY_MISMATCH, "the attested key is not the CSR's key"))
    if hw.origin != "GENERATED":
        failures.append(Refusal(R.ORIGIN_NOT_GENERATED, f"hardware-enforced origin is {hw.origin or 'absent'}: "
                                "the key was not generated in the secure hardware"))
    if PURPOSE_SIGN not in (hw.purposes or ()):
        failures.append(Refusal(R.PURPOSE_SIGN_MISSING, "hardware-enforced purposes do not include SIGN"))
    rot = hw.root_of_trust
    if rot is None:
        failures.append(Refusal(R.ROOT_OF_TRUST_MISSING, "no hardware-enforced rootOfTrust"))
    else:
        if not rot.device_locked:
            failures.append(Refusal(R.DEVICE_UNLOCKED, "rootOfTrust.deviceLocked is false (bootloader unlocked)"))
        if rot.verified_boot_state != "VERIFIED":
            failures.append(Refusal(R.BOOT_STATE_NOT_VERIFIED,
                                    f"rootOfTrust.verifiedBootState is {rot.verified_boot_state}"))
    failures.extend(_app_failures(kd, policy))
    if policy.min_os_patch_level is not None:
        if hw.os_patch_level is None:
            failures.append(Refusal(R.OS_PATCH_LEVEL_MISSING, "no hardware-enforced osPatchLevel"))
        elif hw.os_patch_level < policy.min_os_patch_level:
            failures.append(Refusal(R.OS_PATCH_LEVEL_TOO_OLD, f"osPatchLevel {hw.os_patch_level} < "
                                    f"{policy.min_os_patch_level}"))
    return failures


def _app_failures(kd: KeyDescription, policy: AndroidPolicy) -> list[Refusal]:
    """Every package of the calling UID must be allowed, and every signer digest allowed for each of them."""
    app = kd.software_enforced.attestation_application_id or kd.hardware_enforced.attestation_application_id
    if app is None or not app.packages:
        return [Refusal(R.APPLICATION_ID_MISSING, "no attestationApplicationId packages")]
    allowed = {a.package: a.signer_digests for a in policy.apps}
    unknown = [p.name for p in app.packages if p.name not in allowed]
    if unknown:
        return [Refusal(R.PACKAGE_NOT_ALLOWED, f"package(s) {', '.join(unknown)} not in the allow-list")]
    digests = set(app.signature_digests)
    for package in app.packages:
        if not digests or not digests <= allowed[package.name]:
            return [Refusal(R.SIGNER_DIGEST_NOT_ALLOWED, f"signing certificate digest(s) "
                            f"{', '.join(sorted(d.hex() for d in digests)) or 'none'} not allowed for {package.name}")]
    return []


def verify_android(chain: bytes | Sequence[bytes] | Sequence[x509.Certificate], *, challenge: bytes,
                   expected_public_key: bytes | PublicKeyTypes | None, policy: AndroidPolicy, at: dt.datetime,
                   roots: Sequence[x509.Certificate], status: StatusList,
                   software_roots: Sequence[x509.Certificate] = ()) -> Verdict[AndroidFacts]:
    """Verify an attestation chain, leaf first: PEM bytes, DER certificates (as the app reads them from
    ``KeyStore.getCertificateChain``) or parsed certificates.

    ``expected_public_key``: the CSR's public key (SPKI DER or a key object). The enrollment service
    must always pass it; None (CLI debugging only) skips that check and the verdict lists it in
    ``skipped``. ``software_roots``: keys known to be software roots, so a refusal says so.
    """
    try:
        if isinstance(chain, bytes):
            certs = load_pem_chain(chain)
        else:
            ders = [c for c in chain if isinstance(c, bytes)]
            parsed = [c for c in chain if isinstance(c, x509.Certificate)]
            if ders and parsed:
                raise TypeError("chain: DER bytes or x509.Certificate objects, not both")
            certs = load_der_chain(ders) if ders else checked(parsed)
    except Refusal as refusal:
        return Verdict.refuse(refusal)
    if len(certs) < 2:
        return Verdict.refuse(Refusal(R.CHAIN_TOO_SHORT, f"{len(certs)} certificate(s): leaf and root expected"))
    facts = _facts(certs, None, None)
    try:
        _check_structure(certs)
        try:
            anchor = validate_path(certs, roots, at, check_leaf_validity=False, require_root_in_chain=True)
        except Refusal as refusal:
            if refusal.reason == R.ROOT_UNTRUSTED and spki(certs[-1]) in {spki(r) for r in software_roots}:
                raise Refusal(R.ROOT_SOFTWARE, "the chain ends in an Android software attestation root (its "
                              "private key is public)") from None
            raise
        _check_status(certs, status)
        ext = certs[0].extensions.get_extension_for_oid(KEY_DESCRIPTION_OID).value
        if not isinstance(ext, x509.UnrecognizedExtension):  # pragma: no cover - cryptography has no parser for it
            raise Refusal(R.EXTENSION_MALFORMED, "unexpected extension type")
        kd = parse_key_description(ext.value)
    except Refusal as refusal:
        return Verdict.refuse(refusal, facts)
    facts = _facts(certs, kd, anchor.subject.rfc4514_string())
    expected = None if expected_public_key is None else _spki_of(expected_public_key)
    failures = _policy(certs, kd, challenge, expected, policy)
    return Verdict.of(failures, facts, skipped=("leaf_key",) if expected is None else ())
