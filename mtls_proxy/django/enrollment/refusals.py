"""Every refusal of the enrollment API: a stable reason code, an HTTP status, a line for the operator.

The JSON body is ``{"error": <detail>, "reason": <code>}`` (plus ``"reasons"``, every code, when
attestation evidence failed several checks; ``reason`` is then the first of them, one of
:mod:`mtls_proxy.attestation.result`'s codes). Codes are an interface: add, never rename.
"""

from __future__ import annotations

from typing import Any

AUTHENTICATION_REQUIRED = "authentication_required"
FORBIDDEN = "forbidden"
CERTIFICATE_REQUIRED = "certificate_required"
BAD_REQUEST = "bad_request"
PLATFORM_NOT_ENABLED = "platform_not_enabled"
CSR_MALFORMED = "csr_malformed"
CSR_SIGNATURE_INVALID = "csr_signature_invalid"
WEAK_KEY = "weak_key"
KEY_TYPE_UNSUPPORTED = "key_type_unsupported"
CHALLENGE_UNKNOWN = "challenge_unknown"
CHALLENGE_EXPIRED = "challenge_expired"
CHALLENGE_USED = "challenge_used"
EVIDENCE_MISSING = "evidence_missing"
STATUS_LIST_UNAVAILABLE = "status_list_unavailable"
DEVICE_UNKNOWN = "device_unknown"
DEVICE_REVOKED = "device_revoked"
CERTIFICATE_REVOKED = "certificate_revoked"
RATE_LIMITED = "rate_limited"


class EnrollmentRefusal(Exception):
    """Raised by the service, answered by the views, logged and recorded as an attempt."""

    def __init__(self, reason: str, status: int, detail: str, *, reasons: tuple[str, ...] = (),
                 retry_after: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.status = status
        self.detail = detail
        self.reasons = reasons or (reason,)
        self.retry_after = retry_after
        #: set once the service has logged it with the user and device (the views log the others)
        self.logged = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.detail, "reason": self.reason}
        if len(self.reasons) > 1:
            body["reasons"] = list(self.reasons)
        return body


def bad_request(detail: str, reason: str = BAD_REQUEST) -> EnrollmentRefusal:
    return EnrollmentRefusal(reason, 400, detail)


def forbidden(reason: str, detail: str) -> EnrollmentRefusal:
    return EnrollmentRefusal(reason, 403, detail)
