"""The signature window covers the proxy->Django hop, not the upload: a 60 s upload passes with a 10 s window.

Real parts: a phone-like client sending its body slowly over mutual TLS to the real proxy,
which streams it to the demo Django under uvicorn. The ASGI wrapper
(:class:`mtls_proxy.django.asgi.ClientCertASGIMiddleware`) checks the signature when the
request head arrives; Django's ASGI handler then reads the body for a minute. Without the
wrapper the middleware would only run after the body and see a 60 s old signature.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.certs import parse_peer
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, load_signing_key
from tests.support.pki import TestPki
from tests.support.proxy import ProxyFactory
from tests.support.upstream import DemoUpstream

pytestmark = pytest.mark.timeout(180)

CHUNK = 16 * 1024
SECONDS = 61  # one chunk per second


@pytest.mark.slow
def test_60_second_upload_is_accepted_with_a_10_second_window(
    proxies: ProxyFactory, pki: TestPki, upstream: DemoUpstream
) -> None:
    # upstream_read_timeout counts from the last upstream byte, and Django answers only after the body
    proxy = proxies.start(limits={"upstream_read_timeout": "120s"})
    client = pki.client("device-slow-upload")
    body = bytes(range(256)) * (CHUNK // 256) * SECONDS
    conn = proxy.connection(pki.client_context(client), timeout=120)
    started = time.monotonic()
    try:
        conn.putrequest("PUT", "/api/upload")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        for i in range(SECONDS):
            conn.send(body[i * CHUNK : (i + 1) * CHUNK])
            time.sleep(1.0)
        response = conn.getresponse()
        data = json.loads(response.read())
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    assert response.status == 200, data
    assert data == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    assert elapsed >= 60

    # The same Django really runs a 10 s window: a signature 11 s old is refused.
    peer = parse_peer(client.issued.cert.public_bytes(serialization.Encoding.DER))
    encoder = IdentityEncoder(IdentityOptions(signing_key=load_signing_key(pki.signing_key)))
    stale = encoder.request_headers(encoder.connection_headers(peer), method=b"PUT", target=b"/api/upload",
                                    host=b"localhost", content_length=2, chunked=False, now=time.time() - 11)
    direct = upstream.connection()
    try:
        direct.putrequest("PUT", "/api/upload", skip_accept_encoding=True)
        for name, value in stale:
            direct.putheader(name.decode(), value.decode())
        direct.putheader("Content-Length", "2")
        direct.endheaders(b"hi")
        refused = direct.getresponse()
        assert (refused.status, json.loads(refused.read())["reason"]) == (403, "expired")
    finally:
        direct.close()
