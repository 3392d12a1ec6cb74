"""Pins: computed equal to an independent SPKI extraction, and rendered as each platform parses it."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import plistlib
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_proxy.certs import spki_sha256
from mtls_proxy.pki.pins import (
    ROLE_BACKUP,
    ROLE_CA,
    ROLE_LEAF,
    Pin,
    PinSet,
    is_valid_host,
    render,
    render_android,
    render_ios,
    render_okhttp,
    render_raw,
    render_trustkit,
    spki_sha256_of_key,
)
from mtls_proxy.pki.store import PkiError, PkiStore


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at ``offset``."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[start : start + n], "big")
        start += n
    return tag, start, start + length


def spki_from_certificate_der(der: bytes) -> bytes:
    """Cut the SubjectPublicKeyInfo out of a certificate by walking the DER by hand.

    Independent of cryptography's key serialisation: Certificate -> tbsCertificate ->
    [version] serial signature issuer validity subject *subjectPublicKeyInfo*.
    """
    _, cert_start, _ = _der_element(der, 0)
    _, pos, _ = _der_element(der, cert_start)  # inside tbsCertificate
    if der[pos] == 0xA0:  # explicit [0] version
        pos = _der_element(der, pos)[2]
    for _ in range(5):  # serial, signature, issuer, validity, subject
        pos = _der_element(der, pos)[2]
    tag, _, end = _der_element(der, pos)
    assert tag == 0x30
    return der[pos:end]


def independent_pin(cert: x509.Certificate) -> str:
    spki = spki_from_certificate_der(cert.public_bytes(serialization.Encoding.DER))
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def ca_store(tmp_path: Path) -> PkiStore:
    s = PkiStore(tmp_path / "ca-pki")
    s.init()
    s.issue_server(dns=["api.example.com"], ips=["127.0.0.1"])
    return s


@pytest.fixture
def ss_store(tmp_path: Path) -> PkiStore:
    s = PkiStore(tmp_path / "ss-pki")
    s.init(server_mode="self-signed", key_type="rsa-2048")
    s.issue_server(dns=["api.example.com"])
    return s


def test_der_walker_agrees_with_cryptography(ca_store: PkiStore) -> None:
    cert = x509.load_pem_x509_certificate(ca_store.server_cert_path.read_bytes())
    spki = spki_from_certificate_der(cert.public_bytes(serialization.Encoding.DER))
    assert serialization.load_der_public_key(spki) == cert.public_key()


def test_ca_mode_pins_equal_independent_computation(ca_store: PkiStore) -> None:
    pin_set = ca_store.pins()
    leaf, ca = x509.load_pem_x509_certificates(ca_store.server_cert_path.read_bytes())
    assert [(p.role, p.sha256) for p in pin_set.pins] == [
        (ROLE_LEAF, independent_pin(leaf)),
        (ROLE_CA, independent_pin(ca)),
    ]
    assert pin_set.host == "api.example.com"
    assert pin_set.trust_anchor == "server-ca.pem"
    assert pin_set.expiration == (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).date()


def test_self_signed_pins_a_saved_backup_key(ss_store: PkiStore) -> None:
    first = ss_store.pins()
    leaf = x509.load_pem_x509_certificate(ss_store.server_cert_path.read_bytes())
    assert first.pins[0] == Pin(ROLE_LEAF, independent_pin(leaf), leaf.subject.rfc4514_string())
    assert first.pins[1].role == ROLE_BACKUP
    backup_path = ss_store.backup_key_path
    assert stat.S_IMODE(backup_path.stat().st_mode) == 0o600
    backup = serialization.load_pem_private_key(backup_path.read_bytes(), password=None)
    backup_spki = backup.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert first.pins[1].sha256 == base64.b64encode(hashlib.sha256(backup_spki).digest()).decode()
    assert first.pins[0].sha256 != first.pins[1].sha256
    assert ss_store.pins() == first, "the backup pin must be stable once created"
    assert first.trust_anchor == "server.pem"


def test_rotating_to_the_backup_key_creates_a_new_backup(ss_store: PkiStore) -> None:
    from mtls_proxy.pki.store import load_private_key

    old = ss_store.pins()
    ss_store.issue_server(dns=["api.example.com"], key=load_private_key(ss_store.backup_key_path))
    new = ss_store.pins()
    assert new.pins[0].sha256 == old.pins[1].sha256, "the old backup pin is now the leaf pin"
    assert new.pins[1].sha256 not in (old.pins[0].sha256, old.pins[1].sha256)


def test_pins_need_a_server_certificate(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki")
    s.init(server_mode="self-signed")
    with pytest.raises(PkiError, match="no server certificate"):
        s.pins()
    assert not s.backup_key_path.exists()


def test_spki_of_key_matches_spki_of_cert(ca_store: PkiStore) -> None:
    cert = x509.load_pem_x509_certificate(ca_store.server_cert_path.read_bytes())
    assert spki_sha256_of_key(cert.public_key()) == spki_sha256(cert)


# -- rendering -------------------------------------------------------------------------

PINS = PinSet(
    host="api.example.com",
    pins=(
        Pin(ROLE_LEAF, "LEAFLEAFLEAFLEAFLEAFLEAFLEAFLEAFLEAFLEAFLEA=", "CN=api.example.com"),
        Pin(ROLE_CA, "CACACACACACACACACACACACACACACACACACACACACAC=", "CN=server CA -- test"),
    ),
    server_mode="ca",
    expiration=dt.date(2031, 2, 3),
    trust_anchor="server-ca.pem",
)
SELF_SIGNED = PinSet(
    host="api.example.com",
    pins=(PINS.pins[0], Pin(ROLE_BACKUP, "BACKUPBACKUPBACKUPBACKUPBACKUPBACKUPBACKUP0=", "server-backup.key")),
    server_mode="self-signed",
    expiration=dt.date(2031, 2, 3),
    trust_anchor="server.pem",
)


def test_render_raw() -> None:
    lines = render_raw(PINS).splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[p.sha256, p.role] for p in PINS.pins]


def test_render_android_parses_with_pins_and_expiration() -> None:
    root = ET.fromstring(render_android(PINS))
    assert root.tag == "network-security-config"
    domain_config = root.find("domain-config")
    assert domain_config is not None
    assert domain_config.findtext("domain") == "api.example.com"
    anchors = domain_config.find("trust-anchors/certificates")
    assert anchors is not None and anchors.get("src") == "@raw/server_ca"
    pin_set = domain_config.find("pin-set")
    assert pin_set is not None and pin_set.get("expiration") == "2031-02-03"
    pins = pin_set.findall("pin")
    assert len(pins) >= 2
    assert all(p.get("digest") == "SHA-256" for p in pins)
    assert [p.text for p in pins] == [p.sha256 for p in PINS.pins]


def test_render_okhttp() -> None:
    lines = re.findall(r'\.add\("([^"]+)", "sha256/([^"]+)"\)', render_okhttp(PINS))
    assert lines == [("api.example.com", p.sha256) for p in PINS.pins]
    assert "CertificatePinner.Builder()" in render_okhttp(PINS)


def test_render_ios_ca_mode_pins_the_ca_only() -> None:
    doc = plistlib.loads(render_ios(PINS).encode())
    domain = doc["NSAppTransportSecurity"]["NSPinnedDomains"]["api.example.com"]
    assert domain["NSPinnedCAIdentities"] == [{"SPKI-SHA256-BASE64": PINS.pins[1].sha256}]
    assert "NSPinnedLeafIdentities" not in domain, "ATS would then demand a leaf match too"
    assert domain["NSIncludesSubdomains"] is False


def test_render_ios_self_signed_pins_leaf_and_backup() -> None:
    doc = plistlib.loads(render_ios(SELF_SIGNED).encode())
    domain = doc["NSAppTransportSecurity"]["NSPinnedDomains"]["api.example.com"]
    assert domain["NSPinnedLeafIdentities"] == [{"SPKI-SHA256-BASE64": p.sha256} for p in SELF_SIGNED.pins]
    assert "NSPinnedCAIdentities" not in domain


def test_render_trustkit() -> None:
    doc = plistlib.loads(render_trustkit(PINS).encode())
    config = doc["TSKConfiguration"]
    assert config["TSKSwizzleNetworkDelegates"] is False
    domain = config["TSKPinnedDomains"]["api.example.com"]
    assert len(domain["TSKPublicKeyHashes"]) >= 2
    assert domain["TSKPublicKeyHashes"] == [p.sha256 for p in PINS.pins]
    assert domain["TSKExpirationDate"] == "2031-02-03"
    assert domain["TSKEnforcePinning"] is True


def test_render_dispatch_and_unknown_format() -> None:
    assert render(PINS, "android") == render_android(PINS)
    with pytest.raises(ValueError, match="unknown pin format"):
        render(PINS, "hpkp")


def test_hostile_host_cannot_break_the_xml() -> None:
    evil = PinSet('a<b>&"c', PINS.pins, "ca", PINS.expiration, "server-ca.pem")
    root = ET.fromstring(render_android(evil))
    assert root.findtext("domain-config/domain") == 'a<b>&"c'


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("api.example.com", True),
        ("localhost", True),
        ("*.example.com", True),
        ("127.0.0.1", False),
        ("-bad.com", False),
        ("a..b", False),
        ("", False),
        ("x" * 64 + ".com", False),
    ],
)
def test_is_valid_host(host: str, ok: bool) -> None:
    assert is_valid_host(host) is ok
