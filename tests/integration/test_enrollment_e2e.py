"""Issue 11 end to end: a JVM client (OkHttp, BouncyCastle) enrolls through two proxies and is revoked.

Real parts only: the enrollment site under gunicorn (3 workers) on PostgreSQL and on SQLite, two
``mtls-proxy run`` processes with a ``client_auth: optional`` listener, ``clients: none`` on the
enrollment paths, and the site's CRL URL in ``tls.crl`` (refreshed every second), and
tests/java/EnrollmentClient.java: it generates its EC key, fetches a challenge without a
certificate, builds a PKCS#10, sends it with the attestation chain this test makes for its key
(under a test root given to the verifier through MTLS_ENROLLMENT), takes the certificate, calls the
API with it (200, Django sees the device and its user), renews over mTLS, keeps one connection open
to each proxy and is refused on both within ``crl_refresh`` + 1 s of ``manage.py mtls_enroll revoke``:
over HTTP/1.1 with 403 ``revoked`` on the open connection; over HTTP/2 (what OkHttp negotiates with
the proxy) the proxy closes the open connection (GOAWAY) and refuses the next handshake.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.identity import generate_signing_key
from mtls_proxy.pki import PkiStore
from tests.support.attestation_pki import PACKAGE, SIGNER_DIGEST, AndroidTestRoot, KeyDescriptionSpec, pem
from tests.support.enrollment_site import start_enrollment_site
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.proxy import ProxyFactory

JAVA_DIR = Path(__file__).resolve().parents[1] / "java"
JARS = [f"/usr/share/java/{j}.jar" for j in ("bcprov", "bcpkix", "bcutil", "okhttp", "okio")]
USER = ("alice", "alice-password-1")
CRL_REFRESH = 1.0

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("javac") is None or not all(Path(j).is_file() for j in JARS),
                       reason="the JDK, BouncyCastle and OkHttp jars are installed by scripts/test.sh"),
]


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("enroll-java")
    r = subprocess.run(["javac", "-cp", ":".join(JARS), "-d", str(out), str(JAVA_DIR / "MtlsClient.java"),
                        str(JAVA_DIR / "EnrollmentClient.java")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return ":".join([str(out), *JARS])


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.close()


class Java:
    """The running client: one line out per step, one line in when the test must act."""

    def __init__(self, classpath: str, args: list[str]) -> None:
        self.process = subprocess.Popen(["java", "-cp", classpath, "EnrollmentClient", *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def expect(self, word: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().rstrip("\n")
        if not line.startswith(word + " ") and line != word:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"expected {word}, got {line!r}; stderr:\n{err[-3000:]}")
        return line[len(word) + 1:]

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_jvm_client_enrolls_renews_and_is_revoked_on_two_proxies(database: str, request: pytest.FixtureRequest,
                                                                 tmp_path: Path, java_classes: str) -> None:
    if database == "postgresql":
        db: dict[str, Any] = request.getfixturevalue("postgres").django_database()
    else:
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db.sqlite3"),
              "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30}}
    store = PkiStore(tmp_path / "pki")
    store.init(issuing_ca=True)
    store.issue_server(dns=["localhost"], ips=["127.0.0.1"])
    android = AndroidTestRoot(now=dt.datetime.now(dt.UTC))
    (tmp_path / "android-roots.pem").write_bytes(pem([android.root]))
    key_file = tmp_path / "identity.key"
    key_file.write_text(generate_signing_key() + "\n")
    os.chmod(key_file, 0o600)
    site = start_enrollment_site(tmp_path, database=db, signing_key_file=key_file, users=[USER], enrollment={
        "ISSUING_CA_CERT_FILE": str(store.issuing_ca_cert_path), "ISSUING_CA_KEY_FILE": str(store.issuing_ca_key_path),
        "CRL_NEXT_UPDATE_SECONDS": 600,
        "ANDROID_APPS": [{"package": PACKAGE, "signer_digests": [SIGNER_DIGEST.hex()]}],
        "ANDROID_ROOTS_FILE": str(tmp_path / "android-roots.pem"),
    })
    crl_url = f"http://127.0.0.1:{site.port}/.well-known/est/crl"
    files = SimpleNamespace(server_pem=store.server_cert_path, server_key=store.server_key_path,
                            ca_pem=store.ca_cert_path, signing_key=key_file)
    proxies = ProxyFactory(tmp_path, files, f"http://127.0.0.1:{site.port}")
    java: Java | None = None
    try:
        enroll_paths = [f"/.well-known/est/{p}" for p in ("challenge", "simpleenroll", "cacerts", "crl")]
        policy = {"rules": [{"name": "enroll", "paths": enroll_paths, "clients": ["none", "any"]},
                            {"name": "app", "paths": ["/"], "clients": "any"}]}
        started = []
        for _ in range(2):
            cfg = proxies.config(policy=policy, tls={
                "client_ca": [str(store.ca_cert_path), str(store.issuing_ca_cert_path)],
                "crl": [str(store.crl_path), crl_url], "crl_refresh": f"{CRL_REFRESH:g}s"})
            cfg["listen"] = [{"address": cfg["listen"], "client_auth": "optional"}]
            started.append(proxies.start(cfg))
        first, second = started
        anonymous = ssl.create_default_context(cafile=str(store.server_ca_cert_path))
        status, body = first.get_json(anonymous, "/.well-known/est/reenroll-challenge", method="POST")
        assert (status, body["reason"]) == (403, "client_cert_required")  # renewal needs a certificate
        status, body = first.get_json(anonymous, "/.well-known/est/challenge", method="POST")
        assert (status, body["reason"]) == (401, "authentication_required")  # reached Django: a user is needed
        basic = {"Authorization": "Basic " + base64.b64encode(":".join(USER).encode()).decode(),
                 "Content-Type": "application/json"}
        status, body = first.get_json(anonymous, "/.well-known/est/simpleenroll", method="POST", headers=basic,
                                      body=json.dumps({"platform": "ios"}).encode())
        assert (status, body["reason"]) == (400, "platform_not_enabled")  # this site enrolls Android only
        java = Java(java_classes, [f"https://localhost:{first.port}", f"https://localhost:{second.port}",
                                   str(store.server_ca_cert_path), *USER])
        public = serialization.load_der_public_key(base64.b64decode(java.expect("PUBLIC")))
        challenge = base64.b64decode(java.expect("CHALLENGE"))
        chain = android.chain(public, KeyDescriptionSpec(challenge=challenge))  # type: ignore[arg-type]
        java.send("CHAIN " + ",".join(base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                                      for c in chain))
        device, serial = java.expect("ENROLLED").split()
        status, body = java.expect("WHOAMI").split(" ", 1)
        assert status == "200", body
        assert json.loads(body) == {"user": USER[0], "device": device, "serial": serial,
                                    "san_uri": [f"urn:mtls-proxy:device:{device}"]}
        renewed = java.expect("RENEWED")
        assert renewed != serial
        protocols = {}
        for name in ("A", "B"):
            status, protocols[name], body = java.expect(f"OPEN {name}").split(" ", 2)
            assert status == "200" and json.loads(body)["serial"] == renewed, body
        assert int(java.expect("POOLED")) == 2  # one kept-alive connection to each proxy
        marks = {"A": first.log_count(), "B": second.log_count()}
        java.send("WATCH")
        time.sleep(0.5)
        done = site.manage("mtls_enroll", "revoke", "--device", device)
        revoked_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        refusals = {}
        for _ in range(2):
            line = java.expect("REFUSED")
            refusals[line.split()[0]] = (time.monotonic() - revoked_at, line.split(" ", 2)[1:])
        assert java.expect("DONE") == ""
        after = {n: java.expect(f"AFTER {n}").split(" ", 1) for n in ("A", "B")}
        print(f"refused after revoke ({database}, {protocols}): "
              + ", ".join(f"{n} {e:.2f} s {r[0]}" for n, (e, r) in refusals.items()))
        for name, (elapsed, (status, body)) in refusals.items():
            proxy = first if name == "A" else second
            proxy.wait_for_log("CRL changed at its URL", 5, start=marks[name])
            if protocols[name] == "h2":  # the open connection closed (GOAWAY; a request crossing it is reset)
                assert status == "TLS", (name, body)
            else:  # HTTP/1.1: the next request on the open connection is refused
                assert (status, json.loads(body)["reason"]) == ("403", "revoked"), (name, body)
            # and a new connection does not get through the handshake
            assert after[name][0] == "TLS", (name, after[name])
            proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=cert_revoked", 5, start=marks[name])
            assert elapsed < CRL_REFRESH + 1, f"proxy {name} refused after {elapsed:.2f} s"
        assert int(java.expect("CONNECTIONS")) >= 0
        assert java.process.wait(30) == 0
        log = site.stderr_text()
        assert f"enroll issued: user=1 device={device} platform=android" in log
        assert f"reenroll issued: user=1 device={device} platform=android serial={renewed}" in log
        assert "evidence=none (same attested key)" in log
    finally:
        if java is not None and java.process.poll() is None:
            java.process.kill()
            java.process.wait(10)
        proxies.close()
        site.stop()
