"""The identity header contract: encode on the proxy side, verify on the Django side, no sockets."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy import identity
from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.identity import (
    PROXY_SET_HEADER_KEYS,
    IdentityEncoder,
    IdentityError,
    IdentityOptions,
    NonceCache,
    RequestBinding,
    decode_unsigned,
    generate_signing_key,
    header_key,
    load_signing_key,
    verify_identity,
)
from mtls_proxy.pki.x509 import issue_ca, issue_client

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_800_000_000.0
ODD_CN = 'dév,ice=42 100% +"quoted"; <x> #1 \\ 日本 \x01ctl'
SIGNATURE_RE = re.compile(r"\Av2;k=[0-9a-f]{16};t=\d+;n=[0-9a-f]{32};s=[A-Za-z0-9_-]{43}\Z")
TARGET = b"/api/echo/a%2Fb?x=%20&y=1"
HOST = b"api.example:8443"
REQ = RequestBinding(b"GET", TARGET, HOST, b"none")
SF_BINARY_RE = re.compile(rb"\A:[A-Za-z0-9+/]+={0,2}:\Z")


def _der(issued: object) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pki() -> tuple[PeerIdentity, PeerIdentity]:
    """(peer with odd subject + every SAN type + chain, plain peer without SAN)."""
    root = issue_ca({"CN": "Root, Test=CA", "O": "Acme"})
    inter = issue_ca({"CN": "Devices CA", "O": "Acme"}, issuer=root)
    odd = issue_client(
        {"CN": ODD_CN, "O": "Acme, Inc.", "OU": "Mobile=App"},
        inter,
        dns=["device-42.devices.example", "alt.example"],
        ips=["10.1.2.3", "2001:db8::1"],
        uris=["spiffe://acme/device/42?x=1,y=2", "urn:uuid:0c8d7e6a-8a3b-4c47-9c39-1f1d8e6a4b2f"],
        emails=["dev+42@example.com"],
    )
    plain = issue_client("plain-device", root)
    return parse_peer(_der(odd), chain_der=(_der(inter), _der(root))), parse_peer(_der(plain))


def as_mapping(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """What Django hands the middleware: header_key -> value, duplicates joined with ','."""
    out: dict[str, str] = {}
    for name, value in pairs:
        key, text = header_key(name), value.decode("latin-1")
        out[key] = f"{out[key]},{text}" if key in out else text
    return out


def sign(encoder: IdentityEncoder, conn: tuple[tuple[bytes, bytes], ...], *, method: bytes = b"GET",
         target: bytes = TARGET, host: bytes = HOST, content_length: int | None = None, chunked: bool = False,
         now: float | None = NOW) -> tuple[tuple[bytes, bytes], ...]:
    return encoder.request_headers(conn, method=method, target=target, host=host, content_length=content_length,
                                   chunked=chunked, now=now)


def signed(peer: PeerIdentity, *, method: bytes = b"GET", now: float = NOW, **options: object) -> dict[str, str]:
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY, **options))  # type: ignore[arg-type]
    return as_mapping(sign(encoder, encoder.connection_headers(peer), method=method, now=now))


def reason(headers: dict[str, str], **kwargs: object) -> str:
    params: dict[str, object] = {"request": REQ, "keys": KEY, "now": NOW + 1, **kwargs}
    with pytest.raises(IdentityError) as info:
        verify_identity(headers, **params)  # type: ignore[arg-type]
    return info.value.reason


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_odd_subject_and_every_san_type(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    headers = signed(peer, rfc9440=True, rfc9440_chain=True)
    cert = verify_identity(headers, request=REQ, keys=KEY, now=NOW + 1, seen_nonce=NonceCache())

    assert cert.subject == peer.subject_dn
    assert cert.subject_attributes["CN"] == (ODD_CN,)
    assert cert.subject_attributes["O"] == ("Acme, Inc.",)
    assert cert.subject_attributes["OU"] == ("Mobile=App",)
    assert cert.common_name == ODD_CN
    assert cert.issuer == peer.issuer_dn
    assert cert.serial == format(peer.serial, "x")
    assert cert.fingerprint == peer.fingerprint_sha256
    assert cert.spki == peer.spki_sha256
    assert cert.not_after == peer.not_after.replace(microsecond=0)
    assert cert.san_dns == peer.san_dns == ("device-42.devices.example", "alt.example")
    assert cert.san_uri == peer.san_uri
    assert cert.san_email == ("dev+42@example.com",)
    assert cert.san_ip == ("10.1.2.3", "2001:db8::1")
    assert cert.der == peer.der
    assert cert.chain_der == peer.chain_der
    json.dumps(cert.as_dict())  # JSON-friendly


def test_every_header_value_is_printable_ascii_without_separators(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY, rfc9440=True, rfc9440_chain=True))
    pairs = sign(encoder, encoder.connection_headers(peer), method=b"POST")
    for name, value in pairs:
        assert re.fullmatch(rb"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?", value), (name, value)
    values = dict(pairs)
    # Percent-encoding keeps structure characters out of the DN and the SAN values.
    assert b"," not in values[b"X-Client-Cert-Subject"] and b"=" not in values[b"X-Client-Cert-Subject"]
    san_entries = values[b"X-Client-Cert-SAN"].split(b",")
    assert [e.split(b"=", 1)[0] for e in san_entries] == [b"DNS", b"DNS", b"URI", b"URI", b"email", b"IP", b"IP"]
    assert all(e.count(b"=") == 1 for e in san_entries)
    assert values[b"X-Client-Cert-Not-After"] == peer.not_after.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    assert values[b"X-Client-Cert-Serial"] == format(peer.serial, "x").encode()
    assert SIGNATURE_RE.match(values[b"X-Client-Cert-Signature"].decode())


def test_certificate_without_san_omits_the_header(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    _, plain = pki
    headers = signed(plain)
    assert "x-client-cert-san" not in headers
    cert = verify_identity(headers, request=REQ, keys=KEY, now=NOW)
    assert cert.common_name == "plain-device"
    assert cert.san_dns == cert.san_uri == cert.san_email == cert.san_ip == ()
    assert cert.der is None


def test_rfc9440_format(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    encoder = IdentityEncoder(IdentityOptions(rfc9440=True, rfc9440_chain=True))
    values = dict(encoder.connection_headers(peer))
    assert SF_BINARY_RE.match(values[b"Client-Cert"])
    assert base64.b64decode(values[b"Client-Cert"][1:-1]) == peer.der
    chain = values[b"Client-Cert-Chain"].split(b", ")
    assert len(chain) == 2  # leaf excluded
    assert all(SF_BINARY_RE.match(item) for item in chain)
    assert [base64.b64decode(item[1:-1]) for item in chain] == list(peer.chain_der)

    assert b"Client-Cert" not in dict(IdentityEncoder(IdentityOptions()).connection_headers(peer))
    no_chain = dict(IdentityEncoder(IdentityOptions(rfc9440=True)).connection_headers(peer))
    assert b"Client-Cert" in no_chain and b"Client-Cert-Chain" not in no_chain


def test_disabled_encoder_and_unsigned_request_headers(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    assert IdentityEncoder(IdentityOptions(enabled=False)).connection_headers(peer) == ()
    unsigned = IdentityEncoder(IdentityOptions())
    conn = unsigned.connection_headers(peer)
    assert sign(unsigned, conn) is conn  # nothing to add: no copy on the hot path
    cert = decode_unsigned(as_mapping(conn))
    assert cert.subject == peer.subject_dn and cert.san_ip == peer.san_ip


def test_plain_tuple_connection_headers_sign_the_same(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY))
    conn = tuple(encoder.connection_headers(peer))  # e.g. rebuilt by the caller
    headers = as_mapping(sign(encoder, conn, method=b"get"))
    assert verify_identity(headers, request=REQ, keys=KEY, now=NOW).subject == peer.subject_dn


def test_signature_changes_per_request(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    first, second = signed(peer), signed(peer)
    assert first["x-client-cert-signature"] != second["x-client-cert-signature"]  # fresh nonce


# --- rejection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("x-client-cert-subject", "CN%3Dadmin"),
        ("x-client-cert-fingerprint", "0" * 64),
        ("x-client-cert-san", "DNS=evil.example"),
        ("x-client-cert-not-after", "2099-01-01T00:00:00Z"),
        ("client-cert", ":AAAA:"),
    ],
)
def test_tampered_or_added_value_is_bad_signature(
    pki: tuple[PeerIdentity, PeerIdentity], key: str, value: str
) -> None:
    headers = signed(pki[1])  # no SAN, no Client-Cert: adding them must also break the signature
    headers[key] = value
    assert reason(headers) == "bad_signature"


def test_duplicate_header_joined_by_django_is_bad_signature(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    headers["x-client-cert-subject"] += ",CN%3Dadmin"
    assert reason(headers) == "bad_signature"


@pytest.mark.parametrize(
    "other",
    [
        RequestBinding(b"DELETE", TARGET, HOST, b"none"),
        RequestBinding(b"POST", TARGET, HOST, b"none"),
        RequestBinding(b"GET", b"/api/echo/a/b?x=%20&y=1", HOST, b"none"),  # decoded %2F
        RequestBinding(b"GET", b"/api/echo/a%2fb?x=%20&y=1", HOST, b"none"),  # other hex case
        RequestBinding(b"GET", b"/api/echo/transfer?x=%20&y=1", HOST, b"none"),  # other path
        RequestBinding(b"GET", b"/api/echo/a%2Fb?x=%20&y=2", HOST, b"none"),  # other query
        RequestBinding(b"GET", b"/api/echo/a%2Fb", HOST, b"none"),  # query dropped
        RequestBinding(b"GET", TARGET, b"api.example", b"none"),  # other port
        RequestBinding(b"GET", TARGET, b"evil.example:8443", b"none"),  # other host
        RequestBinding(b"GET", TARGET, HOST, b"length=0"),  # a body appears
        RequestBinding(b"GET", TARGET, HOST, b"chunked"),
    ],
)
def test_any_other_request_is_bad_signature(pki: tuple[PeerIdentity, PeerIdentity], other: RequestBinding) -> None:
    assert reason(signed(pki[0]), request=other) == "bad_signature"


def test_body_length_is_signed(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY))
    headers = as_mapping(sign(encoder, encoder.connection_headers(pki[0]), method=b"POST", content_length=5))
    post = RequestBinding(b"POST", TARGET, HOST, b"length=5")
    assert verify_identity(headers, request=post, keys=KEY, now=NOW).serial
    for framing in (b"length=6", b"length=50", b"chunked", b"none", b"length=05"):
        assert reason(headers, request=RequestBinding(b"POST", TARGET, HOST, framing)) == "bad_signature"
    chunked = as_mapping(sign(encoder, encoder.connection_headers(pki[0]), method=b"POST", content_length=5,
                              chunked=True))  # chunked wins, as in the forwarded head
    assert verify_identity(chunked, request=RequestBinding(b"POST", TARGET, HOST, b"chunked"), keys=KEY, now=NOW)


def test_empty_query_is_the_bare_path(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY))
    headers = as_mapping(sign(encoder, encoder.connection_headers(pki[0]), target=b"/api/echo?"))
    assert verify_identity(headers, request=RequestBinding(b"GET", b"/api/echo", HOST, b"none"), keys=KEY, now=NOW)
    assert identity.canonical_target(b"/a?") == b"/a"
    assert identity.canonical_target(b"/a??") == b"/a??" and identity.canonical_target(b"/a?b?") == b"/a?b?"


def test_line_feed_in_a_component_is_malformed(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    assert reason(headers, request=RequestBinding(b"GET", TARGET, HOST + b"\nx", b"none")) == "malformed"


def test_other_key_is_unknown_or_bad_signature(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    assert reason(headers, keys=OTHER_KEY) == "unknown_key"  # the key id names KEY
    sig = headers["x-client-cert-signature"]
    kid = identity.key_id(OTHER_KEY)
    forged = {**headers, "x-client-cert-signature": re.sub(r"k=[0-9a-f]{16}", f"k={kid}", sig)}
    assert reason(forged, keys=OTHER_KEY) == "bad_signature"  # right id, wrong key


def test_key_rotation_picks_the_key_by_id(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    assert identity.key_id(KEY) == identity.hashlib.sha256(KEY).hexdigest()[:16]
    assert f"k={identity.key_id(KEY)};" in headers["x-client-cert-signature"]
    assert verify_identity(headers, request=REQ, keys=[OTHER_KEY, KEY], now=NOW).serial
    assert verify_identity(headers, request=REQ, keys=identity.keys_by_id([KEY, OTHER_KEY]), now=NOW).serial
    assert reason(headers, keys=[OTHER_KEY]) == "unknown_key"


def test_missing_and_malformed_signature(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    sig = headers.pop("x-client-cert-signature")
    assert reason(headers) == "missing_signature"
    for bad in ("v3" + sig[2:], sig + ";x=1", sig.replace(";n=", ";n=zz"), sig[:-2], "garbage", sig + "," + sig,
                sig.replace(";t=", ";T="), ";".join(sig.split(";")[i] for i in (0, 2, 1, 3, 4))):
        assert reason({**headers, "x-client-cert-signature": bad}) == "malformed", bad
    # v1 (identity and method only) is refused by name: accepting it would undo the request binding
    v1 = f"v1;t={int(NOW)};n={'0' * 32};s={'A' * 43}"
    assert reason({**headers, "x-client-cert-signature": v1}) == "unsupported_version"


def test_expired_and_future(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0], now=NOW)
    assert verify_identity(headers, request=REQ, keys=KEY, now=NOW + 10).serial
    assert reason(headers, now=NOW + 31, max_age=30) == "expired"
    assert reason(headers, now=NOW + 11) == "expired"  # default window: 10 s
    assert reason(headers, now=NOW + 10, max_age=5) == "expired"
    assert verify_identity(headers, request=REQ, keys=KEY, now=NOW - 5).serial  # small clock skew tolerated
    assert reason(headers, now=NOW - 6) == "future"


def test_replayed_nonce(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    seen = NonceCache()
    verify_identity(headers, request=REQ, keys=KEY, now=NOW, seen_nonce=seen)
    assert reason(headers, seen_nonce=seen) == "replayed"
    verify_identity(signed(pki[0]), request=REQ, keys=KEY, now=NOW, seen_nonce=seen)  # a fresh one passes


def test_bad_signature_is_not_remembered(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    headers = signed(pki[0])
    seen = NonceCache()
    assert reason(headers, request=RequestBinding(b"PUT", TARGET, HOST, b"none"), seen_nonce=seen) == "bad_signature"
    assert len(seen) == 0  # forged requests cannot fill the nonce store
    verify_identity(headers, request=REQ, keys=KEY, now=NOW, seen_nonce=seen)


def test_signed_but_undecodable_values_are_malformed() -> None:
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY))
    conn = (
        (b"X-Client-Cert-Subject", b"CN%3Dx"), (b"X-Client-Cert-Issuer", b"CN%3Dca"),
        (b"X-Client-Cert-Serial", b"NOT-HEX"), (b"X-Client-Cert-Fingerprint", b"a" * 64),
        (b"X-Client-Cert-SPKI", b"x"), (b"X-Client-Cert-Not-After", b"2030-01-01T00:00:00Z"),
    )
    headers = as_mapping(sign(encoder, conn))
    assert reason(headers) == "malformed"


# --- header names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["X-Client-Cert-Subject", "x-client-cert-subject", "X_CLIENT_CERT_SUBJECT", "x_Client-cert_SUBJECT",
     b"X-CLIENT-CERT-SUBJECT", b"x_client_cert_subject"],
)
def test_header_key_collapses_spellings(spelling: str | bytes) -> None:
    assert header_key(spelling) == "x-client-cert-subject"
    assert header_key(spelling) in PROXY_SET_HEADER_KEYS


def test_proxy_set_header_keys_cover_everything_the_proxy_writes(pki: tuple[PeerIdentity, PeerIdentity]) -> None:
    peer, _ = pki
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY, rfc9440=True, rfc9440_chain=True))
    written = {header_key(n) for n, _ in sign(encoder, encoder.connection_headers(peer))}
    assert written <= PROXY_SET_HEADER_KEYS
    forwarding = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
    assert forwarding <= PROXY_SET_HEADER_KEYS
    assert all(k == header_key(k) for k in PROXY_SET_HEADER_KEYS)
    assert len(identity.SIGNED_HEADER_ORDER) == 9


# --- keys and the nonce store ------------------------------------------------------------------


def test_load_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    generated = generate_signing_key()
    assert re.fullmatch(r"[0-9a-f]{64}", generated)
    path.write_text(f"  {generated}\n")
    assert load_signing_key(path) == generated.encode()
    path.write_bytes(b"\x00" * 40)  # raw binary keys work too (only surrounding whitespace is stripped)
    assert load_signing_key(path) == b"\x00" * 40
    path.write_text("short-key\n")
    with pytest.raises(ValueError, match="too short: 9 bytes, need at least 32"):
        load_signing_key(path)
    with pytest.raises(ValueError):
        IdentityOptions(signing_key=b"short")


def test_nonce_cache_never_evicts_a_live_nonce() -> None:
    clock = [NOW]
    cache = NonceCache(max_entries=3, clock=lambda: clock[0])
    for i, expiry in enumerate((NOW + 40, NOW + 30, NOW + 35)):  # not in expiry order
        assert cache(f"n{i}", expiry) is False
    assert cache("n0", NOW + 40) is True
    # Full of live nonces: a new one is refused (fail closed), nothing is evicted.
    with pytest.raises(IdentityError) as info:
        cache("n3", NOW + 41)
    assert info.value.reason == "replay_store_full"
    assert len(cache) == 3 and all(cache(f"n{i}", NOW + 30) for i in range(3))
    # Only expired entries leave, in expiry order whatever the insertion order was.
    clock[0] = NOW + 31  # n1 expired
    assert cache("n3", NOW + 41) is False
    assert len(cache) == 3  # n1 left only after its expiry, when its signature is refused as expired anyway
    clock[0] = NOW + 100
    assert cache("later", NOW + 130) is False
    assert len(cache) == 1


def test_nonce_cache_10000_in_one_window() -> None:
    cache = NonceCache(max_entries=10_000, clock=lambda: NOW)
    nonces = [f"{i:032x}" for i in range(10_000)]
    assert not any(cache(n, NOW + 15) for n in nonces)
    assert all(cache(n, NOW + 15) for n in nonces)


def test_not_after_is_utc() -> None:
    cert = decode_unsigned(
        {"x-client-cert-subject": "CN%3Dx", "x-client-cert-issuer": "CN%3Dca", "x-client-cert-serial": "1f",
         "x-client-cert-fingerprint": "ab" * 32, "x-client-cert-spki": "x",
         "x-client-cert-not-after": "2027-01-01T00:00:00Z"}
    )
    assert cert.not_after == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert cert.subject_attributes == {"CN": ("x",)}


def test_signed_no_certificate_verifies_to_none_and_binds_the_request() -> None:
    """The proxy's word for a client without a certificate: a signature over empty identity values."""
    encoder = IdentityEncoder(IdentityOptions(signing_key=KEY))
    assert encoder.request_headers((), method=b"GET", target=TARGET, host=HOST, content_length=None,
                                   chunked=False, now=NOW) == ()  # not asked for: nothing
    headers = as_mapping(encoder.request_headers((), method=b"GET", target=TARGET, host=HOST, content_length=None,
                                                 chunked=False, now=NOW, anonymous=True))
    assert list(headers) == ["x-client-cert-signature"] and SIGNATURE_RE.match(headers["x-client-cert-signature"])
    seen: set[str] = set()

    def seen_nonce(nonce: str, expires_at: float) -> bool:
        if nonce in seen:
            return True
        seen.add(nonce)
        return False

    assert verify_identity(headers, request=REQ, keys=KEY, now=NOW + 1, seen_nonce=seen_nonce) is None
    assert reason(headers, seen_nonce=seen_nonce) == "replayed"
    assert reason(headers, request=RequestBinding(b"POST", TARGET, HOST, b"none")) == "bad_signature"
    forged = {**headers, "x-client-cert-subject": "CN%3Dadmin"}  # an identity cannot ride on it
    assert reason(forged) == "bad_signature"
