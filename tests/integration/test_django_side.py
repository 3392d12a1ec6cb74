"""The Django side against a real demo upstream process, reached directly (as an attacker would).

Each test talks to ``python -m mtls_proxy.demo_app serve`` over its Unix socket with
plain ``http.client``: no proxy in between, so whatever passes here would pass for anyone
who can reach Django without the proxy. Identity headers are produced by the real
:class:`~mtls_proxy.identity.IdentityEncoder` from certificates minted by ``mtls_proxy.pki``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.demo_app.content import pattern_sha256
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, generate_signing_key
from mtls_proxy.pki.x509 import issue_ca, issue_client
from tests.support.upstream import DemoUpstream, start_demo_upstream

pytestmark = pytest.mark.timeout(120)

Headers = Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, signing_key: tuple[Path, bytes]) -> Iterator[DemoUpstream]:
    handle = start_demo_upstream(tmp_path_factory.mktemp("signed"), uds=True, signing_key_file=signing_key[0])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def peer() -> PeerIdentity:
    ca = issue_ca({"CN": "Acme Device CA", "O": "Acme"})
    leaf = issue_client(
        {"CN": "device-42", "O": "Acme, Inc."}, ca, uris=["spiffe://acme/device/42"], dns=["device-42.example"]
    )
    return parse_peer(leaf.cert.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def encoder(signing_key: tuple[Path, bytes]) -> IdentityEncoder:
    return IdentityEncoder(IdentityOptions(signing_key=signing_key[1]))


def request(
    up: DemoUpstream, method: str, path: str, headers: Headers = (), body: bytes | None = None,
    *, skip_host: bool = False, raw_body: bool = False,
) -> tuple[int, Any, dict[str, str]]:
    """One request on a fresh connection; returns (status, JSON body or text, response headers).

    ``skip_host``: ``headers`` brings its own Host; ``raw_body``: send ``body`` without a Content-Length.
    """
    conn = up.connection()
    try:
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None and not raw_body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        raw = response.read()
        content_type = response.getheader("Content-Type", "")
        data = json.loads(raw) if "json" in content_type else raw
        return response.status, data, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def signed_headers(
    encoder: IdentityEncoder, peer: PeerIdentity, method: str = "GET", target: str = "/api/whoami",
    *, host: str = "localhost", body_length: int | None = None, now: float | None = None,
) -> Any:
    """What the proxy would send for this request (http.client sends ``Host: localhost`` on our sockets)."""
    return encoder.request_headers(
        encoder.connection_headers(peer), method=method.encode(), target=target.encode(), host=host.encode(),
        content_length=body_length, chunked=False, now=now,
    )


# --- the signed path ---------------------------------------------------------------------------


def test_signed_identity_authenticates_drf_view(
    upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    status, body, _ = request(upstream, "GET", "/api/whoami", signed_headers(encoder, peer))
    assert status == 200, body
    assert body["user"] == "device-42"
    assert body["device"] == "device-42"
    cert = body["client_cert"]
    assert cert["subject"] == peer.subject_dn == "O=Acme\\, Inc.,CN=device-42"
    assert cert["subject_attributes"] == {"CN": ["device-42"], "O": ["Acme, Inc."]}
    assert cert["fingerprint"] == peer.fingerprint_sha256
    assert cert["san_uri"] == ["spiffe://acme/device/42"]


def test_signed_identity_reaches_plain_views_and_binds_the_method(
    upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    headers = signed_headers(encoder, peer, "POST", "/api/echo", body_length=2)
    status, body, _ = request(upstream, "POST", "/api/echo", headers, b"hi")
    assert status == 200 and body["client_cert"]["serial"] == peer.serial_hex
    assert body["body_sha256"] == hashlib.sha256(b"hi").hexdigest()
    # A GET signature presented on a DELETE: the method is part of the HMAC.
    status, body, _ = request(upstream, "DELETE", "/api/echo", signed_headers(encoder, peer, "GET", "/api/echo"))
    assert (status, body["reason"]) == (403, "bad_signature")


# --- what a client bypassing the proxy can send --------------------------------------------------


def test_captured_headers_are_refused_on_any_other_request(
    upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    """The attack of issue 10: identity headers captured from ``POST /api/echo?x=1`` (body "hi"), sent
    straight to Django on another method, path, query, Host or body length. Each attempt uses a fresh
    capture, so ``replayed`` cannot be what refuses it: the signature itself does not fit."""

    def capture() -> Any:
        return signed_headers(encoder, peer, "POST", "/api/echo?x=1", body_length=2)

    attempts = [
        ("PUT", "/api/echo?x=1", "localhost", b"hi"),  # method
        ("GET", "/api/echo?x=1", "localhost", None),  # method, and no body
        ("POST", "/api/echo/transfer?x=1", "localhost", b"hi"),  # path
        ("POST", "/api/echo%3Fx=1", "localhost", b"hi"),  # percent-encoding of the target
        ("POST", "/api/echo?x=2", "localhost", b"hi"),  # query
        ("POST", "/api/echo?x=1&to=mallory", "localhost", b"hi"),  # query parameter added
        ("POST", "/api/echo", "localhost", b"hi"),  # query dropped
        ("POST", "/api/echo?x=1", "evil.example", b"hi"),  # Host
        ("POST", "/api/echo?x=1", "localhost:8443", b"hi"),  # Host port
        ("POST", "/api/echo?x=1", "localhost", b"h"),  # body length
        ("POST", "/api/echo?x=1", "localhost", b"hi" * 1000),  # body length
    ]
    for method, target, host, body in attempts:
        headers = [("Host", host), *capture()]
        status, data, _ = request(upstream, method, target, headers, body, skip_host=True)
        assert (status, data["reason"]) == (403, "bad_signature"), (method, target, host, body)
    # chunked instead of Content-Length: 2
    headers = [("Host", "localhost"), *capture(), ("Transfer-Encoding", "chunked")]
    status, data, _ = request(upstream, "POST", "/api/echo?x=1", headers, b"2\r\nhi\r\n0\r\n\r\n", skip_host=True,
                              raw_body=True)
    assert (status, data["reason"]) == (403, "bad_signature")
    # ...and the untouched request is accepted (exactly once)
    good = [("Host", "localhost"), *capture()]
    status, data, _ = request(upstream, "POST", "/api/echo?x=1", good, b"hi", skip_host=True)
    assert status == 200 and data["query_string"] == "x=1"
    status, data, _ = request(upstream, "POST", "/api/echo?x=1", good, b"hi", skip_host=True)
    assert (status, data["reason"]) == (403, "replayed")


def test_v1_signature_is_refused_by_name(upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity) -> None:
    headers = [(n, b"v1;t=%d;n=%s;s=%s" % (time.time(), b"0" * 32, b"A" * 43) if n == b"X-Client-Cert-Signature"
                else v) for n, v in signed_headers(encoder, peer)]
    status, body, _ = request(upstream, "GET", "/api/whoami", headers)
    assert (status, body["reason"]) == (403, "unsupported_version")


def test_unsigned_identity_headers_are_refused(
    upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    forged = [(n, v) for n, v in encoder.connection_headers(peer)]  # perfect values, no signature
    for path in ("/api/whoami", "/api/echo", "/healthz"):
        status, body, _ = request(upstream, "GET", path, forged)
        assert status == 403, path
        assert body == {"error": "untrusted client identity", "reason": "missing_signature"}
    status, body, _ = request(upstream, "GET", "/api/echo", [("X-Client-Cert-Subject", "CN=admin")])
    assert (status, body["reason"]) == (403, "missing_signature")


def test_tampered_value_is_bad_signature(upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity) -> None:
    headers = [
        (n, b"CN%3Dadmin" if n == b"X-Client-Cert-Subject" else v) for n, v in signed_headers(encoder, peer)
    ]
    status, body, _ = request(upstream, "GET", "/api/whoami", headers)
    assert (status, body["reason"]) == (403, "bad_signature")


def test_extra_duplicate_identity_header_is_bad_signature(
    upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    headers = [*signed_headers(encoder, peer), (b"x-client-cert-san", b"DNS=evil.example")]
    status, body, _ = request(upstream, "GET", "/api/whoami", headers)
    assert (status, body["reason"]) == (403, "bad_signature")


def test_replayed_request_is_refused(upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity) -> None:
    headers = signed_headers(encoder, peer)
    first = request(upstream, "GET", "/api/whoami", headers)
    second = request(upstream, "GET", "/api/whoami", headers)
    assert first[0] == 200
    assert (second[0], second[1]["reason"]) == (403, "replayed")


def test_stale_signature_is_expired(upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity) -> None:
    # the default window is 10 s (MAX_AGE) + 5 s CLOCK_SKEW for the nonce store
    status, body, _ = request(upstream, "GET", "/api/whoami", signed_headers(encoder, peer, now=time.time() - 12))
    assert (status, body["reason"]) == (403, "expired")
    status, body, _ = request(upstream, "GET", "/api/whoami", signed_headers(encoder, peer, now=time.time() + 30))
    assert (status, body["reason"]) == (403, "future")


def test_signature_from_another_key_is_bad_signature(upstream: DemoUpstream, peer: PeerIdentity) -> None:
    other = IdentityEncoder(IdentityOptions(signing_key=generate_signing_key().encode()))
    status, body, _ = request(upstream, "GET", "/api/whoami", signed_headers(other, peer))
    assert (status, body["reason"]) == (403, "unknown_key")


def test_no_identity_headers(upstream: DemoUpstream) -> None:
    status, body, headers = request(upstream, "GET", "/api/whoami")
    assert status in (401, 403)
    assert status == 401 and headers["www-authenticate"].startswith("ClientCert")
    status, body, _ = request(upstream, "GET", "/api/echo")
    assert status == 200 and body["client_cert"] is None


def test_underscore_spelling_is_an_identity_header_too(upstream: DemoUpstream) -> None:
    # Django's ASGI handler drops header names containing "_" (they would collide in META), but the ASGI
    # wrapper sees the raw scope first and counts every spelling as an identity header: refused.
    status, body, _ = request(upstream, "GET", "/api/echo", [("X_Client_Cert_Subject", "CN=admin"), ("X-Ok", "1")])
    assert (status, body["reason"]) == (403, "missing_signature")
    status, body, _ = request(upstream, "GET", "/api/echo", [("X_Other", "1"), ("X-Ok", "1")])
    assert status == 200 and body["client_cert"] is None
    assert "HTTP_X_OTHER" not in body["headers"] and body["headers"]["HTTP_X_OK"] == "1"


# --- WebSocket (Channels) uses the same rules ----------------------------------------------------


def test_websocket_identity_and_echo(upstream: DemoUpstream, encoder: IdentityEncoder, peer: PeerIdentity) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import unix_connect

    assert upstream.socket_path is not None
    signed = [(n.decode(), v.decode()) for n, v in signed_headers(encoder, peer, target="/ws/echo")]
    with unix_connect(upstream.socket_path, "ws://localhost/ws/echo", additional_headers=signed) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["hello"] is True
        assert hello["client_cert"]["common_name"] == "device-42"
        assert hello["headers"]["x-client-cert-fingerprint"] == peer.fingerprint_sha256
        ws.send("text ✓")
        assert ws.recv(timeout=10) == "text ✓"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=10) == b"\x00\xffbinary"

    with unix_connect(upstream.socket_path, "ws://localhost/ws/echo") as ws:
        assert json.loads(ws.recv(timeout=10))["client_cert"] is None

    forged = [(n.decode(), v.decode()) for n, v in encoder.connection_headers(peer)]
    with pytest.raises(InvalidStatus) as info, unix_connect(
        upstream.socket_path, "ws://localhost/ws/echo", additional_headers=forged
    ):
        pass
    assert info.value.response.status_code == 403


# --- the demo app's own contract (the proxy tests rely on it) -------------------------------------


def test_demo_download_upload_and_paths(upstream: DemoUpstream) -> None:
    size = 3 * (1 << 20) + 12345
    for path in (f"/api/download?size={size}&seed=abc", f"/api/download-chunked?size={size}&seed=abc"):
        status, data, headers = request(upstream, "GET", path)
        assert status == 200 and hashlib.sha256(data).hexdigest() == pattern_sha256(size, "abc")
        assert headers.get("content-length") == (str(size) if "chunked" not in path else None)
        if "chunked" in path:
            assert headers["transfer-encoding"] == "chunked"

    body = os.urandom(700_000)
    status, data, _ = request(upstream, "PUT", "/api/upload", body=body)
    assert data == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}

    status, data, _ = request(upstream, "GET", "/api/echo/a%2Fb/../c?x=1&y=%20")
    assert data["raw_path"] == "/api/echo/a%2Fb/../c" and data["query_string"] == "x=1&y=%20"
    assert data["path"] == "/api/echo/a/b/../c"
    assert request(upstream, "GET", "/api/files/docs/readme.txt")[1] == {
        "rest": "docs/readme.txt", "path": "/api/files/docs/readme.txt"
    }
    assert request(upstream, "GET", "/admin/users")[1] == {"area": "admin", "path": "/admin/users"}
    assert request(upstream, "GET", "/healthz")[:2] == (200, b"ok")
    assert request(upstream, "GET", "/api/slow?seconds=0.1")[1] == {"slept": 0.1}

    started = time.monotonic()
    status, data, _ = request(upstream, "GET", "/api/download?size=60000&rate=40000&seed=s")
    assert len(data) == 60000 and 1.0 < time.monotonic() - started < 5


# --- start-up and the trusted-peers mode --------------------------------------------------------


def test_signature_mode_without_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ImproperlyConfigured"):
        start_demo_upstream(tmp_path, trust="signature")


def test_short_key_file_refuses_to_start(tmp_path: Path) -> None:
    key = tmp_path / "short.key"
    key.write_text("too-short\n")
    with pytest.raises(RuntimeError, match="too short"):
        start_demo_upstream(tmp_path, signing_key_file=key)


def test_trusted_peers_mode_accepts_unsigned_identity(
    tmp_path: Path, encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    unsigned = list(encoder.connection_headers(peer))
    with start_demo_upstream(tmp_path, uds=False) as up:  # demo default without a key: loopback + unix trusted
        status, body, _ = request(up, "GET", "/api/whoami", unsigned)
        assert status == 200 and body["device"] == "device-42"


# --- the same middleware in a sync (WSGI) stack: gunicorn ------------------------------------------


def test_sync_middleware_under_gunicorn(
    tmp_path: Path, signing_key: tuple[Path, bytes], encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    """gunicorn hands Django ``RAW_URI``: the WSGI path verifies the same v2 binding, before the body is read."""
    with start_demo_upstream(tmp_path, signing_key_file=signing_key[0], server="gunicorn", workers=1) as up:
        headers = signed_headers(encoder, peer)
        status, body, _ = request(up, "GET", "/api/whoami", headers)
        assert (status, body["device"]) == (200, "device-42")
        assert request(up, "GET", "/api/whoami", headers)[1]["reason"] == "replayed"
        assert request(up, "GET", "/api/echo", list(encoder.connection_headers(peer)))[1]["reason"] == (
            "missing_signature"
        )
        target = "/api/echo/a%2Fb/../c?x=1&y=%20"
        signed = signed_headers(encoder, peer, "PUT", target, body_length=3)
        status, body, _ = request(up, "PUT", target, signed, b"abc")
        assert status == 200 and body["path"] == "/api/echo/a/b/../c" and body["query_string"] == "x=1&y=%20"
        assert body["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
        for other in ("/api/echo/a/b/../c?x=1&y=%20", "/api/echo/a%2fb/../c?x=1&y=%20", "/api/echo/a%2Fb/c?x=1&y=%20"):
            status, body, _ = request(up, "PUT", other, signed_headers(encoder, peer, "PUT", target, body_length=3),
                                      b"abc")
            assert (status, body["reason"]) == (403, "bad_signature"), other
        status, body, _ = request(up, "GET", "/api/echo")
        assert status == 200 and body["client_cert"] is None
