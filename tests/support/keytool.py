"""The JDK's keytool, as the classic "self-signed client certificate in the app" recipe uses it.

``keytool -genkeypair -keyalg EC -storetype PKCS12`` gives a self-signed v3 certificate with only a
Subject Key Identifier (no basicConstraints, no EKU); ``-exportcert`` writes it DER (PEM with -rfc).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

PASSWORD = "changeit"


@dataclass(frozen=True)
class KeytoolIdentity:
    keystore: Path  # PKCS#12, what the app ships
    exported: Path  # the certificate alone, for the proxy's tls.client_certs
    cert_pem: Path  # PEM copies of the keystore's certificate and key, for Python clients
    key_pem: Path
    cert: x509.Certificate


def keytool(*args: str) -> None:
    r = subprocess.run(["keytool", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def make_keystore(directory: Path, name: str, dname: str = "CN=myapp, O=Acme", *, rfc: bool = False,
                  extra: tuple[str, ...] = ()) -> KeytoolIdentity:
    """keytool -genkeypair (EC P-256, 10 years unless ``extra`` says otherwise) and -exportcert."""
    keystore = directory / f"{name}.p12"
    keytool("-genkeypair", "-keyalg", "EC", "-groupname", "secp256r1", "-alias", "app", "-dname", dname,
            "-validity", "3650", "-storetype", "PKCS12", "-keystore", str(keystore),
            "-storepass", PASSWORD, "-keypass", PASSWORD, *extra)
    exported = directory / f"{name}.{'pem' if rfc else 'der'}"
    keytool("-exportcert", "-alias", "app", "-keystore", str(keystore), "-storepass", PASSWORD,
            "-file", str(exported), *(("-rfc",) if rfc else ()))
    key, cert, _ = pkcs12.load_key_and_certificates(keystore.read_bytes(), PASSWORD.encode())
    assert key is not None and cert is not None
    cert_pem, key_pem = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    cert_pem.write_bytes(cert.public_bytes(Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return KeytoolIdentity(keystore, exported, cert_pem, key_pem, cert)
