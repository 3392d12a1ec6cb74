"""OkHttp (Android's HTTP client) on the JVM against the proxy: Debian's libokhttp-java, compiled here.

The PKCS#12 from ``pki issue-client``, the server CA as the only trust anchor, the pins of
``pki pins --format okhttp`` in a CertificatePinner (tests/java/OkHttpMtlsClient.java reads the
generated snippet as it is): 200 with the identity; a wrong pin refused by the client itself;
after ``pki revoke`` + SIGHUP refused at the handshake. Then the keytool recipe: a self-signed
keystore in the app, ``tls.client_certs`` on the proxy: 200; a second keytool certificate with
the same subject: refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_mobile_e2e import PASSWORD, pki_cli
from tests.support.keytool import PASSWORD as KEYTOOL_PASSWORD
from tests.support.keytool import make_keystore

JAVA_DIR = Path(__file__).resolve().parents[1] / "java"
JARS = ("/usr/share/java/okhttp.jar", "/usr/share/java/okio.jar")  # Debian libokhttp-java, libokio-java

pytestmark = pytest.mark.skipif(
    shutil.which("javac") is None or not all(Path(j).is_file() for j in JARS),
    reason="the JDK and libokhttp-java are installed by scripts/test.sh",
)


@pytest.fixture(scope="module")
def okhttp_classes(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("okhttp-classes")
    r = subprocess.run(["javac", "-cp", ":".join(JARS), "-d", str(out), str(JAVA_DIR / "MtlsClient.java"),
                        str(JAVA_DIR / "OkHttpMtlsClient.java")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return ":".join((str(out), *JARS))


def okhttp(classpath: str, url: str, p12: Path, password: str, trust: Path, pins: Path
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["java", "-cp", classpath, "OkHttpMtlsClient", url, str(p12), password, str(trust),
                           str(pins)], capture_output=True, text=True, timeout=120)


def ok_json(r: subprocess.CompletedProcess[str]) -> dict:
    assert r.returncode == 0, r.stdout + r.stderr
    status, body = r.stdout.split("\n", 1)
    assert status == "200"
    return json.loads(body)


def test_okhttp_pkcs12_pins_then_revoked(tmp_path, proxies, okhttp_classes):
    d = tmp_path / "pki"
    pki_cli(d, "init")
    pki_cli(d, "issue-server", "--dns", "localhost", "--ip", "127.0.0.1")
    for name in ("phone-1", "phone-2"):
        pki_cli(d, "issue-client", "--name", name, "--p12", str(tmp_path / f"{name}.p12"), "--password", PASSWORD)
    pins = tmp_path / "pins.kt"
    pins.write_text(pki_cli(d, "pins", "--format", "okhttp"))
    assert '.add("localhost", "sha256/' in pins.read_text()
    wrong = tmp_path / "wrong-pins.kt"
    other_pin = base64.b64encode(hashlib.sha256(b"not the server's key").digest()).decode()
    wrong.write_text(f'val certificatePinner = CertificatePinner.Builder()\n'
                     f'    .add("localhost", "sha256/{other_pin}")\n    .build()\n')
    trust = d / "server-ca.pem"

    cfg = proxies.config(tls={"cert": str(d / "server.pem"), "key": str(d / "server.key"),
                              "client_ca": str(d / "ca.pem"), "crl": str(d / "crl.pem")})
    proxy = proxies.start(cfg)
    url = f"https://localhost:{proxy.port}/api/whoami"

    whoami = ok_json(okhttp(okhttp_classes, url, tmp_path / "phone-1.p12", PASSWORD, trust, pins))
    assert whoami["user"] == "phone-1" and whoami["client_cert"]["common_name"] == "phone-1"

    pinned_wrong = okhttp(okhttp_classes, url, tmp_path / "phone-1.p12", PASSWORD, trust, wrong)
    assert pinned_wrong.returncode == 4, pinned_wrong.stdout + pinned_wrong.stderr
    assert pinned_wrong.stdout == ""  # no request was sent
    assert "Certificate pinning failure!" in pinned_wrong.stderr and f"sha256/{other_pin}" in pinned_wrong.stderr

    pki_cli(d, "revoke", "--name", "phone-1")
    proxy.reload()
    mark = proxy.log_count()
    refused = okhttp(okhttp_classes, url, tmp_path / "phone-1.p12", PASSWORD, trust, pins)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert refused.stdout == ""
    proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=cert_revoked", 10, start=mark)
    assert ok_json(okhttp(okhttp_classes, url, tmp_path / "phone-2.p12", PASSWORD, trust, pins))["user"] == "phone-2"


def test_okhttp_keytool_keystore_with_pinned_client_cert(tmp_path, proxies, pki, okhttp_classes):
    app = make_keystore(tmp_path, "app")
    mimic = make_keystore(tmp_path, "mimic")  # same subject, another key
    d = tmp_path / "pki"  # only for the server certificate and its pins
    pki_cli(d, "init")
    pki_cli(d, "issue-server", "--dns", "localhost", "--ip", "127.0.0.1")
    pins = tmp_path / "pins.kt"
    pins.write_text(pki_cli(d, "pins", "--format", "okhttp"))
    cfg = proxies.config(tls={"cert": str(d / "server.pem"), "key": str(d / "server.key"),
                              "client_certs": [str(app.exported)]})
    del cfg["tls"]["client_ca"]
    proxy = proxies.start(cfg)
    url = f"https://localhost:{proxy.port}/api/whoami"

    whoami = ok_json(okhttp(okhttp_classes, url, app.keystore, KEYTOOL_PASSWORD, d / "server-ca.pem", pins))
    assert whoami["user"] == "myapp" and whoami["client_cert"]["subject"] == "CN=myapp,O=Acme"

    mark = proxy.log_count()
    refused = okhttp(okhttp_classes, url, mimic.keystore, KEYTOOL_PASSWORD, d / "server-ca.pem", pins)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=unknown_ca .*self-signed certificate",
                       10, start=mark)
