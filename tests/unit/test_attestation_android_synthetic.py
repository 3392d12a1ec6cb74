"""Android Key Attestation negatives built under a test root (each asserts its exact reason code)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.android import AndroidPolicy, AppIdentity, verify_android
from mtls_proxy.attestation.status import StatusList
from tests.support import der_encode as D
from tests.support.attestation_pki import (
    CHALLENGE,
    NOW,
    PACKAGE,
    SIGNER_DIGEST,
    AndroidTestRoot,
    KeyDescriptionSpec,
    application_id,
    issue,
    key_description_extension,
    name,
    new_key,
    pem,
    root_of_trust,
)

POLICY = AndroidPolicy((AppIdentity(PACKAGE, frozenset({SIGNER_DIGEST})),))


@pytest.fixture(scope="module")
def root() -> AndroidTestRoot:
    return AndroidTestRoot()


@pytest.fixture(scope="module")
def device_key():
    return new_key()


def verify(root: AndroidTestRoot, chain: list[x509.Certificate] | bytes, expected_key: Any, **overrides: Any):
    args: dict[str, Any] = {"challenge": CHALLENGE, "expected_public_key": expected_key, "policy": POLICY,
                            "at": NOW, "roots": [root.root], "status": StatusList()}
    args.update(overrides)
    return verify_android(chain, **args)


def spec(**changes: Any) -> KeyDescriptionSpec:
    s = KeyDescriptionSpec()
    for key, value in changes.items():
        setattr(s, key, value)
    return s


def reasons(root: AndroidTestRoot, device_key: Any, s: KeyDescriptionSpec, **overrides: Any) -> tuple[str, ...]:
    return verify(root, root.chain(device_key.public_key(), s), device_key.public_key(), **overrides).reasons


def test_a_well_formed_chain_verifies(root, device_key):
    verdict = verify(root, pem(root.chain(device_key.public_key())), device_key.public_key())
    assert verdict.ok and verdict.reasons == () and verdict.skipped == ()
    assert verdict.facts.security_level == "TRUSTED_ENVIRONMENT" and verdict.facts.os_patch_level == 202601
    assert verdict.facts.packages == (PACKAGE,) and verdict.facts.signer_digests_hex == (SIGNER_DIGEST.hex(),)


def test_der_certificates_as_the_app_sends_them(root, device_key):
    ders = [c.public_bytes(serialization.Encoding.DER) for c in root.chain(device_key.public_key())]
    assert verify(root, ders, device_key.public_key()).ok
    assert verify(root, [b"junk", *ders[1:]], device_key.public_key()).reasons == (R.CHAIN_UNPARSABLE,)
    with pytest.raises(TypeError, match="not both"):
        verify(root, [ders[0], *root.chain(device_key.public_key())[1:]], device_key.public_key())


def test_strongbox_verifies(root, device_key):
    assert reasons(root, device_key, spec(security_level=2, keymint_security_level=2)) == ()


def test_unknown_and_new_tags_are_walked_past(root, device_key):
    s = spec()
    s.hw.update({405: D.integer(1), 723: D.octets(b"356938035643809"), 9999: D.sequence(D.null(), D.integer(-5))})
    s.sw[724] = D.octets(b"\x33" * 32)
    s.sw[40000] = D.octets(b"from the future")
    assert reasons(root, device_key, s) == ()


# -- the negatives the issue names --

def test_wrong_challenge(root, device_key):
    assert reasons(root, device_key, spec(challenge=b"an old nonce")) == (R.CHALLENGE_MISMATCH,)


def test_leaf_key_not_the_csr_key(root, device_key):
    chain = root.chain(device_key.public_key())
    verdict = verify(root, chain, new_key().public_key())
    assert verdict.reasons == (R.KEY_MISMATCH,)


def test_extension_in_an_intermediate(root, device_key):
    forged = issue(root.attestation.subject, root.attestation_key.public_key(), root.intermediate.subject,
                   root.intermediate_key, ca=True, extensions=[key_description_extension(KeyDescriptionSpec().der())])
    chain = root.chain(device_key.public_key())
    chain[1] = forged
    assert verify(root, chain, device_key.public_key()).reasons == (R.EXTENSION_IN_INTERMEDIATE,)


@pytest.mark.parametrize("with_forged_extension", [False, True])
def test_certificate_after_the_leaf(root, device_key, with_forged_extension: bool):
    """The attested (TEE) key signs a certificate for a key the attacker holds in software."""
    attacker = new_key()
    real = root.chain(device_key.public_key())
    extensions = [key_description_extension(KeyDescriptionSpec().der())] if with_forged_extension else []
    appended = issue(name("Android Keystore Key"), attacker.public_key(), real[0].subject, device_key, ca=None,
                     extensions=extensions)
    verdict = verify(root, [appended, *real], attacker.public_key())
    assert verdict.reasons == (R.CERTIFICATE_AFTER_LEAF,)


def test_revoked_serial(root, device_key):
    status = StatusList({format(root.intermediate.serial_number, "x"): "REVOKED"})
    assert reasons(root, device_key, spec(), status=status) == (R.SERIAL_REVOKED,)


def test_suspended_serial_of_the_attestation_key(root, device_key):
    status = StatusList({format(root.attestation.serial_number, "x"): "SUSPENDED"})
    assert reasons(root, device_key, spec(), status=status) == (R.SERIAL_SUSPENDED,)


def test_wrong_package(root, device_key):
    s = spec()
    s.sw[709] = application_id(packages=(("com.evil.clone", 1),))
    assert reasons(root, device_key, s) == (R.PACKAGE_NOT_ALLOWED,)
    other_policy = AndroidPolicy((AppIdentity("com.example.other", frozenset({SIGNER_DIGEST})),))
    assert reasons(root, device_key, spec(), policy=other_policy) == (R.PACKAGE_NOT_ALLOWED,)


def test_a_shared_uid_with_an_unlisted_package_is_refused(root, device_key):
    s = spec()
    s.sw[709] = application_id(packages=((PACKAGE, 7), ("com.example.plugin", 1)))
    assert reasons(root, device_key, s) == (R.PACKAGE_NOT_ALLOWED,)


def test_wrong_signer_digest(root, device_key):
    s = spec()
    s.sw[709] = application_id(digests=(b"\x99" * 32,))
    assert reasons(root, device_key, s) == (R.SIGNER_DIGEST_NOT_ALLOWED,)
    extra = spec()
    extra.sw[709] = application_id(digests=(SIGNER_DIGEST, b"\x98" * 32))
    assert reasons(root, device_key, extra) == (R.SIGNER_DIGEST_NOT_ALLOWED,)


def test_no_application_id(root, device_key):
    s = spec()
    del s.sw[709]
    assert reasons(root, device_key, s) == (R.APPLICATION_ID_MISSING,)


# -- the rest of the policy --

def test_software_security_level(root, device_key):
    assert reasons(root, device_key, spec(security_level=0, keymint_security_level=0)) == (R.SECURITY_LEVEL_SOFTWARE,)


def test_security_levels_must_agree(root, device_key):
    assert reasons(root, device_key, spec(keymint_security_level=2)) == (R.SECURITY_LEVEL_MISMATCH,)


def test_an_unknown_security_level_is_not_hardware(root, device_key):
    verdict = verify(root, root.chain(device_key.public_key(), spec(security_level=7, keymint_security_level=7)),
                     device_key.public_key())
    assert verdict.reasons == (R.SECURITY_LEVEL_SOFTWARE,)
    assert verdict.facts.security_level == "UNKNOWN(7)"


def test_imported_key(root, device_key):
    s = spec()
    s.hw[702] = D.integer(2)
    assert reasons(root, device_key, s) == (R.ORIGIN_NOT_GENERATED,)


def test_origin_claimed_only_in_software(root, device_key):
    s = spec()
    s.sw[702] = s.hw.pop(702)
    assert reasons(root, device_key, s) == (R.ORIGIN_NOT_GENERATED,)


def test_key_without_sign_purpose(root, device_key):
    s = spec()
    s.hw[1] = D.set_of(D.integer(3))
    assert reasons(root, device_key, s) == (R.PURPOSE_SIGN_MISSING,)


def test_root_of_trust_missing_or_only_in_software(root, device_key):
    s = spec()
    del s.hw[704]
    assert reasons(root, device_key, s) == (R.ROOT_OF_TRUST_MISSING,)
    s.sw[704] = root_of_trust()
    assert reasons(root, device_key, s) == (R.ROOT_OF_TRUST_MISSING,)


def test_unlocked_device(root, device_key):
    s = spec()
    s.hw[704] = root_of_trust(locked=False)
    assert reasons(root, device_key, s) == (R.DEVICE_UNLOCKED,)


@pytest.mark.parametrize("state", [1, 2, 3])
def test_boot_state_not_verified(root, device_key, state: int):
    s = spec()
    s.hw[704] = root_of_trust(state=state)
    assert reasons(root, device_key, s) == (R.BOOT_STATE_NOT_VERIFIED,)


def test_minimum_patch_level(root, device_key):
    strict = AndroidPolicy(POLICY.apps, min_os_patch_level=202602)
    assert reasons(root, device_key, spec(), policy=strict) == (R.OS_PATCH_LEVEL_TOO_OLD,)
    s = spec()
    del s.hw[706]
    assert reasons(root, device_key, s, policy=strict) == (R.OS_PATCH_LEVEL_MISSING,)


def test_every_failing_policy_check_is_listed(root, device_key):
    s = spec(challenge=b"x", security_level=0, keymint_security_level=0)
    s.hw[704] = root_of_trust(locked=False, state=2)
    assert reasons(root, device_key, s) == (R.SECURITY_LEVEL_SOFTWARE, R.CHALLENGE_MISMATCH, R.DEVICE_UNLOCKED,
                                            R.BOOT_STATE_NOT_VERIFIED)


# -- malformed extensions --

def test_ber_boolean_in_root_of_trust(root, device_key):
    s = spec()
    s.hw[704] = root_of_trust(locked_raw=0x01)
    assert reasons(root, device_key, s) == (R.EXTENSION_MALFORMED,)


def test_tags_out_of_order(root, device_key):
    s = spec()
    order = sorted(s.hw)
    order[0], order[1] = order[1], order[0]
    s.hw_order = order
    assert reasons(root, device_key, s) == (R.EXTENSION_TAGS_UNORDERED,)


def test_duplicate_tag(root, device_key):
    s = spec()
    s.hw_order = [*sorted(s.hw), 719]
    assert reasons(root, device_key, s) == (R.EXTENSION_TAGS_UNORDERED,)


@pytest.mark.parametrize("mangle", ["truncated", "seven_fields", "not_a_sequence", "universal_tag_in_list",
                                    "non_minimal_length", "indefinite_length", "trailing_bytes"])
def test_malformed_key_description(root, device_key, mangle: str):
    good = KeyDescriptionSpec().der()
    inner = good[2:] if good[1] < 0x80 else good[2 + (good[1] & 0x7F):]
    bad = {
        "truncated": good[:-3],
        "seven_fields": D.sequence(*[D.integer(1)] * 7),
        "not_a_sequence": D.octets(good),
        "universal_tag_in_list": D.sequence(D.integer(4), D.enumerated(1), D.integer(4), D.enumerated(1),
                                            D.octets(CHALLENGE), D.octets(b""), D.sequence(D.integer(1)),
                                            D.sequence()),
        "non_minimal_length": b"\x30\x84" + len(inner).to_bytes(4, "big") + inner,
        "indefinite_length": b"\x30\x80" + inner + b"\x00\x00",
        "trailing_bytes": good + b"\x00",
    }[mangle]
    leaf = issue(name("Android Keystore Key"), device_key.public_key(), root.attestation.subject,
                 root.attestation_key, ca=None, extensions=[key_description_extension(bad)])
    chain = [leaf, root.attestation, root.intermediate, root.root]
    verdict = verify(root, chain, device_key.public_key())
    assert verdict.reasons == (R.EXTENSION_MALFORMED,)
    assert verdict.details[0].startswith("KeyDescription: ")


def test_leaf_without_the_extension(root, device_key):
    leaf = issue(name("Android Keystore Key"), device_key.public_key(), root.attestation.subject,
                 root.attestation_key, ca=None)
    chain = [leaf, root.attestation, root.intermediate, root.root]
    assert verify(root, chain, device_key.public_key()).reasons == (R.EXTENSION_MISSING,)


# -- the path --

def test_leaf_signed_by_another_key(root, device_key):
    leaf = issue(name("Android Keystore Key"), device_key.public_key(), root.attestation.subject, new_key(),
                 ca=None, extensions=[key_description_extension(KeyDescriptionSpec().der())])
    chain = [leaf, root.attestation, root.intermediate, root.root]
    assert verify(root, chain, device_key.public_key()).reasons == (R.CHAIN_SIGNATURE_INVALID,)


def test_names_must_chain(root, device_key):
    leaf = issue(name("Android Keystore Key"), device_key.public_key(), name("Someone else"), root.attestation_key,
                 ca=None, extensions=[key_description_extension(KeyDescriptionSpec().der())])
    chain = [leaf, root.attestation, root.intermediate, root.root]
    assert verify(root, chain, device_key.public_key()).reasons == (R.CHAIN_NAME_MISMATCH,)


def test_another_root_is_untrusted(root, device_key):
    assert reasons(root, device_key, spec(), roots=[AndroidTestRoot().root]) == (R.ROOT_UNTRUSTED,)


def test_a_reissued_root_with_the_same_key_is_trusted(root, device_key):
    reissue = issue(root.root.subject, root.root_key.public_key(), root.root.subject, root.root_key, ca=True,
                    not_before=NOW + dt.timedelta(days=1000), not_after=NOW + dt.timedelta(days=2000))
    assert reasons(root, device_key, spec(), roots=[reissue]) == ()


def test_a_chain_without_its_root_is_refused(root, device_key):
    chain = root.chain(device_key.public_key())[:-1]
    assert verify(root, chain, device_key.public_key()).reasons == (R.ROOT_NOT_SELF_ISSUED,)


def test_a_single_certificate_is_too_short(root, device_key):
    chain = root.chain(device_key.public_key())[:1]
    assert verify(root, chain, device_key.public_key()).reasons == (R.CHAIN_TOO_SHORT,)


def test_an_expired_intermediate_is_refused(root, device_key):
    assert reasons(root, device_key, spec(), at=NOW + dt.timedelta(days=31)) == (R.CHAIN_EXPIRED,)
    assert reasons(root, device_key, spec(), at=NOW - dt.timedelta(days=31)) == (R.CHAIN_NOT_YET_VALID,)


def test_the_leaf_dates_are_the_device_s_and_not_checked(root, device_key):
    chain = root.chain(device_key.public_key(), not_after=NOW - dt.timedelta(days=1))
    assert verify(root, chain, device_key.public_key()).ok
