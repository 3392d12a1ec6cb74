"""``pki init --import-ca`` / ``--import-server-ca``: an existing CA becomes the PKI's, checked as ``check`` does.

Every refusal is one ``mtls-proxy pki: error:`` line, exit 1, and leaves no directory behind.
"""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.pki import x509 as X

PASS = "import passphrase"


def pki(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtls_proxy.pki", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def write(d: Path, name: str, issued: X.Issued, *chain: X.Issued, password: bytes | None = None) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    cert.write_bytes(issued.cert_pem() + b"".join(c.cert_pem() for c in chain))
    key.write_bytes(issued.key_pem(password))
    return cert, key


def test_import_both_cas_with_an_intermediate_and_an_encrypted_key(tmp_path):
    root = X.issue_ca({"CN": "Corp Root"})
    devices = X.issue_ca({"CN": "Corp Devices"}, issuer=root)
    servers = X.issue_ca({"CN": "Corp Servers"})
    ca_cert, ca_key = write(tmp_path, "devices", devices, root, password=PASS.encode())
    srv_cert, srv_key = write(tmp_path, "servers", servers)
    (tmp_path / "pass").write_text(PASS + "\n")
    d = tmp_path / "x" / "pki"
    r = pki("--dir", d, "init", "--import-ca", ca_cert, "--ca-key", ca_key, "--import-server-ca", srv_cert,
            "--server-ca-key", srv_key, "--ca-passphrase-file", tmp_path / "pass")
    assert r.returncode == 0, r.stderr
    assert "imported client CA: CN=Corp Devices\n  imported server CA: CN=Corp Servers\n" in r.stdout
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (d / "ca.pem").read_bytes() == devices.cert_pem() + root.cert_pem()
    assert (d / "server-ca.pem").read_bytes() == servers.cert_pem()
    # stored encrypted with the PKI passphrase (the server CA key too, which came unencrypted)
    for key in ("ca.key", "server-ca.key"):
        serialization.load_pem_private_key((d / key).read_bytes(), password=PASS.encode())
        assert stat.S_IMODE((d / key).stat().st_mode) == 0o600
    unlock = ("--ca-passphrase-file", tmp_path / "pass")
    assert pki("--dir", d, "issue-server", "--dns", "localhost", *unlock).returncode == 0
    assert pki("--dir", d, "issue-client", "--name", "phone", *unlock).returncode == 0
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate((d / "clients" / "phone.pem").read_bytes())
    leaf.verify_directly_issued_by(devices.cert)
    server = x509.load_pem_x509_certificates((d / "server.pem").read_bytes())[0]
    server.verify_directly_issued_by(servers.cert)
    crl = x509.load_pem_x509_crl((d / "crl.pem").read_bytes())
    assert crl.issuer == devices.cert.subject and crl.is_signature_valid(devices.key.public_key())
    assert pki("--dir", d, "revoke", "--name", "phone", *unlock).returncode == 0


def _expired_ca() -> X.Issued:
    now = dt.datetime.now(dt.UTC)
    return X.issue_ca({"CN": "Old"}, not_before=now - dt.timedelta(days=20), not_after=now - dt.timedelta(days=1))


ROOT = X.issue_ca({"CN": "Root"})
OTHER = X.issue_ca({"CN": "Other"})
INTER = X.issue_ca({"CN": "Inter"}, issuer=ROOT)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write(d, "leaf", X.issue_client("leaf", ROOT)), "{cert}: 'CN=leaf' is not a CA certificate "
                                                                   "(basicConstraints CA:TRUE)"),
        (lambda d: (write(d, "root", ROOT)[0], write(d, "other", OTHER)[1]), "{key} is not the key of {cert} "
                                                                            "('CN=Root')"),
        (lambda d: write(d, "old", _expired_ca()), "{cert}: the CA 'CN=Old' expired on "),
        (lambda d: write(d, "inter", INTER), "{cert}: 'CN=Inter' is not self-signed: append its issuers up to the "
                                             "root to the file"),
        (lambda d: write(d, "inter", INTER, OTHER), "{cert}: 'CN=Inter' is not issued by the next certificate in "
                                                    "the file, 'CN=Other'"),
        (lambda d: write(d, "enc", ROOT, password=b"secret"), "{key} is encrypted; pass its passphrase with "
                                                              "--ca-passphrase-file"),
        (lambda d: ((d / "junk.pem"), write(d, "root", ROOT)[1]), "{cert}: no PEM or DER certificate could be read"),
    ],
    ids=["not-ca", "wrong-key", "expired", "intermediate-alone", "broken-chain", "encrypted", "junk"],
)
def test_import_refusals(tmp_path, make, message):
    (tmp_path / "junk.pem").write_text("not a certificate")
    cert, key = make(tmp_path)
    r = pki("--dir", tmp_path / "pki", "init", "--import-ca", cert, "--ca-key", key)
    assert r.returncode == 1
    assert r.stderr.startswith("mtls-proxy pki: error: " + message.format(cert=cert, key=key)), r.stderr
    assert not (tmp_path / "pki").exists()


def test_import_flags_go_together(tmp_path):
    cert, _ = write(tmp_path, "root", ROOT)
    r = pki("--dir", tmp_path / "pki", "init", "--import-ca", cert)
    assert (r.returncode, r.stderr) == (1, "mtls-proxy pki: error: --import-ca and --ca-key go together\n")
    cert, key = write(tmp_path, "servers", OTHER)
    r = pki("--dir", tmp_path / "pki", "init", "--server", "self-signed", "--import-server-ca", cert,
            "--server-ca-key", key)
    assert r.returncode == 1 and "--import-server-ca needs --server ca" in r.stderr
    assert not (tmp_path / "pki").exists()
