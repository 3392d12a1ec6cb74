"""PKCS#12 export: content, and the encryption each profile really uses (read from the DER)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from mtls_proxy.pki.pkcs12 import KDF_ROUNDS, export_pkcs12
from mtls_proxy.pki.store import PkiStore
from mtls_proxy.pki.x509 import Issued


def oid_der(dotted: str) -> bytes:
    """DER encoding of an OBJECT IDENTIFIER, to look for algorithms inside the bundle."""
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body += bytes(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


PBE_SHA1_3DES = oid_der("1.2.840.113549.1.12.1.3")
PBES2 = oid_der("1.2.840.113549.1.5.13")
AES_256_CBC = oid_der("2.16.840.1.101.3.4.1.42")
SHA1 = oid_der("1.3.14.3.2.26")
SHA256 = oid_der("2.16.840.1.101.3.4.2.1")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued]:
    store = PkiStore(tmp_path_factory.mktemp("p12") / "pki")
    store.init()
    return store.issue_client("phone-7").issued, store.client_ca()


@pytest.mark.parametrize("profile", ["compat", "modern"])
def test_bundle_holds_key_cert_and_ca(material: tuple[Issued, Issued], profile: str) -> None:
    device, ca = material
    blob = export_pkcs12(device, ca.cert, "s3cret", profile)
    loaded = pkcs12.load_pkcs12(blob, b"s3cret")
    assert loaded.key is not None and loaded.key.public_key() == device.key.public_key()
    assert loaded.cert is not None and loaded.cert.certificate == device.cert
    assert loaded.cert.friendly_name == b"phone-7"
    assert [c.certificate for c in loaded.additional_certs] == [ca.cert]


def test_compat_profile_is_3des_with_sha1_mac(material: tuple[Issued, Issued]) -> None:
    device, ca = material
    blob = export_pkcs12(device, ca.cert, b"pw", "compat")
    assert PBE_SHA1_3DES in blob
    assert SHA1 in blob
    assert PBES2 not in blob and AES_256_CBC not in blob
    assert KDF_ROUNDS.to_bytes(3, "big") in blob  # INTEGER 50000 = 0x00c350


def test_modern_profile_is_aes256_pbes2_with_sha256_mac(material: tuple[Issued, Issued]) -> None:
    device, ca = material
    blob = export_pkcs12(device, ca.cert, b"pw", "modern")
    assert PBES2 in blob and AES_256_CBC in blob
    assert SHA256 in blob
    assert PBE_SHA1_3DES not in blob


def test_wrong_password_does_not_open(material: tuple[Issued, Issued]) -> None:
    device, ca = material
    blob = export_pkcs12(device, ca.cert, "right", "compat")
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(blob, b"wrong")


def test_without_ca(material: tuple[Issued, Issued]) -> None:
    device, _ = material
    loaded = pkcs12.load_pkcs12(export_pkcs12(device, None, "pw"), b"pw")
    assert loaded.additional_certs == []


@pytest.mark.parametrize(("password", "profile", "message"), [("", "compat", "empty"), ("pw", "rc2", "profile")])
def test_rejects(material: tuple[Issued, Issued], password: str, profile: str, message: str) -> None:
    device, ca = material
    with pytest.raises(ValueError, match=message):
        export_pkcs12(device, ca.cert, password, profile)


def test_store_writes_the_bundle(tmp_path: Path) -> None:
    store = PkiStore(tmp_path / "pki")
    store.init()
    result = store.issue_client("dev", p12_path=tmp_path / "dev.p12", p12_password="pw", p12_profile="modern")
    assert result.p12_path == tmp_path / "dev.p12"
    loaded = pkcs12.load_pkcs12(result.p12_path.read_bytes(), b"pw")
    assert loaded.cert is not None and loaded.cert.certificate == result.issued.cert


def _mac_data(blob: bytes) -> tuple[bytes, bytes, int]:
    """(MAC digest, salt, iterations) read from the PFX's MacData."""
    from mtls_proxy.pki.pkcs12 import _children

    mac_data = _children(blob, 0)[2]
    digest_info, salt, iterations = _children(blob, mac_data[0])
    digest = _children(blob, digest_info[0])[1]
    return (blob[digest[1]:digest[2]], blob[salt[1]:salt[2]],
            int.from_bytes(blob[iterations[1]:iterations[2]], "big"))


@pytest.mark.parametrize("profile", ["compat", "modern"])
def test_mac_iterations_equal_the_key_iterations(material: tuple[Issued, Issued], profile: str) -> None:
    device, ca = material
    blob = export_pkcs12(device, ca.cert, "pw", profile)
    assert _mac_data(blob)[2] == KDF_ROUNDS == 50_000
    assert pkcs12.load_pkcs12(blob, b"pw").cert is not None  # OpenSSL verifies the MAC on load


@pytest.mark.parametrize(("password", "hash_name", "algorithm"), [
    (b"pw", "sha1", pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC),
    ("pässwörd-€-😀".encode(), "sha256", pkcs12.PBES.PBESv2SHA256AndAES256CBC),  # BMPString incl. surrogates
    (b"x" * 70, "sha1", pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC),  # longer than a hash block
])
def test_remac_at_2048_reproduces_cryptography_byte_for_byte(material, password, hash_name, algorithm) -> None:
    """Cross-check of our PKCS#12 KDF and MAC with cryptography's own (Rust) at its fixed 2048 rounds."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import PrivateFormat

    from mtls_proxy.pki.pkcs12 import remac

    device, ca = material
    hash_algorithm = hashes.SHA1() if hash_name == "sha1" else hashes.SHA256()
    encryption = (PrivateFormat.PKCS12.encryption_builder().kdf_rounds(1000).key_cert_algorithm(algorithm)
                  .hmac_hash(hash_algorithm).build(password))
    original = pkcs12.serialize_key_and_certificates(b"d", device.key, device.cert, [ca.cert], encryption)
    assert _mac_data(original)[2] == 2048  # what cryptography always writes (why remac exists)
    assert remac(original, password, 2048, hash_name) == original
    again = remac(original, password, 50_000, hash_name)
    assert _mac_data(again)[1:] == (_mac_data(original)[1], 50_000)
    assert pkcs12.load_pkcs12(again, password).key is not None
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(remac(original, password + b"!", 50_000, hash_name), password)  # MAC by another password


def test_generated_passwords_are_strong_and_typeable() -> None:
    from mtls_proxy.pki.pkcs12 import generate_password

    seen = {generate_password() for _ in range(200)}
    assert len(seen) == 200
    for pw in seen:
        groups = pw.split("-")
        assert [len(g) for g in groups] == [5] * 5
        assert set("".join(groups)) <= set("abcdefghijkmnpqrstuvwxyz23456789")  # no 0/o or 1/l
