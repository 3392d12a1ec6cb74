"""``MTLS_ENROLLMENT`` validation: every problem names its key path; what loads is compiled once."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from mtls_proxy.attestation.roots import apple_app_attestation_roots, google_hardware_roots
from mtls_proxy.django.enrollment.conf import load_settings
from mtls_proxy.pki import PkiStore

DIGEST = hashlib.sha256(b"signing cert").digest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiStore:
    store = PkiStore(tmp_path_factory.mktemp("conf") / "pki")
    store.init(issuing_ca=True)
    return store


def base(pki: PkiStore, **extra: Any) -> dict[str, Any]:
    return {"ISSUING_CA_CERT_FILE": str(pki.issuing_ca_cert_path), "ISSUING_CA_KEY_FILE": str(pki.issuing_ca_key_path),
            "ANDROID_APPS": [{"package": "com.example.app", "signer_digests": [DIGEST.hex()]}], **extra}


def problem(raw: Any) -> str:
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(raw)
    return str(info.value)


def test_defaults(pki: PkiStore) -> None:
    conf = load_settings(base(pki))
    assert conf.issuing_ca.cert == pki.issuing_ca().cert
    assert (conf.cert_validity, conf.crl_next_update, conf.challenge_ttl) == (
        dt.timedelta(days=7), dt.timedelta(hours=1), dt.timedelta(minutes=5))
    assert conf.platforms == ("android",)
    assert conf.android_roots == google_hardware_roots() and conf.ios_roots == apple_app_attestation_roots()
    assert conf.android_policy is not None and conf.android_policy.apps[0].signer_digests == {DIGEST}


def test_digests_in_hex_with_colons_and_base64(pki: PkiStore) -> None:
    import base64

    for text in (":".join(f"{b:02X}" for b in DIGEST), base64.b64encode(DIGEST).decode()):
        apps = [{"package": "p", "signer_digests": [text]}]
        policy = load_settings(base(pki, ANDROID_APPS=apps)).android_policy
        assert policy is not None and policy.apps[0].signer_digests == {DIGEST}


def test_missing_and_unknown(pki: PkiStore) -> None:
    assert problem(None) == ("settings.MTLS_ENROLLMENT is missing; it needs at least ISSUING_CA_CERT_FILE and "
                             "ISSUING_CA_KEY_FILE")
    raw = base(pki)
    del raw["ISSUING_CA_KEY_FILE"]
    assert problem(raw).startswith("MTLS_ENROLLMENT needs ISSUING_CA_KEY_FILE (")
    assert problem(base(pki, CERT_DAYS=7)) == "MTLS_ENROLLMENT has unknown keys: CERT_DAYS"
    assert problem(base(pki, ANDROID_APPS=[])) == ("MTLS_ENROLLMENT: configure ANDROID_APPS or IOS_APP_IDS (or both): "
                                                   "without an allowed app no evidence can pass")


def test_key_paths_in_messages(pki: PkiStore, tmp_path: Path) -> None:
    bad_digest = [{"package": "p", "signer_digests": ["abcd"]}]
    assert problem(base(pki, ANDROID_APPS=bad_digest)) == (
        "MTLS_ENROLLMENT['ANDROID_APPS'][0]['signer_digests']: 'abcd' is not a SHA-256 digest "
        "(64 hex digits or base64)")
    assert problem(base(pki, ANDROID_APPS=[{"package": "p"}])).startswith("MTLS_ENROLLMENT['ANDROID_APPS'][0] must be")
    assert problem(base(pki, IOS_APP_IDS=["com.example.app"])) == (
        "MTLS_ENROLLMENT['IOS_APP_IDS'][0]: 'com.example.app' is not TEAMID.bundle.id")
    assert problem(base(pki, IOS_ENVIRONMENT="staging")) == (
        "MTLS_ENROLLMENT['IOS_ENVIRONMENT'] must be one of development, production")
    assert problem(base(pki, CERT_VALIDITY_DAYS=0)) == (
        "MTLS_ENROLLMENT['CERT_VALIDITY_DAYS'] must be a number in (0, 397], not 0")
    assert problem(base(pki, CRL_NEXT_UPDATE_SECONDS=30)).startswith(
        "MTLS_ENROLLMENT['CRL_NEXT_UPDATE_SECONDS'] must be at least 60")
    assert problem(base(pki, CHALLENGES_PER_HOUR=True)) == (
        "MTLS_ENROLLMENT['CHALLENGES_PER_HOUR'] must be an integer in 1..100000, not True")
    assert problem(base(pki, ANDROID_ROOTS_FILE=str(tmp_path / "none.pem"))).startswith(
        "MTLS_ENROLLMENT['ANDROID_ROOTS_FILE']: ")
    (tmp_path / "status.json").write_text('{"entries": {"zz": {"status": "REVOKED"}}}')
    assert problem(base(pki, ANDROID_STATUS_FILE=str(tmp_path / "status.json"))).startswith(
        "MTLS_ENROLLMENT['ANDROID_STATUS_FILE']: ")
    assert problem(base(pki, USER_AUTHENTICATION_CLASSES=["no.such.Class"])).startswith(
        "MTLS_ENROLLMENT['USER_AUTHENTICATION_CLASSES'][0]: ")


def test_ca_files_must_be_a_matching_ca(pki: PkiStore) -> None:
    mismatched = base(pki, ISSUING_CA_KEY_FILE=str(pki.ca_key_path))
    assert problem(mismatched) == (f"MTLS_ENROLLMENT['ISSUING_CA_KEY_FILE']: {pki.ca_key_path} does not belong to "
                                   f"{pki.issuing_ca_cert_path}")
    leaf = pki.issue_client("not-a-ca")
    assert problem(base(pki, ISSUING_CA_CERT_FILE=str(leaf.cert_path), ISSUING_CA_KEY_FILE=str(leaf.key_path))) == (
        f"MTLS_ENROLLMENT['ISSUING_CA_CERT_FILE']: {leaf.cert_path} is not a CA certificate")
    assert problem(base(pki, ISSUING_CA_CERT_FILE="/nonexistent/ca.pem")).startswith(
        "MTLS_ENROLLMENT['ISSUING_CA_CERT_FILE']: /nonexistent/ca.pem: ")
