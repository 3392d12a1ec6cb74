"""Android Key Attestation against real device chains (android/keyattestation testdata, see NOTICE)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.android import AndroidPolicy, AppIdentity, verify_android
from mtls_proxy.attestation.chain import spki
from mtls_proxy.attestation.keydescription import (
    OID,
    AuthorizationList,
    KeyDescription,
    parse_key_description,
)
from mtls_proxy.attestation.result import Refusal
from mtls_proxy.attestation.roots import google_hardware_roots, google_software_roots
from mtls_proxy.attestation.status import StatusList, parse_status_list, shipped_status_list
from tests.support.attestation_vectors import ANDROID, AndroidVector, android, android_with_expected_parse

VERIFIED_DEVICES = ["tegu/sdk36/TEE_EC_2026_ROOT", "tegu/sdk36/SB_EC_2026_ROOT",
                    "caiman/sdk36/TEE_EC_RKP", "caiman/sdk36/SB_EC_RKP"]
UNLOCKED_DEVICES = ["akita/sdk34/SB_RSA_NONE", "akita/sdk34/TEE_EC_NONE", "akita/sdk34/TEE_RSA_NONE",
                    "akita/sdk34/TEE_RSA_NONE_USERAUTH", "blueline/sdk28/SB_RSA_NONE",
                    "blueline/sdk28/SB_RSA_NONE_USERAUTH", "blueline/sdk28/TEE_EC_NONE", "blueline/sdk28/TEE_RSA_NONE"]


def verify(vector: AndroidVector, **overrides: Any):
    args: dict[str, Any] = {
        "challenge": vector.challenge,
        "expected_public_key": spki(x509.load_pem_x509_certificates(vector.pem)[0]),
        "policy": AndroidPolicy((AppIdentity(vector.package, vector.signer_digests),)),
        "at": vector.created,
        "roots": google_hardware_roots(),
        "status": shipped_status_list(),
        "software_roots": google_software_roots(),
    }
    args.update(overrides)
    chain = args.pop("chain", vector.pem)
    return verify_android(chain, **args)


def leaf_key_description(pem: bytes) -> KeyDescription:
    leaf = x509.load_pem_x509_certificates(pem)[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID)).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    return parse_key_description(ext.value)


# -- our parse against android/keyattestation's expected parse (the sibling .json files) --

# JSON fields of the expected parse that this verifier does not model (unknown tags are skipped by
# design); every other field present must match exactly.
NOT_MODELLED = {"areTagsOrdered", "blockModes", "paddings", "rsaPublicExponent", "rsaOaepMgfDigests", "mlDsaVariant",
                "userAuthType", "authTimeout", "allowWhileOnBody", "trustedUserPresenceRequired",
                "trustedConfirmationRequired", "unlockedDeviceRequired", "rollbackResistant", "usageCountLimit",
                "activeDateTime", "originationExpireDateTime", "usageExpireDateTime", "attestationIdSerial",
                "attestationIdImei", "attestationIdSecondImei", "attestationIdMeid"}


def _list_as_json(a: AuthorizationList) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if a.purposes is not None:
        out["purposes"] = sorted(str(p) for p in a.purposes)
    if a.digests is not None:
        out["digests"] = sorted(str(d) for d in a.digests)
    for key, value in (("algorithms", a.algorithm), ("keySize", a.key_size), ("ecCurve", a.ec_curve),
                       ("creationDateTime", a.creation_date_time), ("osVersion", a.os_version),
                       ("osPatchLevel", a.os_patch_level), ("vendorPatchLevel", a.vendor_patch_level),
                       ("bootPatchLevel", a.boot_patch_level)):
        if value is not None:
            out[key] = str(value)
    for key, text in (("attestationIdBrand", a.brand), ("attestationIdDevice", a.device),
                      ("attestationIdProduct", a.product), ("attestationIdManufacturer", a.manufacturer),
                      ("attestationIdModel", a.model), ("origin", a.origin)):
        if text is not None:
            out[key] = text
    if a.no_auth_required:
        out["noAuthRequired"] = True
    if a.module_hash is not None:
        out["moduleHash"] = base64.b64encode(a.module_hash).decode()
    if a.root_of_trust is not None:
        rot = a.root_of_trust
        out["rootOfTrust"] = {"verifiedBootKey": base64.b64encode(rot.verified_boot_key).decode(),
                              "deviceLocked": rot.device_locked, "verifiedBootState": rot.verified_boot_state}
        if rot.verified_boot_hash is not None:
            out["rootOfTrust"]["verifiedBootHash"] = base64.b64encode(rot.verified_boot_hash).decode()
    if a.attestation_application_id is not None:
        app = a.attestation_application_id
        out["attestationApplicationId"] = {
            "packages": sorted(({"name": p.name, "version": str(p.version)} for p in app.packages),
                               key=lambda p: p["name"]),
            "signatures": sorted(base64.b64encode(d).decode() for d in app.signature_digests)}
    return out


def _normalize_expected(lst: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in lst.items() if k not in NOT_MODELLED}
    for key in ("purposes", "digests"):
        if key in out:
            out[key] = sorted(out[key])
    if "attestationApplicationId" in out:
        app = out["attestationApplicationId"]
        out["attestationApplicationId"] = {"packages": sorted(app["packages"], key=lambda p: p["name"]),
                                           "signatures": sorted(app["signatures"])}
    return out


PARSEABLE = [n for n in android_with_expected_parse() if not n.startswith("invalid/")]


@pytest.mark.parametrize("name", PARSEABLE)
def test_parse_matches_the_expected_parse(name: str):
    vector = android(name)
    kd = leaf_key_description(vector.pem)
    exp = vector.expected
    assert (str(kd.attestation_version), kd.attestation_security_level, str(kd.keymint_version),
            kd.keymint_security_level) == (exp["attestationVersion"], exp["attestationSecurityLevel"],
                                           exp["keyMintVersion"], exp["keyMintSecurityLevel"])
    assert base64.b64encode(kd.attestation_challenge).decode() == exp["attestationChallenge"]
    assert base64.b64encode(kd.unique_id).decode() == exp["uniqueId"]
    assert _list_as_json(kd.software_enforced) == _normalize_expected(exp["softwareEnforced"])
    assert _list_as_json(kd.hardware_enforced) == _normalize_expected(exp["hardwareEnforced"])


def test_the_vector_set_is_the_expected_one():
    """A vector lost in a copy would silently shrink the parametrized tests above."""
    assert len(PARSEABLE) == 19
    devices = {n.split("/")[0] for n in PARSEABLE}
    assert devices == {"akita", "blueline", "caiman", "marlin", "sony-xperia10-iii", "tegu"}


def test_unknown_tags_are_walked_past():
    """v400/v500 chains carry tags a fixed schema rejects (405, 723, 724): ignored, the rest parsed."""
    max_usage = leaf_key_description(android("tegu/sdk37/TEE_MAX_USAGE_COUNT").pem)
    assert 405 in max_usage.hardware_enforced.tags + max_usage.software_enforced.tags
    imei2 = leaf_key_description(android("akita/sdk34/TEE_RSA_BASE+IMEI").pem)
    assert 723 in imei2.hardware_enforced.tags
    tegu = leaf_key_description(android("tegu/sdk36/TEE_EC_2026_ROOT").pem)
    assert 724 in tegu.software_enforced.tags and tegu.software_enforced.module_hash


def test_unsorted_set_of_purposes_from_a_real_device_is_read():
    kd = leaf_key_description((ANDROID / "allow_while_on_body.pem").read_bytes())
    assert kd.hardware_enforced.purposes == frozenset({2, 3})
    assert 506 in kd.hardware_enforced.tags + kd.software_enforced.tags  # allowWhileOnBody: walked past


# -- verification of real chains --

@pytest.mark.parametrize("name", VERIFIED_DEVICES)
def test_real_locked_devices_verify_at_their_own_time(name: str):
    vector = android(name)
    verdict = verify(vector)
    assert verdict.ok, verdict
    assert verdict.reasons == () and verdict.skipped == ()
    facts = verdict.facts
    assert facts.security_level == vector.expected["attestationSecurityLevel"]
    assert facts.security_level in ("TRUSTED_ENVIRONMENT", "STRONG_BOX")
    assert (facts.device_locked, facts.boot_state) == (True, "VERIFIED")
    assert str(facts.os_patch_level) == vector.expected["hardwareEnforced"]["osPatchLevel"]
    assert facts.packages == (vector.package,)
    assert facts.origin == "GENERATED" and 2 in facts.purposes


def test_the_2025_ec_root_and_the_rsa_root_are_both_shipped():
    tegu, caiman = verify(android("tegu/sdk36/TEE_EC_2026_ROOT")), verify(android("caiman/sdk36/TEE_EC_RKP"))
    assert tegu.facts.anchor_subject == "C=US,O=Google LLC,OU=Android,CN=Key Attestation CA1"
    assert caiman.facts.anchor_subject == "2.5.4.5=f92009e853b6b045"


def test_anchor_is_matched_by_key_so_an_older_reissue_of_the_root_counts():
    """blueline carries the 2016 RSA root, which roots.json does not ship: same key as the shipped one."""
    verdict = verify(android("blueline/sdk28/TEE_EC_NONE"))
    assert verdict.facts.anchor_subject == "2.5.4.5=f92009e853b6b045"
    assert verdict.reasons == (R.DEVICE_UNLOCKED, R.BOOT_STATE_NOT_VERIFIED)


def test_injected_roots_replace_the_shipped_ones():
    ec_only = tuple(r for r in google_hardware_roots() if "Key Attestation CA1" in r.subject.rfc4514_string())
    assert verify(android("tegu/sdk36/TEE_EC_2026_ROOT"), roots=ec_only).ok
    assert verify(android("caiman/sdk36/TEE_EC_RKP"), roots=ec_only).reasons == (R.ROOT_UNTRUSTED,)


@pytest.mark.parametrize("name", UNLOCKED_DEVICES)
def test_unlocked_bootloaders_are_refused_for_boot_state(name: str):
    verdict = verify(android(name))
    assert verdict.reasons == (R.DEVICE_UNLOCKED, R.BOOT_STATE_NOT_VERIFIED)
    assert (verdict.facts.device_locked, verdict.facts.boot_state) == (False, "UNVERIFIED")


def test_preproduction_tegu_sdk37_is_refused_for_boot_state():
    assert verify(android("tegu/sdk37/TEE_MAX_USAGE_COUNT")).reasons == (R.DEVICE_UNLOCKED, R.BOOT_STATE_NOT_VERIFIED)


@pytest.mark.parametrize("name", ["marlin/sdk29/TEE_EC_NONE", "marlin/sdk29/TEE_RSA_NONE"])
def test_marlin_software_attestation_is_refused(name: str):
    vector = android(name)
    verdict = verify(vector)
    assert verdict.reasons == (R.ROOT_SOFTWARE,)
    # even if an operator trusted the software root by mistake, the key description says Software
    trusting = verify(vector, roots=google_software_roots())
    assert trusting.reasons == (R.SECURITY_LEVEL_SOFTWARE, R.SECURITY_LEVEL_MISMATCH, R.ROOT_OF_TRUST_MISSING)
    assert trusting.facts.security_level == "SOFTWARE"


def test_without_the_software_roots_marlin_is_simply_untrusted():
    assert verify(android("marlin/sdk29/TEE_EC_NONE"), software_roots=()).reasons == (R.ROOT_UNTRUSTED,)


def test_invalid_malformed_root_of_trust_boolean_is_refused():
    """deviceLocked encoded as BOOLEAN 0x01: BER, not DER. Google's parser reads it as true; we refuse."""
    pem = (ANDROID / "invalid" / "malformed_rot_device_locked.pem").read_bytes()
    verdict = verify_android(pem, challenge=b"", expected_public_key=None, policy=AndroidPolicy(()),
                             at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), roots=google_hardware_roots(),
                             status=shipped_status_list())
    assert verdict.reasons == (R.EXTENSION_MALFORMED,)
    assert "BOOLEAN encoded as 0x01" in verdict.details[0]


def test_invalid_tags_not_in_ascending_order_is_refused():
    pem = (ANDROID / "invalid" / "tags_not_in_ascending_order.pem").read_bytes()
    verdict = verify_android(pem, challenge=b"", expected_public_key=None, policy=AndroidPolicy(()),
                             at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), roots=google_hardware_roots(),
                             status=shipped_status_list())
    # the tags were reordered after signing, so the chain check refuses first ...
    assert verdict.reasons == (R.CHAIN_SIGNATURE_INVALID,)
    assert verdict.details == ("certificate 0: signature does not verify with its issuer's key (InvalidSignature)",)
    # ... and the extension on its own is refused for its order
    with pytest.raises(Refusal) as info:
        leaf_key_description(pem)
    assert info.value.reason == R.EXTENSION_TAGS_UNORDERED
    assert info.value.detail.startswith("hardwareEnforced: tag [1] after [2]")


def test_time_outside_the_chain_window_is_refused():
    vector = android("tegu/sdk36/TEE_EC_2026_ROOT")  # its attestation certificate: 2026-02-22 .. 2026-03-08
    assert verify(vector, at=dt.datetime(2026, 3, 9, tzinfo=dt.UTC)).reasons == (R.CHAIN_EXPIRED,)
    assert verify(vector, at=dt.datetime(2026, 2, 21, tzinfo=dt.UTC)).reasons == (R.CHAIN_NOT_YET_VALID,)


def test_a_factory_chain_past_its_intermediate_expiry_is_refused():
    """Sony's factory intermediate expired 2026-05-24; the key was made after. Google waives expiry of
    factory chains; we check every certificate but the leaf, as the issue demands."""
    vector = android("sony-xperia10-iii/sdk33/TEE_EC")
    assert verify(vector).reasons == (R.CHAIN_EXPIRED,)
    assert verify(vector, at=dt.datetime(2026, 5, 1, tzinfo=dt.UTC)).ok


def test_naive_time_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(android("caiman/sdk36/TEE_EC_RKP"), at=dt.datetime(2025, 9, 26))


# -- policy on a real chain --

def test_wrong_challenge_is_refused():
    assert verify(android("caiman/sdk36/TEE_EC_RKP"), challenge=b"another nonce").reasons == (R.CHALLENGE_MISMATCH,)


def test_a_key_other_than_the_csr_key_is_refused():
    other = x509.load_pem_x509_certificates(android("caiman/sdk36/SB_EC_RKP").pem)[0]
    verdict = verify(android("caiman/sdk36/TEE_EC_RKP"), expected_public_key=other.public_key())
    assert verdict.reasons == (R.KEY_MISMATCH,)


def test_without_an_expected_key_the_check_is_reported_skipped():
    verdict = verify(android("caiman/sdk36/TEE_EC_RKP"), expected_public_key=None)
    assert verdict.ok and verdict.skipped == ("leaf_key",)


def test_package_and_signer_digest_must_be_allowed():
    vector = android("caiman/sdk36/TEE_EC_RKP")
    wrong_package = AndroidPolicy((AppIdentity("com.example.other", vector.signer_digests),))
    assert verify(vector, policy=wrong_package).reasons == (R.PACKAGE_NOT_ALLOWED,)
    wrong_digest = AndroidPolicy((AppIdentity(vector.package, frozenset({b"\x00" * 32})),))
    assert verify(vector, policy=wrong_digest).reasons == (R.SIGNER_DIGEST_NOT_ALLOWED,)
    assert verify(vector, policy=AndroidPolicy(())).reasons == (R.PACKAGE_NOT_ALLOWED,)


def test_an_app_without_signers_is_refused():
    """akita TEE_RSA_BASE+IMEI was attested for "AndroidSystem" with no signing certificate digest."""
    vector = android("akita/sdk34/TEE_RSA_BASE+IMEI")
    verdict = verify(vector, policy=AndroidPolicy((AppIdentity("AndroidSystem", frozenset({b"\x01" * 32})),)))
    assert verdict.reasons == (R.DEVICE_UNLOCKED, R.BOOT_STATE_NOT_VERIFIED, R.SIGNER_DIGEST_NOT_ALLOWED)


def test_minimum_os_patch_level():
    vector = android("caiman/sdk36/TEE_EC_RKP")  # osPatchLevel 202511
    app = AndroidPolicy((AppIdentity(vector.package, vector.signer_digests),), min_os_patch_level=202511)
    assert verify(vector, policy=app).ok
    newer = AndroidPolicy(app.apps, min_os_patch_level=202512)
    verdict = verify(vector, policy=newer)
    assert verdict.reasons == (R.OS_PATCH_LEVEL_TOO_OLD,)
    assert verdict.details == ("osPatchLevel 202511 < 202512",)


# -- revocation status list --

def _caiman_serials() -> list[str]:
    certs = x509.load_pem_x509_certificates(android("caiman/sdk36/TEE_EC_RKP").pem)
    return [format(c.serial_number, "x") for c in certs]


def test_a_revoked_serial_refuses():
    serial = _caiman_serials()[2]  # Droid CA2
    status = parse_status_list(f'{{"entries": {{"{serial}": {{"status": "REVOKED", "reason": "KEY_COMPROMISE"}}}}}}',
                               "status.json")
    verdict = verify(android("caiman/sdk36/TEE_EC_RKP"), status=status)
    assert verdict.reasons == (R.SERIAL_REVOKED,)
    assert serial in verdict.details[0]


def test_a_suspended_serial_refuses_and_serials_are_normalized():
    serial = _caiman_serials()[1]
    status = parse_status_list(f'{{"entries": {{"00{serial.upper()}": {{"status": "SUSPENDED"}}}}}}', "status.json")
    assert verify(android("caiman/sdk36/TEE_EC_RKP"), status=status).reasons == (R.SERIAL_SUSPENDED,)


def test_the_shipped_snapshot_merges_with_a_configured_list():
    serial = _caiman_serials()[1]
    merged = shipped_status_list().merged(StatusList({serial: "REVOKED"}))
    assert merged.status_of("2c8cdddfd5e03bfc") == "REVOKED"  # from the shipped snapshot
    assert verify(android("caiman/sdk36/TEE_EC_RKP"), status=merged).reasons == (R.SERIAL_REVOKED,)
