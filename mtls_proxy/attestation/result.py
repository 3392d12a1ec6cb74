"""The outcome of a verification: ``Verdict`` (ok, stable reason codes, parsed facts).

A verification never raises for bad evidence: it returns a refusing ``Verdict``, so the enrollment
service logs the codes and the CLI prints them without either of them catching exceptions. The
codes below are a stable interface (logs, metrics, the CLI's JSON, the enrollment API's errors):
add codes, never rename one.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

# -- chain (both platforms) --
CHAIN_UNPARSABLE = "chain_unparsable"
CHAIN_TOO_SHORT = "chain_too_short"
CHAIN_NAME_MISMATCH = "chain_name_mismatch"
CHAIN_SIGNATURE_INVALID = "chain_signature_invalid"
CHAIN_NOT_YET_VALID = "chain_not_yet_valid"
CHAIN_EXPIRED = "chain_expired"
ROOT_NOT_SELF_ISSUED = "root_not_self_issued"
ROOT_UNTRUSTED = "root_untrusted"
ROOT_SOFTWARE = "root_software"
SERIAL_REVOKED = "serial_revoked"
SERIAL_SUSPENDED = "serial_suspended"
# -- Android extension --
EXTENSION_MISSING = "extension_missing"
EXTENSION_IN_INTERMEDIATE = "extension_in_intermediate"
CERTIFICATE_AFTER_LEAF = "certificate_after_leaf"
EXTENSION_MALFORMED = "extension_malformed"
EXTENSION_TAGS_UNORDERED = "extension_tags_unordered"
# -- Android policy --
SECURITY_LEVEL_SOFTWARE = "security_level_software"
SECURITY_LEVEL_MISMATCH = "security_level_mismatch"
CHALLENGE_MISMATCH = "challenge_mismatch"
KEY_MISMATCH = "key_mismatch"
ORIGIN_NOT_GENERATED = "origin_not_generated"
PURPOSE_SIGN_MISSING = "purpose_sign_missing"
ROOT_OF_TRUST_MISSING = "root_of_trust_missing"
DEVICE_UNLOCKED = "device_unlocked"
BOOT_STATE_NOT_VERIFIED = "boot_state_not_verified"
APPLICATION_ID_MISSING = "application_id_missing"
PACKAGE_NOT_ALLOWED = "package_not_allowed"
SIGNER_DIGEST_NOT_ALLOWED = "signer_digest_not_allowed"
OS_PATCH_LEVEL_MISSING = "os_patch_level_missing"
OS_PATCH_LEVEL_TOO_OLD = "os_patch_level_too_old"
# -- iOS App Attest --
ATTESTATION_UNPARSABLE = "attestation_unparsable"
FORMAT_NOT_APPLE_APPATTEST = "format_not_apple_appattest"
AUTH_DATA_MALFORMED = "auth_data_malformed"
NONCE_MISSING = "nonce_missing"
NONCE_MALFORMED = "nonce_malformed"
NONCE_MISMATCH = "nonce_mismatch"
KEY_ID_MISMATCH = "key_id_mismatch"
CREDENTIAL_ID_MISMATCH = "credential_id_mismatch"
RP_ID_MISMATCH = "rp_id_mismatch"
COUNTER_NOT_ZERO = "counter_not_zero"
AAGUID_MISMATCH = "aaguid_mismatch"
ASSERTION_UNPARSABLE = "assertion_unparsable"
ASSERTION_SIGNATURE_INVALID = "assertion_signature_invalid"
COUNTER_NOT_INCREASING = "counter_not_increasing"


class Refusal(Exception):
    """Internal: a step that cannot go on raises this; the public functions turn it into a Verdict."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


F = TypeVar("F")


@dataclass(frozen=True)
class Verdict(Generic[F]):
    """``ok`` only when ``reasons`` is empty. ``facts`` holds what was parsed (also on refusals, as far
    as parsing got), ``details`` one human line per reason, ``skipped`` the checks the caller opted out of."""

    ok: bool
    reasons: tuple[str, ...]
    details: tuple[str, ...] = ()
    facts: F | None = None
    skipped: tuple[str, ...] = ()

    @classmethod
    def refuse(cls, refusal: Refusal, facts: F | None = None) -> Verdict[F]:
        return cls(False, (refusal.reason,), (refusal.detail,), facts)

    @classmethod
    def of(cls, failures: list[Refusal], facts: F, skipped: tuple[str, ...] = ()) -> Verdict[F]:
        return cls(not failures, tuple(f.reason for f in failures), tuple(f.detail for f in failures), facts,
                   skipped)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (bytes as base64) for the CLI and for logs."""
        value: Any = self.facts
        is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
        facts = _jsonable(dataclasses.asdict(value)) if is_instance else None
        return {"ok": self.ok, "reasons": list(self.reasons), "details": list(self.details),
                "skipped": list(self.skipped), "facts": facts}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items) if isinstance(value, (frozenset, set)) else items
    return value
