"""PKCS#12 bundles a phone can import.

OpenSSL 3's default PKCS#12 (PBES2/AES-256 with an HMAC-SHA256 MAC) is rejected by many
Android versions ("wrong password") and by iOS ``SecPKCS12Import`` (errSecAuthFailed,
-25293). The ``compat`` profile therefore uses the legacy 3DES + SHA-1 MAC encoding that
imports everywhere; ``modern`` is there for clients known to handle PBES2 (JDK 12+,
recent OpenSSL) when a policy forbids 3DES.

Both profiles protect the key and the MAC with the same iteration count: a password guess
can be checked against either, so the cheaper one sets the cost of guessing. cryptography's
PKCS#12 writer takes ``kdf_rounds`` for the encryption only and always writes the MAC with
2,048 iterations (``default_hmac_kdf_iter`` in its ``src/rust/src/pkcs12.rs``; there is no
builder option), so :func:`export_pkcs12` recomputes the MAC (RFC 7292 section 5 and
appendix B) with :data:`KDF_ROUNDS` and rewrites the ``MacData`` of the bundle it produced.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12

from mtls_proxy.pki.x509 import Issued

#: Profiles accepted by :func:`export_pkcs12` (first one is the default).
P12_PROFILES = ("compat", "modern")

#: PBKDF iterations for both the key encryption and the MAC. High enough to slow down a
#: brute force of a stolen bundle, low enough to import in well under a second on old phones.
KDF_ROUNDS = 50_000


def export_pkcs12(
    issued: Issued,
    ca_cert: x509.Certificate | None,
    password: bytes | str,
    profile: str = "compat",
    *,
    friendly_name: bytes | None = None,
) -> bytes:
    """Serialise a key, its certificate and (optionally) the issuing CA as PKCS#12.

    The CA is included so that a client building its chain (JSSE's ``KeyManager``, iOS
    identities) can send leaf + CA; the proxy does not need it but it costs nothing.

    Args:
        issued: the device certificate and its private key.
        ca_cert: the client CA to embed, or None.
        password: the import password; must not be empty (mobile importers reject it).
        profile: ``"compat"`` (3DES, SHA-1 MAC) or ``"modern"`` (AES-256 PBES2, SHA-256 MAC).
        friendly_name: the alias shown by ``keytool -list``; defaults to the certificate's CN.

    Returns:
        The DER-encoded PKCS#12 bundle.

    Raises:
        ValueError: unknown profile or empty password.
    """
    pw = password.encode("utf-8") if isinstance(password, str) else password
    if not pw:
        raise ValueError("the PKCS#12 password must not be empty (Android and iOS refuse empty passwords)")
    builder = PrivateFormat.PKCS12.encryption_builder().kdf_rounds(KDF_ROUNDS)
    if profile == "compat":
        encryption = (
            builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(hashes.SHA1()).build(pw)
        )
    elif profile == "modern":
        encryption = (
            builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256()).build(pw)
        )
    else:
        raise ValueError(f"unknown PKCS#12 profile {profile!r}; choose one of {', '.join(P12_PROFILES)}")
    if friendly_name is None:
        cns = issued.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        friendly_name = str(cns[0].value).encode("utf-8") if cns else None
    cas = [ca_cert] if ca_cert is not None else None
    bundle = pkcs12.serialize_key_and_certificates(friendly_name, issued.key, issued.cert, cas, encryption)
    return remac(bundle, pw, KDF_ROUNDS, "sha1" if profile == "compat" else "sha256")


#: 32 characters a person can read off a screen and type on a phone (no 0/o, 1/l)
_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def generate_password() -> str:
    """A random import password: 5 groups of 5 characters, 125 bits (``k7m2p-...``)."""
    return "-".join("".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(5)) for _ in range(5))


# --- the MAC --------------------------------------------------------------------------------------------


def pkcs12_kdf(password: bytes, salt: bytes, purpose: int, iterations: int, size: int, hash_name: str) -> bytes:
    """RFC 7292 appendix B.2; ``purpose`` 3 derives the MAC key. ``password`` is UTF-8."""
    h = hashlib.new(hash_name)
    u, v = h.digest_size, h.block_size
    secret = password.decode("utf-8").encode("utf-16-be") + b"\0\0"  # a BMPString with its NUL
    diversifier = bytes([purpose]) * v

    def stretch(data: bytes) -> bytes:
        """Copies of ``data`` cut to the next multiple of v bytes (empty stays empty)."""
        n = v * -(-len(data) // v)
        return (data * (n // len(data) + 1))[:n] if data else b""

    block = bytearray(stretch(salt) + stretch(secret))
    out = b""
    while len(out) < size:
        a = hashlib.new(hash_name, diversifier + bytes(block)).digest()
        for _ in range(iterations - 1):
            a = hashlib.new(hash_name, a).digest()
        out += a
        b = int.from_bytes((a * (v // u + 1))[:v], "big")
        for j in range(0, len(block), v):
            n = (int.from_bytes(block[j : j + v], "big") + b + 1) % (1 << (8 * v))
            block[j : j + v] = n.to_bytes(v, "big")
    return out[:size]


def remac(bundle: bytes, password: bytes, iterations: int, hash_name: str) -> bytes:
    """The same PFX with its MAC recomputed over the same content with ``iterations`` rounds."""
    version, auth_safe, mac_data = _children(bundle, 0)
    _, explicit = _children(bundle, auth_safe[0])  # (contentType data, [0] EXPLICIT)
    (octets,) = _children(bundle, explicit[0])
    if bundle[octets[0]] != 0x04:
        raise ValueError("PFX authSafe content is not a DER OCTET STRING")
    content = bundle[octets[1] : octets[2]]
    digest_info, salt_tlv = _children(bundle, mac_data[0])[:2]
    algorithm = _children(bundle, digest_info[0])[0]
    salt = bundle[salt_tlv[1] : salt_tlv[2]]
    key = pkcs12_kdf(password, salt, 3, iterations, hashlib.new(hash_name).digest_size, hash_name)
    mac = hmac.new(key, content, hash_name).digest()
    new_mac_data = _der(0x30, _der(0x30, bundle[algorithm[0] : algorithm[2]] + _der(0x04, mac))
                        + _der(0x04, salt) + _der(0x02, _der_int(iterations)))
    head = bundle[version[0] : auth_safe[2]]
    return _der(0x30, head + new_mac_data)


_Tlv = tuple[int, int, int]  # (start of the tag, start of the value, end)


def _tlv(buf: bytes, pos: int) -> _Tlv:
    first = buf[pos + 1]
    if first < 0x80:
        return pos, pos + 2, pos + 2 + first
    n = first & 0x7F
    length = int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
    return pos, pos + 2 + n, pos + 2 + n + length


def _children(buf: bytes, pos: int) -> list[_Tlv]:
    """The TLVs inside the constructed TLV at ``pos``."""
    _, start, end = _tlv(buf, pos)
    out = []
    while start < end:
        child = _tlv(buf, start)
        out.append(child)
        start = child[2]
    return out


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _der_int(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big")
