"""Spoofed identity headers never reach Django: strip first, in every spelling, then set ours."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.tlsclient import raw_exchange

SPOOFS = [
    ("X-Client-Cert-Subject", "CN=admin"),
    ("x-client-cert-subject", "CN=admin2"),
    ("X_CLIENT_CERT_SUBJECT", "CN=admin3"),
    ("X-Client-Cert_Subject", "CN=admin4"),
    ("X-Client-Cert-Serial", "01"),
    ("X-Client-Cert-Fingerprint", "00" * 32),
    ("X-Client-Cert-Signature", "v1;t=0;n=00;s=forged"),
    ("X_Client_Cert_Signature", "v1;t=0;n=00;s=forged2"),
    ("Client-Cert", ":Zm9yZ2Vk:"),
    ("client_cert", ":Zm9yZ2Vk:"),
    ("Client-Cert-Chain", ":Zm9yZ2Vk:"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X_Forwarded_For", "6.6.6.7"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "evil.example"),
    ("Forwarded", "for=6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
]


def _chunked_json(data: bytes) -> dict:
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return json.loads(body)


def test_spoofed_identity_headers_never_reach_django(proxies, pki):
    proxy = proxies.start(identity={"signing_key_file": str(pki.signing_key), "rfc9440": True})
    client = pki.client("spoof-victim")
    lines = "".join(f"{n}: {v}\r\n" for n, v in SPOOFS + SPOOFS)  # every spoof twice
    req = f"GET /api/echo HTTP/1.1\r\nHost: localhost\r\n{lines}Connection: close\r\n\r\n".encode()
    seen = _chunked_json(raw_exchange(proxy.port, pki.client_context(client), req))
    headers = seen["headers"]
    joined = json.dumps(headers)
    for forged in ("CN=admin", "forged", "6.6.6.6", "6.6.6.7", "evil.example", "Zm9yZ2Vk"):
        assert forged not in joined, forged
    assert headers["HTTP_FORWARDED"] == 'for=127.0.0.1;proto=https;host="localhost"'  # the proxy's, not the client's
    assert "HTTP_X_REAL_IP" not in headers
    assert headers["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert headers["HTTP_X_FORWARDED_PROTO"] == "https"
    assert headers["HTTP_X_FORWARDED_HOST"] == "localhost"
    assert headers["HTTP_X_CLIENT_CERT_SERIAL"] == client.serial_hex
    der = client.issued.cert.public_bytes(Encoding.DER)
    assert headers["HTTP_CLIENT_CERT"] == ":" + base64.b64encode(der).decode() + ":"
    # the Django middleware verified the proxy's signature and exposes the real identity
    assert seen["client_cert"]["common_name"] == "spoof-victim"


def test_identity_headers_can_be_turned_off(proxies, pki):
    proxy = proxies.start(identity={"headers": False})
    client = pki.client("no-identity")
    req = b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nX-Client-Cert-Subject: CN=admin\r\nConnection: close\r\n\r\n"
    seen = _chunked_json(raw_exchange(proxy.port, pki.client_context(client), req))
    assert not any(k.startswith("HTTP_X_CLIENT_CERT") for k in seen["headers"])
    assert seen["client_cert"] is None


def test_identity_captured_from_the_proxy_is_worthless_on_django_directly(proxy, pki, upstream):
    """Issue 10's attack with the proxy's real output: the headers of a proxied ``POST /api/echo?x=1``
    (as Django received them) replayed straight to Django, on the same and on other requests."""
    ctx = pki.client_context(pki.client("device-capture"))
    status, _, raw = proxy.request(ctx, "POST", "/api/echo?x=1", body=b"hi")
    assert status == 200
    received = json.loads(raw)["headers"]
    captured = [("-".join(p.capitalize() for p in key[5:].split("_")), value) for key, value in received.items()
                if key.startswith(("HTTP_X_CLIENT_CERT", "HTTP_CLIENT_CERT"))]
    assert any(name == "X-Client-Cert-Signature" and value.startswith("v2;k=") for name, value in captured)
    host = received["HTTP_HOST"]
    assert host == f"localhost:{proxy.port}"

    def direct(method, target, body, host=host):
        conn = upstream.connection()
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            for name, value in captured:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    for method, target, body, other_host in [
        ("POST", "/api/echo/transfer?to=x", b"hi", host),  # the exact case of the issue
        ("POST", "/api/echo?x=1", b"another body", host),
        ("POST", "/api/echo?x=2", b"hi", host),
        ("GET", "/admin/users", None, host),  # a path the proxy would deny
        ("POST", "/api/echo?x=1", b"hi", "evil.example"),
    ]:
        assert direct(method, target, body, other_host) == (
            403, {"error": "untrusted client identity", "reason": "bad_signature"}
        ), (method, target, other_host)
    # the very same request: its nonce was used when the proxy forwarded it
    assert direct("POST", "/api/echo?x=1", b"hi") == (403, {"error": "untrusted client identity", "reason": "replayed"})
