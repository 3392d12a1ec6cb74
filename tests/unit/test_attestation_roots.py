"""Shipped and operator-supplied trust anchors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization

from mtls_proxy.attestation.chain import spki
from mtls_proxy.attestation.roots import (
    RootsError,
    apple_app_attestation_roots,
    google_hardware_roots,
    google_software_roots,
    load_roots_file,
    parse_roots,
)


def test_roots_file_formats():
    """--roots takes Google's roots.json format (a JSON array of PEM strings) or a PEM bundle."""
    shipped = google_hardware_roots()
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in shipped)
    as_json = json.dumps([c.public_bytes(serialization.Encoding.PEM).decode() for c in shipped]).encode()
    assert [spki(c) for c in parse_roots(pem, "roots.pem")] == [spki(c) for c in shipped]
    assert [spki(c) for c in parse_roots(as_json, "roots.json")] == [spki(c) for c in shipped]
    assert len(shipped) == 2
    with pytest.raises(RootsError, match=r"^roots.json: expected a JSON array of PEM strings$"):
        parse_roots(b'[1]', "roots.json")
    with pytest.raises(RootsError, match=r"^x.pem: no certificate"):
        parse_roots(b"", "x.pem")


def test_the_shipped_anchors():
    subjects = sorted(c.subject.rfc4514_string() for c in google_hardware_roots())
    assert subjects == ["2.5.4.5=f92009e853b6b045", "C=US,O=Google LLC,OU=Android,CN=Key Attestation CA1"]
    (apple,) = apple_app_attestation_roots()
    assert apple.fingerprint(hashes.SHA256()).hex() \
        == "1cb9823ba28ba6ad2d33a006941de2ae4f513ef1d4e831b9f7e0fa7b6242c932"
    assert len(google_software_roots()) == 2


def test_an_unreadable_roots_file(tmp_path: Path):
    with pytest.raises(RootsError, match=r"missing.pem: cannot read: No such file or directory$"):
        load_roots_file(tmp_path / "missing.pem")
