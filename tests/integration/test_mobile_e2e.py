"""The mobile path end to end: `mtls-proxy pki` bundles, a JSSE client (Android's stack), the proxy,
the real Django app; then `pki revoke` + SIGHUP refuses that device at once, and only that device."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proxy import ProxyFactory

JAVA_SRC = Path(__file__).resolve().parents[1] / "java" / "MtlsClient.java"
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(shutil.which("javac") is None, reason="the JDK is installed by scripts/test.sh")


def pki_cli(d: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mtls_proxy", "pki", "--dir", str(d), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def java(classes: Path, url: str, p12: Path, trust: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["java", "-cp", str(classes), "MtlsClient", url, str(p12), PASSWORD, str(trust)],
                          capture_output=True, text=True, timeout=120)


def keep_alive(port: int, d: Path, name: str, trust: Path) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.load_cert_chain(str(d / "clients" / f"{name}.pem"), str(d / "clients" / f"{name}.key"))
    return http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)


def get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, dict]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_jsse_client_through_proxy_then_revoked(tmp_path, pki, upstream):
    d = tmp_path / "pki"
    pki_cli(d, "init")
    pki_cli(d, "issue-server", "--dns", "localhost", "--ip", "127.0.0.1")
    for name in ("phone-1", "phone-2"):
        pki_cli(d, "issue-client", "--name", name, "--p12", str(tmp_path / f"{name}.p12"), "--password", PASSWORD)
    pki_cli(d, "crl")
    trust = d / "server-ca.pem"
    classes = tmp_path / "classes"
    r = subprocess.run(["javac", "-d", str(classes), str(JAVA_SRC)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr

    factory = ProxyFactory(tmp_path, pki, upstream.url)
    cfg = factory.config()
    cfg["tls"] = {"cert": str(d / "server.pem"), "key": str(d / "server.key"), "client_ca": str(d / "ca.pem"),
                  "crl": str(d / "crl.pem")}
    proxy = factory.start(cfg)
    try:
        url = f"https://127.0.0.1:{proxy.port}/api/whoami"  # Java tries ::1 first for "localhost"
        ok = java(classes, url, tmp_path / "phone-1.p12", trust)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        status, body = ok.stdout.split("\n", 1)
        assert status == "200"
        assert json.loads(body)["user"] == "phone-1"

        phone1, phone2 = keep_alive(proxy.port, d, "phone-1", trust), keep_alive(proxy.port, d, "phone-2", trust)
        assert get(phone1, "/api/whoami")[0] == 200
        assert get(phone2, "/api/whoami")[0] == 200

        pki_cli(d, "revoke", "--name", "phone-1")  # rewrites crl.pem
        proxy.reload()

        refused = java(classes, url, tmp_path / "phone-1.p12", trust)
        assert refused.returncode == 3, refused.stdout + refused.stderr  # TLS/IO error: refused at the handshake
        proxy.wait_for_log(r"tls handshake failed: .*reason=cert_revoked")
        status, body = get(phone1, "/api/whoami")  # the connection opened before the revocation
        assert (status, body) == (403, {"error": "forbidden", "reason": "revoked"})
        assert get(phone2, "/api/whoami") == (200, get(phone2, "/api/whoami")[1])  # undisturbed, same connection
        still = java(classes, url, tmp_path / "phone-2.p12", trust)
        assert still.returncode == 0 and still.stdout.startswith("200"), still.stdout + still.stderr
    finally:
        factory.close()
