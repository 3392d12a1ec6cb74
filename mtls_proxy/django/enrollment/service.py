"""What the endpoints do, on the database: challenges, enrollment, renewal, revocation, the CRL.

Every issuance and every refusal is logged (logger ``mtls_proxy.enrollment``) with its reason
codes and recorded as an :class:`~.models.Attempt` row. The rows are also the rate limit: the
user's row is locked (``select_for_update``), the user's attempts in the window are counted and
this attempt's row is inserted in the same transaction, so N workers cannot together exceed it.
Challenges are consumed by one conditional UPDATE, App Attest counters advanced by another:
a race between two requests has exactly one winner on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.android import verify_android
from mtls_proxy.attestation.ios import client_data_hash, verify_ios_assertion, verify_ios_attestation
from mtls_proxy.attestation.result import Verdict
from mtls_proxy.attestation.status import StatusListError
from mtls_proxy.django.enrollment import refusals as E
from mtls_proxy.django.enrollment.conf import EnrollmentSettings, get_settings
from mtls_proxy.django.enrollment.csr import CheckedCsr, check_csr
from mtls_proxy.django.enrollment.issuing import (
    Revoked,
    device_certificate,
    fingerprint,
    revocation_list,
    spki_sha256_hex,
)
from mtls_proxy.django.enrollment.models import (
    DEVICE_ACTIVE,
    DEVICE_REVOKED,
    KIND_CHALLENGE,
    KIND_ENROLL,
    KIND_REENROLL,
    PLATFORM_ANDROID,
    PLATFORM_IOS,
    Attempt,
    Challenge,
    Device,
    IssuedCertificate,
    RevocationList,
)
from mtls_proxy.identity import ClientCert
from mtls_proxy.pki.store import REVOCATION_REASONS

__all__ = ["Issuance", "current_crl", "device_for_certificate", "enroll", "new_challenge", "reenroll",
           "regenerate_crl", "revoke_certificates", "revoke_device"]

log = logging.getLogger("mtls_proxy.enrollment")

CHALLENGE_BYTES = 32
CHALLENGE_WINDOW = dt.timedelta(hours=1)
ENROLLMENT_WINDOW = dt.timedelta(days=1)
#: revoked certificates stay on the CRL until a day after they expire (RFC 5280 lets them go after expiry)
CRL_KEEP_AFTER_EXPIRY = dt.timedelta(days=1)
_PENDING = "pending"


@dataclass(frozen=True)
class Issuance:
    device: Device
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the issuing CA and what CA_CHAIN_FILE adds


# -- input -------------------------------------------------------------------------------


def _b64(body: Mapping[str, Any], key: str, missing: str = E.BAD_REQUEST) -> bytes:
    """``body[key]`` base64-decoded (standard or URL-safe alphabet); ``missing``: the reason code when absent."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise E.bad_request(f"{key!r}: a base64 string is required", missing)
    standard = value.replace("-", "+").replace("_", "/")  # URL-safe alphabet, padding optional
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise E.bad_request(f"{key!r} is not base64") from None


def _b64_list(body: Mapping[str, Any], key: str) -> list[bytes]:
    value = body.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise E.bad_request(f"{key!r}: a list of base64 DER certificates (leaf first) is required",
                            E.EVIDENCE_MISSING)
    return [_b64({key: v}, key, E.EVIDENCE_MISSING) for v in value]


def _digest(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def _attestation_refusal(verdict: Verdict[Any]) -> E.EnrollmentRefusal:
    detail = "; ".join(verdict.details) or "the attestation evidence was refused"
    return E.EnrollmentRefusal(verdict.reasons[0], 403, detail, reasons=verdict.reasons)


# -- rate limits and attempts -----------------------------------------------------------------


def _lock_user(user: Any) -> None:
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()


def _begin(user: Any, kind: str, device: Device | None, conf: EnrollmentSettings, now: dt.datetime) -> Attempt:
    """Count the user's attempts in the window and insert this one, atomically; 429 past the limit."""
    kinds: tuple[str, ...]
    if kind == KIND_CHALLENGE:
        kinds, limit, window = (KIND_CHALLENGE,), conf.challenges_per_hour, CHALLENGE_WINDOW
    else:
        kinds, limit, window = (KIND_ENROLL, KIND_REENROLL), conf.enrollments_per_day, ENROLLMENT_WINDOW
    with transaction.atomic():
        _lock_user(user)
        recent = (Attempt.objects.filter(user=user, kind__in=kinds, at__gte=now - window)
                  .exclude(reason=E.RATE_LIMITED))
        count = recent.count()
        limited = count >= limit
        attempt = Attempt.objects.create(user=user, device=device, kind=kind, ok=False,
                                         reason=E.RATE_LIMITED if limited else _PENDING, at=now)
        oldest = recent.order_by("at").values_list("at", flat=True).first() if limited else None
    if limited:
        retry = int(((oldest or now) + window - now).total_seconds()) + 1
        refusal = E.EnrollmentRefusal(E.RATE_LIMITED, 429, f"{count} {kind} attempts in the last "
                                      f"{window.total_seconds() / 3600:g} h: the limit is {limit}",
                                      retry_after=max(retry, 1))
        _log_refusal(attempt, user, refusal)
        attempt.detail = refusal.detail
        attempt.save(update_fields=["detail"])
        raise refusal
    return attempt  # type: ignore[no-any-return]


def _log_refusal(attempt: Attempt, user: Any, refusal: E.EnrollmentRefusal) -> None:
    refusal.logged = True
    log.warning("%s refused: user=%s device=%s reason=%s reasons=%s status=%d detail=%s", attempt.kind,
                getattr(user, "pk", None), attempt.device_id, refusal.reason, ",".join(refusal.reasons),
                refusal.status, refusal.detail)


def _refused(attempt: Attempt, user: Any, refusal: E.EnrollmentRefusal) -> E.EnrollmentRefusal:
    attempt.reason = refusal.reason
    attempt.detail = "; ".join((",".join(refusal.reasons), refusal.detail))[:2000]
    attempt.save(update_fields=["reason", "detail"])
    _log_refusal(attempt, user, refusal)
    return refusal


# -- challenges -------------------------------------------------------------------------------


def new_challenge(user: Any, device: Device | None = None) -> tuple[bytes, dt.datetime]:
    """32 random bytes, single use, ``CHALLENGE_TTL_SECONDS``; only their SHA-256 is stored."""
    conf = get_settings()
    now = timezone.now()
    attempt = _begin(user, KIND_CHALLENGE, device, conf, now)
    raw = secrets.token_bytes(CHALLENGE_BYTES)
    expires = now + conf.challenge_ttl
    with transaction.atomic():
        # expired challenges are useless: dropped here (by the indexed creation time) so the table stays small
        Challenge.objects.filter(created_at__lt=now - conf.challenge_ttl - CHALLENGE_WINDOW).delete()
        Challenge.objects.create(digest=_digest(raw), user=user, device=device, created_at=now, expires_at=expires)
        attempt.ok, attempt.reason = True, ""
        attempt.save(update_fields=["ok", "reason"])
    log.info("challenge issued: user=%s device=%s expires=%s", user.pk, device.pk if device else None,
             expires.isoformat())
    return raw, expires


def _consume_challenge(raw: bytes, user: Any, device: Device | None, now: dt.datetime) -> None:
    """Mark the challenge used (one conditional UPDATE: one winner), or say why it cannot be."""
    digest = _digest(raw)
    used = Challenge.objects.filter(digest=digest, user=user, device=device, used_at__isnull=True,
                                    expires_at__gt=now).update(used_at=now)
    if used == 1:
        return
    found = Challenge.objects.filter(digest=digest).first()
    if found is None or found.user_id != user.pk or found.device_id != (device.pk if device else None):
        raise E.forbidden(E.CHALLENGE_UNKNOWN, "no such challenge for this user" + (" and device" if device else ""))
    if found.used_at is not None:
        raise E.forbidden(E.CHALLENGE_USED, "the challenge was already used; fetch a new one")
    raise E.forbidden(E.CHALLENGE_EXPIRED, f"the challenge expired at {found.expires_at.isoformat()}")


# -- evidence -----------------------------------------------------------------------------------


def _platform(body: Mapping[str, Any], conf: EnrollmentSettings) -> str:
    platform = body.get("platform")
    if platform not in (PLATFORM_ANDROID, PLATFORM_IOS):
        raise E.bad_request("'platform' must be 'android' or 'ios'")
    if platform not in conf.platforms:
        raise E.bad_request(f"{platform} enrollment is not configured here", E.PLATFORM_NOT_ENABLED)
    return str(platform)


def _verify_android(body: Mapping[str, Any], challenge: bytes, csr: CheckedCsr, conf: EnrollmentSettings,
                    now: dt.datetime) -> dict[str, Any]:
    chain = _b64_list(body, "attestation_chain")
    assert conf.android_policy is not None
    try:
        status = conf.android_status()
    except StatusListError as exc:
        raise E.EnrollmentRefusal(E.STATUS_LIST_UNAVAILABLE, 503, f"attestation status list: {exc}") from None
    verdict = verify_android(chain, challenge=challenge, expected_public_key=csr.spki_der, policy=conf.android_policy,
                             at=now, roots=conf.android_roots, status=status,
                             software_roots=conf.android_software_roots)
    if not verdict.ok:
        raise _attestation_refusal(verdict)
    facts: dict[str, Any] = verdict.to_json()["facts"]
    return facts


def _verify_ios(body: Mapping[str, Any], challenge: bytes, csr: CheckedCsr, conf: EnrollmentSettings,
                now: dt.datetime) -> tuple[dict[str, Any], bytes, int]:
    attestation, key_id = _b64(body, "attestation", E.EVIDENCE_MISSING), _b64(body, "key_id", E.EVIDENCE_MISSING)
    verdict = verify_ios_attestation(attestation, key_id=key_id, client_data_hash=client_data_hash(challenge, csr.der),
                                     app_ids=conf.ios_app_ids, environment=conf.ios_environment, at=now,
                                     roots=conf.ios_roots)
    if not verdict.ok or verdict.facts is None or verdict.facts.public_key is None:
        raise _attestation_refusal(verdict)
    facts: dict[str, Any] = verdict.to_json()["facts"]
    return facts, verdict.facts.public_key, verdict.facts.counter or 0


# -- issuance ---------------------------------------------------------------------------------------


def _issue(device: Device, csr: CheckedCsr, conf: EnrollmentSettings, now: dt.datetime) -> Issuance:
    cert = device_certificate(conf.issuing_ca, csr.public_key, device.id, validity=conf.cert_validity, now=now)
    IssuedCertificate.objects.create(
        device=device, serial=format(cert.serial_number, "x"), fingerprint_sha256=fingerprint(cert),
        spki_sha256=spki_sha256_hex(cert), not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        der=cert.public_bytes(serialization.Encoding.DER),
    )
    return Issuance(device, cert, (conf.issuing_ca.cert, *conf.ca_chain))


def _log_issued(kind: str, user: Any, issuance: Issuance, facts: Mapping[str, Any] | None) -> None:
    c = issuance.certificate
    summary = {k: facts.get(k) for k in ("security_level", "boot_state", "os_patch_level", "packages", "app_id",
                                         "environment") if k in facts} if facts else {}
    log.info("%s issued: user=%s device=%s platform=%s serial=%x not_after=%s evidence=%s", kind, user.pk,
             issuance.device.pk, issuance.device.platform, c.serial_number, c.not_valid_after_utc.isoformat(),
             summary or "none (same attested key)")


def enroll(user: Any, body: Mapping[str, Any]) -> Issuance:
    """CSR + evidence + challenge -> a certificate for a new device of ``user``."""
    conf = get_settings()
    now = timezone.now()
    attempt = _begin(user, KIND_ENROLL, None, conf, now)
    try:
        platform = _platform(body, conf)
        challenge = _b64(body, "challenge")
        csr = check_csr(_b64(body, "csr"))
        _consume_challenge(challenge, user, None, now)
        key, counter = None, 0
        if platform == PLATFORM_ANDROID:
            facts = _verify_android(body, challenge, csr, conf, now)
        else:
            facts, key, counter = _verify_ios(body, challenge, csr, conf, now)
    except E.EnrollmentRefusal as refusal:
        raise _refused(attempt, user, refusal) from None
    with transaction.atomic():
        device = Device.objects.create(id=uuid.uuid4(), user=user, platform=platform, attestation_facts=facts,
                                       app_attest_public_key=key, app_attest_counter=counter)
        issuance = _issue(device, csr, conf, now)
        attempt.ok, attempt.reason, attempt.device = True, "", device
        attempt.save(update_fields=["ok", "reason", "device"])
    _log_issued(KIND_ENROLL, user, issuance, facts)
    return issuance


def device_for_certificate(client_cert: ClientCert | None) -> tuple[Device, IssuedCertificate]:
    """The device behind the verified client certificate: one this service issued, unrevoked, device active."""
    if client_cert is None:
        raise E.EnrollmentRefusal(E.CERTIFICATE_REQUIRED, 401, "renewal is authenticated by the current client "
                                  "certificate: call it through the proxy over mTLS")
    row = (IssuedCertificate.objects.select_related("device", "device__user")
           .filter(serial=client_cert.serial.lstrip("0") or "0").first())
    if row is None or not hmac.compare_digest(row.fingerprint_sha256, client_cert.fingerprint):
        raise E.forbidden(E.DEVICE_UNKNOWN, f"certificate {client_cert.serial} was not issued by this service")
    if row.device.status != DEVICE_ACTIVE:
        raise E.forbidden(E.DEVICE_REVOKED, f"device {row.device.pk} is revoked")
    if row.revoked_at is not None:
        raise E.forbidden(E.CERTIFICATE_REVOKED, f"certificate {row.serial} is revoked")
    return row.device, row


def reenroll(client_cert: ClientCert | None, body: Mapping[str, Any]) -> Issuance:
    """Renewal over mTLS: same device; the same key, or a new one with fresh evidence (Android) /
    always an App Attest assertion with a higher counter (iOS)."""
    device, current = device_for_certificate(client_cert)
    user = device.user
    conf = get_settings()
    now = timezone.now()
    attempt = _begin(user, KIND_REENROLL, device, conf, now)
    facts: dict[str, Any] | None = None
    try:
        if device.platform not in conf.platforms:
            raise E.bad_request(f"{device.platform} enrollment is not configured here", E.PLATFORM_NOT_ENABLED)
        challenge = _b64(body, "challenge")
        csr = check_csr(_b64(body, "csr"))
        _consume_challenge(challenge, user, device, now)
        if device.platform == PLATFORM_ANDROID:
            if csr.spki_sha256_hex != current.spki_sha256:  # rekey: the new key must be attested too
                facts = _verify_android(body, challenge, csr, conf, now)
        else:
            counter = _verify_assertion(device, body, challenge, csr, conf)
            # the conditional UPDATE settles two renewals racing with assertions of the same counter
            if not Device.objects.filter(pk=device.pk, app_attest_counter__lt=counter).update(
                    app_attest_counter=counter):
                raise E.forbidden(R.COUNTER_NOT_INCREASING, f"assertion counter {counter} was already used")
    except E.EnrollmentRefusal as refusal:
        raise _refused(attempt, user, refusal) from None
    with transaction.atomic():
        # revoked meanwhile? The row lock orders this against revoke_device: either we see the
        # revocation here, or revoke_device runs after us and revokes the new certificate too.
        still_active = Device.objects.select_for_update().filter(pk=device.pk, status=DEVICE_ACTIVE).values_list(
            "pk", flat=True).first() is not None
        if still_active:
            if facts is not None:
                Device.objects.filter(pk=device.pk).update(attestation_facts=facts)
            issuance = _issue(device, csr, conf, now)
            attempt.ok, attempt.reason = True, ""
            attempt.save(update_fields=["ok", "reason"])
    if not still_active:
        raise _refused(attempt, user, E.forbidden(E.DEVICE_REVOKED, f"device {device.pk} was revoked during renewal"))
    _log_issued(KIND_REENROLL, user, issuance, facts)
    return issuance


def _verify_assertion(device: Device, body: Mapping[str, Any], challenge: bytes, csr: CheckedCsr,
                      conf: EnrollmentSettings) -> int:
    assertion = _b64(body, "assertion", E.EVIDENCE_MISSING)
    if not device.app_attest_public_key:
        raise E.forbidden(E.DEVICE_UNKNOWN, f"device {device.pk} has no App Attest key")
    verdict = verify_ios_assertion(assertion, public_key=bytes(device.app_attest_public_key),
                                   client_data_hash=client_data_hash(challenge, csr.der),
                                   app_ids=conf.ios_app_ids, last_counter=device.app_attest_counter)
    if not verdict.ok or verdict.facts is None or verdict.facts.counter is None:
        raise _attestation_refusal(verdict)
    return verdict.facts.counter


# -- revocation and the CRL ---------------------------------------------------------------------------


def revoke_certificates(certificates: Any, reason: str = "", *, now: dt.datetime | None = None) -> int:
    """Revoke the unrevoked ones among ``certificates`` (a queryset) and regenerate the CRL; the count revoked."""
    if reason and reason not in REVOCATION_REASONS:
        raise ValueError(f"unknown reason {reason!r}; choose one of {', '.join(REVOCATION_REASONS)}")
    reason = "" if reason == "unspecified" else reason
    now = now or timezone.now()
    with transaction.atomic():
        count: int = certificates.filter(revoked_at__isnull=True).update(revoked_at=now, reason=reason)
        if count:
            regenerate_crl(now=now)
    log.warning("revoked %d certificate(s), reason %s", count, reason or "unspecified")
    return count


def revoke_device(device: Device, reason: str = "", *, now: dt.datetime | None = None) -> int:
    """Revoke a device and every certificate it has (it cannot renew again); regenerates the CRL."""
    now = now or timezone.now()
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(status=DEVICE_REVOKED, revoked_at=now)
        count = revoke_certificates(IssuedCertificate.objects.filter(device=device), reason, now=now)
    log.warning("device %s (user %s) revoked: %d certificate(s) on the CRL", device.pk, device.user_id, count)
    return count


def regenerate_crl(*, now: dt.datetime | None = None) -> RevocationList:
    """Sign a new CRL with the next number (row-locked: numbers never repeat across workers)."""
    conf = get_settings()
    now = now or timezone.now()
    with transaction.atomic():
        row = RevocationList.objects.select_for_update().get(pk=1)
        revoked = [Revoked(int(serial, 16), at, reason) for serial, at, reason in
                   IssuedCertificate.objects.filter(revoked_at__isnull=False,
                                                    not_after__gt=now - CRL_KEEP_AFTER_EXPIRY)
                   .order_by("revoked_at").values_list("serial", "revoked_at", "reason")]
        crl = revocation_list(conf.issuing_ca, revoked, number=row.number + 1, next_update=conf.crl_next_update,
                              now=now)
        row.number += 1
        row.pem = crl.public_bytes(serialization.Encoding.PEM).decode("ascii")
        row.this_update, row.next_update = crl.last_update_utc, crl.next_update_utc
        row.save()
    return row  # type: ignore[no-any-return]


def current_crl(*, now: dt.datetime | None = None) -> RevocationList:
    """The stored CRL, re-signed first when it has less than half of its validity left (or none yet)."""
    conf = get_settings()
    now = now or timezone.now()
    row = RevocationList.objects.get(pk=1)
    if row.number == 0 or row.next_update is None or row.next_update - now < conf.crl_next_update / 2:
        with transaction.atomic():
            row = RevocationList.objects.select_for_update().get(pk=1)
            if row.number == 0 or row.next_update is None or row.next_update - now < conf.crl_next_update / 2:
                row = regenerate_crl(now=now)
    return row  # type: ignore[no-any-return]
