"""CRLs fetched from a URL: a revocation published there reaches open connections of every proxy.

The CRL is served by a real HTTP server on loopback (as the enrollment service serves it), with
ETag and conditional GETs; two proxy processes fetch it every second.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import yaml

from mtls_proxy.pki import x509 as X
from tests.support.rawhttp import RawConn, request_bytes

pytestmark = pytest.mark.timeout(90)


class CrlServer:
    """Serves one CRL body (PEM or DER) at /crl with an ETag; counts conditional requests."""

    def __init__(self) -> None:
        self.body = b""
        self.fail = False
        self.conditional = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if owner.fail:
                    self.send_error(503)
                    return
                etag = '"' + hashlib.sha256(owner.body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match"):
                    owner.conditional += 1
                    if self.headers["If-None-Match"] == etag:
                        self.send_response(304)
                        self.end_headers()
                        return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/crl"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def crl_server():  # type: ignore[no-untyped-def]
    server = CrlServer()
    yield server
    server.close()


def _crl(pki: Any, revoked: list[Any], *, der: bool = False, seconds: float = 3600) -> bytes:
    now = dt.datetime.now(dt.UTC)
    crl = X.build_crl(pki.ca, [(c.issued.cert.serial_number, now) for c in revoked],
                      this_update=now - dt.timedelta(minutes=1), next_update=now + dt.timedelta(seconds=seconds))
    if der:
        from cryptography.hazmat.primitives.serialization import Encoding

        return crl.public_bytes(Encoding.DER)
    return X.crl_pem(crl)


def test_revocation_published_at_the_url_reaches_open_connections_of_two_proxies(proxies, pki, crl_server):
    victim = pki.client("crl-url-victim")
    bystander = pki.client("crl-url-bystander")
    crl_server.body = _crl(pki, [], der=True)  # DER, as CRL distribution points usually serve it
    tls = {"crl": [crl_server.url], "crl_refresh": "1s"}
    first, second = proxies.start(tls=tls), proxies.start(tls=tls)
    victim_ctx = pki.client_context(victim)
    conns = [RawConn(p.port, victim_ctx) for p in (first, second)]
    try:
        for p, c in zip((first, second), conns, strict=True):
            c.send(request_bytes("GET", "/api/echo", host=f"localhost:{p.port}"))
            assert c.read_response().status == 200
        crl_server.body = _crl(pki, [victim])
        published = time.monotonic()
        for p, c in zip((first, second), conns, strict=True):
            while True:
                c.send(request_bytes("GET", "/api/echo", host=f"localhost:{p.port}"))
                resp = c.read_response()
                if resp.status == 403:
                    assert resp.json()["reason"] == "revoked"
                    break
                assert resp.status == 200
                assert time.monotonic() - published < 2.5, "not revoked within refresh + 1 s"
                time.sleep(0.1)
        assert time.monotonic() - published < 2.5
    finally:
        for c in conns:
            c.close()
    for p in (first, second):
        with pytest.raises(ssl.SSLError) as refused:
            p.get_json(victim_ctx, "/api/echo")
        assert refused.value.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"
        status, _ = p.get_json(pki.client_context(bystander), "/api/echo")
        assert status == 200
    deadline = time.monotonic() + 5
    while crl_server.conditional == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert crl_server.conditional > 0  # conditional GETs (ETag) between changes


def test_a_failing_url_keeps_the_crl_held_until_it_expires(proxies, pki, crl_server):
    client = pki.client("crl-url-held")
    crl_server.body = _crl(pki, [], seconds=4)
    proxy = proxies.start(tls={"crl": [crl_server.url], "crl_refresh": "1s"})
    expires = time.time() + 4
    ctx = pki.client_context(client)
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", host=f"localhost:{proxy.port}"))
        assert c.read_response().status == 200
        crl_server.fail = True
        proxy.wait_for_log(r"CRL fetch failed, keeping the CRL held: .*HTTP 503", 5)
        c.send(request_bytes("GET", "/api/echo", host=f"localhost:{proxy.port}"))
        assert c.read_response().status == 200  # the held CRL still counts
        time.sleep(max(0.0, expires - time.time()) + 0.5)
        c.send(request_bytes("GET", "/api/echo", host=f"localhost:{proxy.port}"))
        resp = c.read_response()
        assert (resp.status, resp.json()["reason"]) == (403, "crl_expired")  # fail closed


def test_an_unreachable_crl_url_fails_check_and_start(proxies, pki, tmp_path):
    cfg = proxies.config(tls={"crl": ["http://127.0.0.1:9/crl"]})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "mtls_proxy", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "tls.crl[http://127.0.0.1:9/crl]: http://127.0.0.1:9/crl: fetch failed" in run.stderr


def test_a_crl_at_the_url_signed_by_another_ca_is_refused(proxies, pki, crl_server, tmp_path):
    now = dt.datetime.now(dt.UTC)
    crl_server.body = X.crl_pem(X.build_crl(pki.other_ca, [], this_update=now, next_update=now + dt.timedelta(hours=1)))
    cfg = proxies.config(tls={"crl": [crl_server.url]})
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "mtls_proxy", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"tls.crl[{crl_server.url}]: not signed by any configured client CA" in run.stderr
