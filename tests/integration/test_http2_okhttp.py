"""OkHttp on the JVM (Debian's libokhttp-java, what Android apps embed) negotiating h2 with a client certificate.

tests/java/OkHttpH2Client.java sends 50 concurrent GETs that OkHttp multiplexes on one HTTP/2
connection, then a POST; every answer must be 200 over h2 with the identity Django saw.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

JAVA_SRC = Path(__file__).resolve().parents[1] / "java" / "OkHttpH2Client.java"
JARS = [Path("/usr/share/java/okhttp.jar"), Path("/usr/share/java/okio.jar")]
PASSWORD = "okhttp test"
N = 50

pytestmark = [
    pytest.mark.skipif(shutil.which("javac") is None or not all(j.exists() for j in JARS),
                       reason="the JDK and libokhttp-java are installed by scripts/test.sh"),
    pytest.mark.timeout(240),
]


def test_okhttp_negotiates_h2_and_multiplexes(proxy, pki, tmp_path):
    c = pki.client("okhttp-phone")
    p12 = tmp_path / "okhttp-phone.p12"
    key = serialization.load_pem_private_key(c.key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(c.cert.read_bytes())
    p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"okhttp-phone", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())))  # type: ignore[arg-type]
    classes = tmp_path / "classes"
    cp = ":".join(str(j) for j in JARS)
    r = subprocess.run(["javac", "-cp", cp, "-d", str(classes), str(JAVA_SRC)], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    # 127.0.0.1, not localhost: Java tries ::1 first for "localhost"
    r = subprocess.run(["java", "-cp", f"{classes}:{cp}", "OkHttpH2Client", f"https://127.0.0.1:{proxy.port}",
                        str(p12), PASSWORD, str(pki.server_ca_pem), str(N)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    warm, gets, post, conns = lines[0], lines[1:N + 1], lines[N + 1], lines[N + 2]
    assert warm.startswith("warm h2 200 ")
    for i, line in enumerate(gets):
        index, protocol, status, body = line.split(" ", 3)
        assert (index, protocol, status) == (str(i), "h2", "200")
        seen = json.loads(body)
        assert seen["query_string"] == f"i={i}"
        assert seen["client_cert"]["common_name"] == "okhttp-phone"
    assert post.startswith("post h2 200 ") and json.loads(post.split(" ", 3)[3])["length"] == 100_000
    assert conns == "connections 1"  # all of it multiplexed on one mTLS connection
    assert sum("cn=okhttp-phone" in line and "protocol=h2" in line for line in proxy.logs) >= N + 2
