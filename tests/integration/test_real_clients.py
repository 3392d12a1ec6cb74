"""The same proxy through the tools people actually use: curl and openssl s_client."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("openssl")),
                                reason="curl/openssl are installed by .ci/run")


def curl(proxy, pki, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(pki.server_ca_pem), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_curl_with_client_cert(proxy, pki):
    c = pki.client("curl-device")
    r = curl(proxy, pki, "--cert", str(c.cert), "--key", str(c.key), "-w", "\n%{http_code}",
             f"https://localhost:{proxy.port}/api/echo?via=curl")
    body, _, code = r.stdout.rpartition("\n")
    assert code == "200", r.stderr
    seen = json.loads(body)
    assert seen["client_cert"]["common_name"] == "curl-device"
    assert seen["query_string"] == "via=curl"


def test_curl_without_client_cert_is_refused(proxy, pki):
    r = curl(proxy, pki, f"https://localhost:{proxy.port}/api/echo")
    assert r.returncode != 0  # 35 (handshake) or 56 (TLS 1.3: refused on first read)
    assert r.returncode in (35, 52, 56), r
    assert r.stdout == ""


def test_curl_refuses_tls_1_1(proxy, pki):
    c = pki.client("curl-device")
    r = curl(proxy, pki, "--cert", str(c.cert), "--key", str(c.key), "--tlsv1.0", "--tls-max", "1.1",
             f"https://localhost:{proxy.port}/api/echo")
    assert r.returncode == 35, r


def s_client(proxy, pki, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", "localhost",
         "-CAfile", str(pki.server_ca_pem), "-verify_return_error", *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )


def test_openssl_s_client_with_client_cert(proxy, pki):
    c = pki.client("s-client-device")
    r = s_client(proxy, pki, "-cert", str(c.cert), "-key", str(c.key), "-alpn", "http/1.1", "-ign_eof",
                 stdin="GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert "HTTP/1.1 200 OK" in r.stdout
    assert '"common_name": "s-client-device"' in r.stdout
    assert "ALPN protocol: http/1.1" in r.stdout
    assert "Verify return code: 0 (ok)" in r.stdout


def test_openssl_s_client_sees_a_certificate_request(proxy, pki):
    """The server asks for a client certificate (CertificateRequest) without naming CAs."""
    c = pki.client("s-client-device")
    r = s_client(proxy, pki, "-cert", str(c.cert), "-key", str(c.key), "-tls1_2", stdin="")
    assert "Requested Signature Algorithms" in r.stdout
    assert "No client certificate CA names sent" in r.stdout
    assert "Protocol  : TLSv1.2" in r.stdout


def test_openssl_s_client_without_cert_is_refused(proxy, pki):
    r = s_client(proxy, pki, "-tls1_2", stdin="")
    assert "alert" in r.stderr.lower() or r.returncode != 0
    assert "HTTP/1.1" not in r.stdout
