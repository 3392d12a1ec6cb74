"""iOS App Attest against real attestation objects and assertions (veehaitch, node-app-attest; see NOTICE)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.ios import client_data_hash, verify_ios_assertion, verify_ios_attestation
from mtls_proxy.attestation.roots import apple_app_attestation_roots, google_hardware_roots
from tests.support.attestation_vectors import (
    VEEHAITCH_VERSIONS,
    IosVector,
    node_app_attest,
    veehaitch_attestation,
    veehaitch_documents,
)

REAL = [*(veehaitch_attestation(v) for v in VEEHAITCH_VERSIONS), node_app_attest("production"),
        node_app_attest("development")]


def verify(vector: IosVector, **overrides: Any):
    args: dict[str, Any] = {"key_id": vector.key_id, "client_data_hash": vector.client_data_hash,
                            "app_ids": [vector.app_id], "environment": vector.environment, "at": vector.at,
                            "roots": apple_app_attestation_roots()}
    args.update(overrides)
    return verify_ios_attestation(args.pop("attestation", vector.attestation), **args)


@pytest.mark.parametrize("vector", REAL, ids=lambda v: v.name)
def test_real_attestations_verify_with_their_team_and_bundle_id(vector: IosVector):
    verdict = verify(vector)
    assert verdict.ok, verdict
    assert verdict.facts.app_id == vector.app_id
    assert verdict.facts.environment == vector.environment
    assert verdict.facts.counter == 0
    if vector.public_key_pem is not None:  # veehaitch records the attested key
        expected = serialization.load_pem_public_key(vector.public_key_pem)
        assert verdict.facts.public_key == expected.public_bytes(serialization.Encoding.DER,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_production_vector_is_production():
    vector = node_app_attest("production")
    assert verify(vector).facts.aaguid == b"appattest" + b"\x00" * 7
    assert verify(vector, environment="development").reasons == (R.AAGUID_MISMATCH,)


def test_a_development_key_is_refused_for_production():
    assert verify(veehaitch_attestation("14.4"), environment="production").reasons == (R.AAGUID_MISMATCH,)


def test_wrong_app_id_is_refused():
    vector = veehaitch_attestation("14.4")
    verdict = verify(vector, app_ids=["6MURL8TA57.com.example.other"])
    assert verdict.reasons == (R.RP_ID_MISMATCH,)
    assert verdict.facts.app_id is None
    team_swapped = verify(node_app_attest("production"), app_ids=["AAAAAAAAAA.io.uebelacker.AppAttestExample"])
    assert team_swapped.reasons == (R.RP_ID_MISMATCH,)


def test_another_client_data_hash_is_a_nonce_mismatch():
    """The CSR binding: evidence made for one CSR does not pass for another."""
    vector = node_app_attest("production")
    verdict = verify(vector, client_data_hash=client_data_hash(b"challenge", b"another CSR"))
    assert verdict.reasons == (R.NONCE_MISMATCH,)


def test_another_key_id_is_refused():
    other = veehaitch_attestation("14.2").key_id
    assert verify(veehaitch_attestation("14.4"), key_id=other).reasons == (R.KEY_ID_MISMATCH, R.CREDENTIAL_ID_MISMATCH)


def test_time_outside_the_credential_certificate_is_refused():
    vector = node_app_attest("production")  # credential certificate 2024-02-06 .. 2024-12-21
    assert verify(vector, at=dt.datetime(2024, 12, 22, tzinfo=dt.UTC)).reasons == (R.CHAIN_EXPIRED,)
    assert verify(vector, at=dt.datetime(2024, 2, 5, tzinfo=dt.UTC)).reasons == (R.CHAIN_NOT_YET_VALID,)


def test_other_roots_do_not_anchor_app_attest():
    assert verify(node_app_attest("production"), roots=google_hardware_roots()).reasons == (R.ROOT_UNTRUSTED,)


def test_unparsable_and_foreign_formats_are_refused():
    vector = node_app_attest("production")
    assert verify(vector, attestation=b"\xff\x00").reasons == (R.ATTESTATION_UNPARSABLE,)
    assert verify(vector, attestation=vector.attestation + b"\x00").reasons == (R.ATTESTATION_UNPARSABLE,)
    obj = cbor2.loads(vector.attestation)
    assert verify(vector, attestation=cbor2.dumps({**obj, "fmt": "packed"})).reasons == (R.FORMAT_NOT_APPLE_APPATTEST,)
    assert verify(vector, attestation=cbor2.dumps({**obj, "attStmt": {}})).reasons == (R.ATTESTATION_UNPARSABLE,)
    truncated = {**obj, "authData": obj["authData"][:40]}
    assert verify(vector, attestation=cbor2.dumps(truncated)).reasons == (R.AUTH_DATA_MALFORMED,)


def test_x5c_in_the_wrong_order_is_refused():
    vector = node_app_attest("production")
    obj = cbor2.loads(vector.attestation)
    swapped = {**obj, "attStmt": {**obj["attStmt"], "x5c": list(reversed(obj["attStmt"]["x5c"]))}}
    # the top (the credential certificate) is not issued by an anchor
    assert verify(vector, attestation=cbor2.dumps(swapped)).reasons == (R.ROOT_UNTRUSTED,)


def test_an_unknown_environment_is_a_programming_error():
    with pytest.raises(ValueError, match="environment must be one of development, production"):
        verify(node_app_attest("production"), environment="staging")


def test_client_data_hash_binds_challenge_and_csr():
    assert client_data_hash(b"nonce", b"csr") == hashlib.sha256(b"noncecsr").digest()


# -- assertions (renewal) --

def _assertion(version: str) -> dict[str, Any]:
    return next(d for d in veehaitch_documents(version) if d and d.get("type") == "assertion")


def _verify_assertion(doc: dict[str, Any], **overrides: Any):
    args: dict[str, Any] = {
        "public_key": serialization.load_pem_public_key(doc["publicKey"].encode()),
        "client_data_hash": hashlib.sha256(base64.b64decode(doc["clientDataBase64"])).digest(),
        "app_ids": [f"{doc['teamIdentifier']}.{doc['bundleIdentifier']}"],
        "last_counter": 0,
    }
    args.update(overrides)
    return verify_ios_assertion(args.pop("assertion", base64.b64decode(doc["assertionBase64"])), **args)


@pytest.mark.parametrize("version", VEEHAITCH_VERSIONS)
def test_real_assertions_verify_with_an_increasing_counter(version: str):
    doc = _assertion(version)
    verdict = _verify_assertion(doc)
    assert verdict.ok, verdict
    assert verdict.facts.counter == doc["counter"] == 1


def test_assertion_with_the_public_key_from_the_attestation():
    attested = verify(veehaitch_attestation("14.4")).facts.public_key
    assert _verify_assertion(_assertion("14.4"), public_key=attested).ok


def test_a_replayed_assertion_is_refused():
    verdict = _verify_assertion(_assertion("14.4"), last_counter=1)
    assert verdict.reasons == (R.COUNTER_NOT_INCREASING,)
    assert verdict.details == ("counter 1 is not above the last seen 1",)


def test_an_assertion_for_other_client_data_is_refused():
    verdict = _verify_assertion(_assertion("14.4"), client_data_hash=client_data_hash(b"x", b"y"))
    assert verdict.reasons == (R.ASSERTION_SIGNATURE_INVALID,)


def test_an_assertion_by_another_key_is_refused():
    other_key = serialization.load_pem_public_key(_assertion("14.2")["publicKey"].encode())
    assert _verify_assertion(_assertion("14.4"), public_key=other_key).reasons == (R.ASSERTION_SIGNATURE_INVALID,)


def test_an_assertion_for_another_app_is_refused():
    verdict = _verify_assertion(_assertion("14.4"), app_ids=["6MURL8TA57.com.example.other"])
    assert verdict.reasons == (R.RP_ID_MISMATCH,)


def test_an_unparsable_assertion_is_refused():
    assert _verify_assertion(_assertion("14.4"), assertion=b"garbage").reasons == (R.ASSERTION_UNPARSABLE,)
    assert _verify_assertion(_assertion("14.4"), assertion=cbor2.dumps({"signature": 1})).reasons == (
        R.ASSERTION_UNPARSABLE,)
