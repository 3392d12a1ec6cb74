"""The strict DER reader under the KeyDescription walk and the App Attest nonce."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from mtls_proxy.attestation import der
from mtls_proxy.attestation.android import AndroidPolicy, verify_android
from mtls_proxy.attestation.ios import verify_ios_attestation
from mtls_proxy.attestation.keydescription import parse_key_description
from mtls_proxy.attestation.result import Refusal
from mtls_proxy.attestation.roots import apple_app_attestation_roots, google_hardware_roots
from mtls_proxy.attestation.status import StatusList
from tests.support import der_encode as D
from tests.support.attestation_vectors import android, node_app_attest


@given(st.integers(min_value=-(2**200), max_value=2**200))
def test_integers_round_trip(n: int):
    assert der.integer(der.parse(D.integer(n))) == n


@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=300))
def test_tags_and_lengths_round_trip(number: int, content: bytes):
    tlv = der.parse(D.tlv(D.CONTEXT, True, number, content))
    assert (tlv.cls, tlv.constructed, tlv.number, tlv.content) == (der.CONTEXT, True, number, content)


@pytest.mark.parametrize("data, message", [
    (b"", "truncated: tag expected"),
    (b"\x04", "truncated: length expected"),
    (b"\x04\x02\x00", "truncated content"),
    (b"\x04\x80\x00\x00", "indefinite length is not DER"),
    (b"\x04\x81\x01\x00", "long form used for a short length"),
    (b"\x04\x82\x00\x81" + b"\x00" * 0x81, "non-minimal length"),
    (b"\x04\x85\x01\x00\x00\x00\x00", "length too large"),
    (b"\xbf\x80\x01\x00", "non-minimal tag number"),
    (b"\xbf\x1e\x00", "high tag form used for a low tag number"),
    (b"\xbf\x85", "truncated tag number"),
    (b"\x04\x00\x00", "trailing bytes after the element"),
])
def test_framing_errors(data: bytes, message: str):
    with pytest.raises(der.DerError, match=f"^{message}$"):
        der.parse(data)


@pytest.mark.parametrize("data, message", [
    (b"\x02\x00", "empty INTEGER"),
    (b"\x02\x02\x00\x01", "non-minimal INTEGER"),
    (b"\x02\x02\xff\x80", "non-minimal INTEGER"),
    (b"\x0a\x01\x01", "INTEGER expected"),
])
def test_integer_errors(data: bytes, message: str):
    with pytest.raises(der.DerError, match=f"^{message}$"):
        der.integer(der.parse(data))


def test_enumerated_is_not_an_integer():
    assert der.integer(der.parse(b"\x0a\x01\x02"), enumerated=True) == 2
    with pytest.raises(der.DerError, match=r"^ENUMERATED expected$"):
        der.integer(der.parse(b"\x02\x01\x02"), enumerated=True)


@pytest.mark.parametrize("raw, value", [(0x00, False), (0xFF, True)])
def test_der_booleans(raw: int, value: bool):
    assert der.boolean(der.parse(bytes([1, 1, raw]))) is value


@pytest.mark.parametrize("raw", [0x01, 0x7F, 0xFE])
def test_ber_booleans_are_refused(raw: int):
    with pytest.raises(der.DerError, match=r"^BOOLEAN encoded as 0x.. \(DER allows only 0x00 and 0xff\)$"):
        der.boolean(der.parse(bytes([1, 1, raw])))


def test_typed_readers_check_the_type():
    with pytest.raises(der.DerError, match=r"^OCTET STRING expected$"):
        der.octets(der.parse(D.null()))
    with pytest.raises(der.DerError, match=r"^NULL expected$"):
        der.null(der.parse(b"\x05\x01\x00"))
    with pytest.raises(der.DerError, match=r"^SEQUENCE expected$"):
        der.sequence(der.parse(D.set_of()))
    with pytest.raises(der.DerError, match=r"^SET expected$"):
        der.set_of(der.parse(D.sequence()))
    with pytest.raises(der.DerError, match=r"^EXPLICIT tag must be constructed$"):
        der.explicit(der.parse(D.tlv(D.CONTEXT, False, 1, b"\x00")))
    with pytest.raises(der.DerError, match=r"^trailing bytes after the element$"):
        der.explicit(der.parse(D.tlv(D.CONTEXT, True, 1, D.null() + D.null())))


def test_set_of_order_is_tolerated():
    """Real KeyMint emits purposes {3, 2}: a set reads the same in any order."""
    unsorted = D.tlv(D.UNIVERSAL, True, 17, D.integer(3) + D.integer(2))
    assert [der.integer(i) for i in der.set_of(der.parse(unsorted))] == [3, 2]


@given(st.binary(max_size=400))
def test_key_description_parser_only_ever_refuses(data: bytes):
    with contextlib.suppress(Refusal):  # anything else raised fails the test
        parse_key_description(data)


@given(st.binary(max_size=400))
def test_app_attest_verifier_only_ever_refuses(data: bytes):
    verdict = verify_ios_attestation(data, key_id=b"k", client_data_hash=b"c", app_ids=["T.b"],
                                     environment="production", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), roots=[])
    assert not verdict.ok and len(verdict.reasons) == 1


def _mutations():
    return st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1,
                    max_size=4)


def _mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out)


@given(_mutations())
def test_mutated_real_key_descriptions_parse_or_refuse(changes: list[tuple[int, int]]):
    leaf = x509.load_pem_x509_certificates(android("tegu/sdk36/TEE_EC_2026_ROOT").pem)[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.1.17")).value
    with contextlib.suppress(Refusal):
        parse_key_description(_mutate(ext.value, changes))


@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
@given(_mutations())
def test_mutated_real_app_attest_objects_give_a_verdict(changes: list[tuple[int, int]]):
    v = node_app_attest("production")
    verdict = verify_ios_attestation(_mutate(v.attestation, changes), key_id=v.key_id,
                                     client_data_hash=v.client_data_hash, app_ids=[v.app_id],
                                     environment=v.environment, at=v.at, roots=apple_app_attestation_roots())
    assert verdict.ok == (verdict.reasons == ())


def test_oversized_objects_are_refused():
    verdict = verify_ios_attestation(b"\xa0" + b"\x00" * 70000, key_id=b"k", client_data_hash=b"c", app_ids=["T.b"],
                                     environment="production", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), roots=[])
    assert verdict.reasons == ("attestation_unparsable",)
    assert verdict.details == ("70001 bytes, more than 65536",)


@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
@given(st.integers(min_value=0, max_value=4), _mutations())
def test_mutated_real_android_chains_give_a_verdict(index: int, changes: list[tuple[int, int]]):
    vector = android("tegu/sdk36/TEE_EC_2026_ROOT")
    ders = [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(vector.pem)]
    ders[index] = _mutate(ders[index], changes)
    pem = b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
                   for d in ders)
    verdict = verify_android(pem, challenge=vector.challenge, expected_public_key=None, policy=AndroidPolicy(()),
                             at=vector.created, roots=google_hardware_roots(), status=StatusList())
    assert not verdict.ok  # the empty allow-list refuses even an intact chain
