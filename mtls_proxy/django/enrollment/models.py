"""Devices, the certificates issued to them, challenges, attempts (audit log and rate-limit counter) and the CRL.

Works on SQLite and PostgreSQL alike: no database-specific types; every race is settled by a
conditional UPDATE (a challenge is used once, an App Attest counter only grows) or by a
row lock on the user / the CRL row (``select_for_update``; on SQLite use the
``"transaction_mode": "IMMEDIATE"`` database option so transactions take the write lock first).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

PLATFORM_ANDROID = "android"
PLATFORM_IOS = "ios"
PLATFORMS = [(PLATFORM_ANDROID, "Android"), (PLATFORM_IOS, "iOS")]

DEVICE_ACTIVE = "active"
DEVICE_REVOKED = "revoked"
DEVICE_STATUSES = [(DEVICE_ACTIVE, "active"), (DEVICE_REVOKED, "revoked")]

KIND_CHALLENGE = "challenge"
KIND_ENROLL = "enroll"
KIND_REENROLL = "reenroll"
KINDS = [(KIND_CHALLENGE, "challenge"), (KIND_ENROLL, "enroll"), (KIND_REENROLL, "reenroll")]


class Device(models.Model):  # type: ignore[misc]
    """One app install on one phone: its id is the certificate's CN and URI SAN."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mtls_devices")
    platform = models.CharField(max_length=16, choices=PLATFORMS, db_index=True)
    status = models.CharField(max_length=16, choices=DEVICE_STATUSES, default=DEVICE_ACTIVE, db_index=True)
    #: what the last accepted evidence said (security level, boot state, patch level, app id...)
    attestation_facts = models.JSONField(default=dict)
    #: iOS: the App Attest key (SPKI DER) that signs renewal assertions, and the last counter seen
    app_attest_public_key = models.BinaryField(null=True, blank=True)
    app_attest_counter = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "mtls_enrollment_device"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.platform} device {self.id}"


class IssuedCertificate(models.Model):  # type: ignore[misc]
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="certificates")
    #: lowercase hex without leading zeros (as ``request.client_cert.serial`` carries it)
    serial = models.CharField(max_length=64, unique=True)
    fingerprint_sha256 = models.CharField(max_length=64)
    spki_sha256 = models.CharField(max_length=64)  # hex (renewal compares it with the CSR key's)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True, db_index=True)
    #: RFC 5280 reason name (mtls_proxy.pki.REVOCATION_REASONS), or "" (unspecified)
    reason = models.CharField(max_length=32, blank=True, default="")
    der = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "mtls_enrollment_certificate"
        ordering = ["-not_before"]

    def __str__(self) -> str:
        return f"certificate {self.serial}"


class Challenge(models.Model):  # type: ignore[misc]
    """Only the SHA-256 of the challenge is stored: a database read does not yield usable challenges."""

    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    #: set for renewal challenges (fetched over mTLS by that device)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "mtls_enrollment_challenge"


class Attempt(models.Model):  # type: ignore[misc]
    """Every challenge, enrollment and renewal, issued or refused, with its reason: the audit trail and,
    counted over a window, the per-user rate limit."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, related_name="+")
    device = models.ForeignKey(Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=16, choices=KINDS)
    ok = models.BooleanField()
    reason = models.CharField(max_length=64, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "mtls_enrollment_attempt"
        indexes = [models.Index(fields=["user", "kind", "at"])]


class RevocationList(models.Model):  # type: ignore[misc]
    """The current CRL of the issuing CA (one row): every worker serves the same bytes and numbers grow."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    number = models.BigIntegerField(default=0)
    pem = models.TextField(default="")
    this_update = models.DateTimeField(null=True)
    next_update = models.DateTimeField(null=True)

    class Meta:
        db_table = "mtls_enrollment_crl"
