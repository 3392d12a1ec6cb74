"""A minimal DER encoder for building synthetic attestation extensions at test time.

Written independently of mtls_proxy/attestation/der.py (the reader under test), from X.690: a
reader and an encoder sharing code would agree on the same mistakes.
"""

from __future__ import annotations

UNIVERSAL, CONTEXT = 0x00, 0x80
CONSTRUCTED = 0x20


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tag(klass: int, constructed: bool, number: int) -> bytes:
    first = klass | (CONSTRUCTED if constructed else 0)
    if number < 31:
        return bytes([first | number])
    groups = []
    while True:
        groups.append(number & 0x7F)
        number >>= 7
        if not number:
            break
    groups.reverse()
    return bytes([first | 0x1F]) + bytes(g | 0x80 for g in groups[:-1]) + bytes([groups[-1]])


def tlv(klass: int, constructed: bool, number: int, content: bytes) -> bytes:
    return _tag(klass, constructed, number) + _length(len(content)) + content


def integer(n: int) -> bytes:
    length = max(1, (n.bit_length() + 8) // 8) if n >= 0 else max(1, ((~n).bit_length() + 8) // 8)
    return tlv(UNIVERSAL, False, 2, n.to_bytes(length, "big", signed=True))


def enumerated(n: int) -> bytes:
    return b"\x0a" + integer(n)[1:]


def boolean(value: bool, *, raw: int | None = None) -> bytes:
    """``raw`` forces the content octet (0x01 is BER-true, not DER)."""
    return tlv(UNIVERSAL, False, 1, bytes([raw if raw is not None else (0xFF if value else 0x00)]))


def octets(data: bytes) -> bytes:
    return tlv(UNIVERSAL, False, 4, data)


def null() -> bytes:
    return b"\x05\x00"


def sequence(*items: bytes) -> bytes:
    return tlv(UNIVERSAL, True, 16, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(UNIVERSAL, True, 17, b"".join(sorted(items)))


def explicit(number: int, inner: bytes) -> bytes:
    return tlv(CONTEXT, True, number, inner)
