"""``tls.x509_strict``: an existing CA brought in with ``pki init --import-ca``, a leaf without an AKID.

Strict on (the default): that leaf is refused at the handshake, the log names the setting, and
``check --client-cert`` says why before anyone deploys. ``tls.x509_strict: false``: accepted, like
nginx. A leaf ``pki issue-client`` makes under the same imported CA passes either way. A CA
without a Subject Key Identifier is refused by ``check`` (strict would refuse every chain through
it) and by ``pki init --import-ca``, unless strict mode is off.
"""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mtls_proxy.pki import x509 as X
from tests.integration.test_reload import tls_refusal
from tests.support.pki import TestPki


def hand_rolled(subject: str, issuer: X.Issued | None, *, ca: bool, ski: bool = True, akid: bool = False) -> X.Issued:
    """What many scripts write: basicConstraints and keyUsage, an SKI maybe, an AKID rarely."""
    key = X.generate_key()
    now = dt.datetime.now(dt.UTC)
    name = X.build_name({"CN": subject, "O": "Legacy"})
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key()).serial_number(X.random_serial())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True)
    )
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if akid and issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([X.EKU_CLIENT]), critical=False)
    return X.Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def write(d: Path, name: str, issued: X.Issued) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(issued.key_pem())
    return cert, key


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtls_proxy", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def context(pki: TestPki, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = pki.client_context(None)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_leaf_without_akid_under_an_imported_ca(tmp_path, proxies, pki):
    legacy_ca = hand_rolled("Legacy Device CA", None, ca=True)
    ca_cert, ca_key = write(tmp_path, "legacy-ca", legacy_ca)
    d = tmp_path / "deep" / "pki"  # missing parents are created
    r = cli("pki", "--dir", d, "init", "--import-ca", ca_cert, "--ca-key", ca_key)
    assert r.returncode == 0, r.stderr
    assert "imported client CA: O=Legacy,CN=Legacy Device CA" in r.stdout
    assert (d / "ca.pem").read_bytes() == legacy_ca.cert_pem()
    r = cli("pki", "--dir", d, "issue-client", "--name", "new-phone")
    assert r.returncode == 0, r.stderr

    old_phone = write(tmp_path, "old-phone", hand_rolled("old-phone", legacy_ca, ca=False))  # no AKID
    new_phone = (d / "clients" / "new-phone.pem", d / "clients" / "new-phone.key")

    def start(strict: bool | None) -> Any:
        tls: dict[str, Any] = {"client_ca": str(d / "ca.pem"), "crl": str(d / "crl.pem")}
        if strict is not None:
            tls["x509_strict"] = strict
        return proxies.start(proxies.config(tls=tls))

    strict = start(None)  # the default
    mark = strict.log_count()
    tls_refusal(strict, context(pki, *old_phone))
    strict.wait_for_log(
        r"tls handshake failed: client=127\.0\.0\.1 reason=x509_strict detail=.*certificate verify failed: "
        r"Missing Authority Key Identifier .*\(refused by tls\.x509_strict: true, RFC 5280 profile checks; set "
        r"tls\.x509_strict: false to accept such certificates", 10, start=mark)
    assert strict.get_json(context(pki, *new_phone), "/api/echo")[0] == 200

    check = cli("check", "--config", strict.config_path, "--client-cert", old_phone[0])
    assert check.returncode == 1, check.stdout + check.stderr
    assert "note: tls.x509_strict: true (the default): a client certificate issued by a CA must meet RFC 5280's" \
           in check.stdout
    assert ("REFUSED: O=Legacy,CN=old-phone\n  issued under the client CA 'O=Legacy,CN=Legacy Device CA'\n"
            "  refused at the handshake by tls.x509_strict: true (reason=x509_strict): it has no Authority Key "
            "Identifier (keyid); accepted with tls.x509_strict: false\n") in check.stdout
    assert cli("check", "--config", strict.config_path, "--client-cert", new_phone[0]).returncode == 0

    lenient = start(False)
    status, body = lenient.get_json(context(pki, *old_phone), "/api/echo")
    assert status == 200 and body["client_cert"]["common_name"] == "old-phone"
    assert lenient.get_json(context(pki, *new_phone), "/api/echo")[0] == 200
    check = cli("check", "--config", lenient.config_path, "--client-cert", old_phone[0])
    assert check.returncode == 0 and "ACCEPTED: O=Legacy,CN=old-phone" in check.stdout, check.stdout
    assert "note: tls.x509_strict: false: OpenSSL's RFC 5280 profile checks are off" in check.stdout


@pytest.mark.parametrize("strict", [True, False])
def test_ca_without_ski(tmp_path, proxies, pki, strict):
    """Strict mode refuses every chain through a CA without an SKI: check says so; off, it works."""
    no_ski = hand_rolled("No SKI CA", None, ca=True, ski=False)
    ca_cert, ca_key = write(tmp_path, "no-ski-ca", no_ski)
    leaf = write(tmp_path, "no-ski-leaf", hand_rolled("no-ski-leaf", no_ski, ca=False))
    cfg = proxies.config(tls={"client_ca": str(ca_cert), "x509_strict": strict})
    path = tmp_path / "no-ski.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = cli("check", "--config", path)
    imported = cli("pki", "--dir", tmp_path / "pki", "init", "--import-ca", ca_cert, "--ca-key", ca_key,
                   *(() if strict else ("--no-x509-strict",)))
    if strict:
        problem = (f"{ca_cert}: the CA 'O=Legacy,CN=No SKI CA' has no Subject Key Identifier: with tls.x509_strict: "
                   "true (the default) OpenSSL refuses every client chain through it; re-issue the CA, or set "
                   "tls.x509_strict: false")
        assert r.returncode == 1 and f"tls.client_ca: {problem}" in r.stderr, r.stderr
        assert imported.returncode == 1
        assert imported.stderr == f"mtls-proxy pki: error: {problem} (import it anyway with --no-x509-strict)\n"
        assert not (tmp_path / "pki").exists()
    else:
        assert r.returncode == 0, r.stderr
        assert imported.returncode == 0, imported.stderr
        proxy = proxies.start(cfg)
        assert proxy.get_json(context(pki, *leaf), "/api/echo")[0] == 200
