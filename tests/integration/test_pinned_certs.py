"""``tls.client_certs``: the classic keytool recipe end to end, and pinned certificates under every rule.

keytool makes the app's keystore (a self-signed certificate with only an SKI), the proxy pins the
exported certificate, a JSSE client with that keystore gets 200 and its identity; a second keytool
certificate with the same subject is refused at the handshake. Then, with Python clients: expiry,
the deny-list, policy rules, reload (pin removed: open connections 403 ``ca_not_trusted``, new
ones refused), TLS 1.3 resumption, a pinned CA-issued leaf without EKU, pins the config refuses.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtls_proxy.pki import x509 as X
from tests.integration.test_reload import get, keepalive, tls_refusal
from tests.integration.test_resumption import one_request
from tests.support.keytool import PASSWORD, KeytoolIdentity, make_keystore
from tests.support.pki import TestPki

JAVA_SRC = Path(__file__).resolve().parents[1] / "java" / "MtlsClient.java"

pytestmark = pytest.mark.skipif(shutil.which("keytool") is None, reason="the JDK is installed by scripts/test.sh")


def pinned_only(proxies: Any, *pins: Path, **tls: Any) -> dict[str, Any]:
    """The base config with tls.client_certs instead of tls.client_ca."""
    cfg = proxies.config(tls={"client_certs": [str(p) for p in pins], **tls})
    del cfg["tls"]["client_ca"]
    return cfg


def context(pki: TestPki, ident: KeytoolIdentity) -> ssl.SSLContext:
    ctx = pki.client_context(None)
    ctx.load_cert_chain(str(ident.cert_pem), str(ident.key_pem))
    return ctx


def handshake_refused(proxy: Any, ctx: ssl.SSLContext, reason: str, detail: str) -> None:
    mark = proxy.log_count()
    _, err = tls_refusal(proxy, ctx)
    assert err.reason is not None
    proxy.wait_for_log(rf"tls handshake failed: client=127\.0\.0\.1 reason={reason} .*{detail}", 10, start=mark)


def test_keytool_recipe_with_jsse(tmp_path, proxies, pki):
    app = make_keystore(tmp_path, "app")
    mimic = make_keystore(tmp_path, "mimic")  # same subject, another key
    assert app.cert.subject == mimic.cert.subject and app.cert.issuer == app.cert.subject
    assert [e.oid._name for e in app.cert.extensions] == ["subjectKeyIdentifier"]  # the keytool profile
    classes = tmp_path / "classes"
    r = subprocess.run(["javac", "-d", str(classes), str(JAVA_SRC)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr

    cfg = pinned_only(proxies, app.exported)  # the DER keytool -exportcert wrote
    proxy = proxies.start(cfg)
    url = f"https://127.0.0.1:{proxy.port}/api/whoami"

    def jsse(ident: KeytoolIdentity) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["java", "-cp", str(classes), "MtlsClient", url, str(ident.keystore), PASSWORD,
                               str(pki.server_ca_pem)], capture_output=True, text=True, timeout=120)

    ok = jsse(app)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    status, body = ok.stdout.split("\n", 1)
    whoami = json.loads(body)
    assert status == "200" and whoami["user"] == "myapp"
    assert whoami["client_cert"]["subject"] == "CN=myapp,O=Acme"
    fingerprint = whoami["client_cert"]["fingerprint"].replace(":", "").lower()
    assert fingerprint == app.cert.fingerprint(X.hashes.SHA256()).hex()

    mark = proxy.log_count()
    refused = jsse(mimic)
    assert refused.returncode == 3, refused.stdout + refused.stderr  # TLS error: no HTTP response
    proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=unknown_ca "
                       r"detail=.*certificate verify failed: self-signed certificate", 10, start=mark)

    check = subprocess.run([sys.executable, "-m", "mtls_proxy", "check", "--config", str(proxy.config_path),
                            "--client-cert", str(mimic.exported)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "1 pinned client certificate(s)" in check.stdout
    assert "Each pinned certificate is ONE identity: every install that carries it is the same client" in check.stdout
    assert "REFUSED: CN=myapp,O=Acme\n  refused at the handshake (unknown_ca): not issued by a configured client " \
           "CA and not pinned" in check.stdout


def test_pinned_alongside_client_ca_with_policy_denylist_and_reload(tmp_path, proxies, pki):
    app = make_keystore(tmp_path, "app-alongside", "CN=legacy-app, O=Acme", rfc=True,  # PEM this time
                        extra=("-ext", "EKU=clientAuth"))
    device = pki.client("pin-device")
    rules = [{"name": "legacy", "paths": ["/api/whoami"], "clients": [{"fingerprint": [
                 app.cert.fingerprint(X.hashes.SHA256()).hex()]}]},
             {"name": "devices", "paths": ["/"], "clients": [{"issuer": {"CN": "Test Client CA"}}]}]
    cfg = proxies.config(tls={"client_certs": str(app.exported)}, policy={"rules": rules})
    proxy = proxies.start(cfg)
    legacy, dev = keepalive(proxy, context(pki, app)), keepalive(proxy, pki.client_context(device))
    status, body = get(legacy, "/api/whoami")
    assert status == 200 and body["client_cert"]["common_name"] == "legacy-app"
    assert get(legacy, "/api/echo") == (403, {"error": "forbidden", "reason": "client_not_allowed"})
    assert get(dev, "/api/echo")[0] == 200

    # the deny-list applies to the pinned certificate, on the connection already open
    cfg["policy"] = {"rules": rules, "deny": {"fingerprints": [app.cert.fingerprint(X.hashes.SHA256()).hex()]}}
    proxy.write_config(cfg)
    proxy.reload()
    assert get(legacy, "/api/whoami") == (403, {"error": "forbidden", "reason": "denylisted"})

    # unpinned by a reload: the open connection is refused on its next request, a new one at the handshake
    cfg["policy"] = {"rules": rules}
    cfg["tls"] = {k: v for k, v in cfg["tls"].items() if k != "client_certs"}
    proxy.write_config(cfg)
    proxy.reload()
    assert get(legacy, "/api/whoami") == (403, {"error": "forbidden", "reason": "ca_not_trusted"})
    handshake_refused(proxy, context(pki, app), "unknown_ca", "self-signed certificate")
    assert get(dev, "/api/echo")[0] == 200


def test_expired_pinned_certificate_is_refused(tmp_path, proxies, pki):
    old = make_keystore(tmp_path, "expired", extra=("-startdate", "-3d", "-validity", "1"))
    proxy = proxies.start(pinned_only(proxies, old.exported))
    handshake_refused(proxy, context(pki, old), "cert_expired", "certificate has expired")


def test_pinned_certificate_resumes_tls13_sessions(tmp_path, proxies, pki):
    """A resumed session has no verified chain; the pinned leaf stands alone and is still trusted."""
    app = make_keystore(tmp_path, "resume")
    proxy = proxies.start(pinned_only(proxies, app.exported))
    ctx = context(pki, app)
    version, reused, status, body, session = one_request(proxy, ctx)
    assert (version, reused, status) == ("TLSv1.3", False, 200)
    for _ in range(2):
        version, reused, status, body, session = one_request(proxy, ctx, session)
        assert (version, reused, status) == ("TLSv1.3", True, 200)
        assert body["client_cert"]["common_name"] == "myapp"


def test_pinned_ca_issued_leaf_without_eku(tmp_path, proxies, pki):
    """A leaf of a CA the proxy does not trust, pinned: accepted without EKU; its sibling is not."""
    vendor = X.issue_ca({"CN": "Vendor CA"})
    leaf = X.issue_client({"CN": "vendor-device"}, vendor, ekus=None)
    sibling = X.issue_client({"CN": "vendor-device-2"}, vendor)
    paths = {}
    for name, issued in (("leaf", leaf), ("sibling", sibling)):
        paths[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        paths[name][0].write_bytes(issued.cert_pem())
        paths[name][1].write_bytes(issued.key_pem())
    proxy = proxies.start(pinned_only(proxies, paths["leaf"][0]))

    def ctx(name: str) -> ssl.SSLContext:
        c = pki.client_context(None)
        c.load_cert_chain(str(paths[name][0]), str(paths[name][1]))
        return c

    status, body = proxy.get_json(ctx("leaf"), "/api/echo")
    assert status == 200 and body["client_cert"]["common_name"] == "vendor-device"
    handshake_refused(proxy, ctx("sibling"), "unknown_ca", "unable to get local issuer certificate")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: X.issue_ca({"CN": "pinned CA"}), "is a CA certificate (basicConstraints CA:TRUE): put CAs in "
                                                  "tls.client_ca, pin only leaves"),
        (lambda: X.issue_certificate({"CN": "server-only"}, ekus=[X.EKU_SERVER]),
         "its extended key usage does not include clientAuth: every handshake with it would be refused"),
    ],
    ids=["ca", "server-eku"],
)
def test_check_refuses_pins_that_could_issue_or_never_work(tmp_path, pki, make, message):
    pin = tmp_path / "pin.pem"
    pin.write_bytes(make().cert_pem())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:8000",
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_certs": [str(pin)]},
        "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]},
    }))
    r = subprocess.run([sys.executable, "-m", "mtls_proxy", "check", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"tls.client_certs[0]: {pin}: " in r.stderr and message in r.stderr, r.stderr


def test_pinned_setup_still_requires_a_client_certificate(tmp_path, proxies, pki):
    """The pinned setup is still mutual TLS: no client certificate, no way in."""
    app = make_keystore(tmp_path, "nocert")
    proxy = proxies.start(pinned_only(proxies, app.exported))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, pytest.raises(ssl.SSLError), \
            pki.client_context(None).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(100)
    proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=no_client_cert")
