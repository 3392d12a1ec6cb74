"""The signature window covers the proxy->Django hop, not the upload: a 60 s upload passes with a 10 s window.

Real parts: a phone-like client sending its body slowly over mutual TLS to the real proxy,
which streams it to the demo Django under uvicorn. The ASGI wrapper
(:class:`mtls_proxy.django.asgi.ClientCertASGIMiddleware`) checks the signature when the
request head arrives; Django's ASGI handler then reads the body for a minute. Without the
wrapper the middleware would only run after the body and see a 60 s old signature. Under
gunicorn (WSGI) the middleware itself runs before the lazily read body.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.certs import parse_peer
from mtls_proxy.identity import IdentityEncoder, IdentityOptions, load_signing_key
from tests.support.pki import TestPki
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.upstream import DemoUpstream, start_demo_upstream

pytestmark = pytest.mark.timeout(180)

CHUNK = 16 * 1024
SECONDS = 61  # one chunk per second


def slow_put(proxy: ProxyProcess, ctx: ssl.SSLContext, seconds: int) -> tuple[int, dict[str, object], bytes, float]:
    """PUT /api/upload, one 16 KiB chunk a second: (status, JSON, body sent, elapsed seconds)."""
    body = bytes(range(256)) * (CHUNK // 256) * seconds
    conn = proxy.connection(ctx, timeout=120)
    started = time.monotonic()
    try:
        conn.putrequest("PUT", "/api/upload")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        for i in range(seconds):
            conn.send(body[i * CHUNK : (i + 1) * CHUNK])
            time.sleep(1.0)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), body, time.monotonic() - started
    finally:
        conn.close()


@pytest.mark.slow
def test_60_second_upload_is_accepted_with_a_10_second_window(
    proxies: ProxyFactory, pki: TestPki, upstream: DemoUpstream
) -> None:
    # upstream_read_timeout counts from the last upstream byte, and Django answers only after the body
    proxy = proxies.start(limits={"upstream_read_timeout": "120s"})
    client = pki.client("device-slow-upload")
    status, data, body, elapsed = slow_put(proxy, pki.client_context(client), SECONDS)
    assert status == 200, data
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


def test_slow_upload_under_gunicorn_with_a_10_second_window(tmp_path: Path, pki: TestPki) -> None:
    """WSGI: 15 s of body behind a 10 s window, two gunicorn workers sharing a SQLite replay store."""
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "nonces.sqlite3")}
    env = {"MTLS_DEMO_DATABASE": json.dumps(database)}
    with start_demo_upstream(tmp_path / "up", signing_key_file=pki.signing_key, server="gunicorn", workers=2,
                             extra_env=env) as up:
        factory = ProxyFactory(tmp_path, pki, up.url)
        try:
            proxy = factory.start()
            status, data, body, elapsed = slow_put(proxy, pki.client_context(pki.client("device-wsgi-upload")), 15)
        finally:
            factory.close()
    assert status == 200, data
    assert data == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    assert elapsed >= 15
