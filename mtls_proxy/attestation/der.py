"""A small strict DER reader: just enough ASN.1 to walk attestation extensions by tag.

Why our own: the Android KeyDescription must be read by a *tolerant tag walk* (real v400/v500
chains carry tags such as 405, 723 and 724 that fixed-schema parsers reject), while every value we
rely on must be *strict* DER (a BOOLEAN encoded 0x01, a long-form length that could be short, an
indefinite length: all refused, because two parsers reading one encoding two ways is how forged
attestations pass). A generic ASN.1 library gives one of the two, not both; 150 lines give both.
"""

from __future__ import annotations

from dataclasses import dataclass

UNIVERSAL = 0
APPLICATION = 1
CONTEXT = 2
PRIVATE = 3

# universal tag numbers used here
BOOLEAN = 1
INTEGER = 2
OCTET_STRING = 4
NULL = 5
ENUMERATED = 10
UTF8_STRING = 12
SEQUENCE = 16
SET = 17


class DerError(ValueError):
    """The bytes are not valid DER (or not the type the caller expected)."""


@dataclass(frozen=True)
class Tlv:
    """One DER element: its tag (class, constructed bit, number) and its content octets."""

    cls: int
    constructed: bool
    number: int
    content: bytes

    def is_universal(self, number: int) -> bool:
        return self.cls == UNIVERSAL and self.number == number


def _read_tag(data: bytes, pos: int) -> tuple[int, bool, int, int]:
    if pos >= len(data):
        raise DerError("truncated: tag expected")
    first = data[pos]
    pos += 1
    cls, constructed, number = first >> 6, bool(first & 0x20), first & 0x1F
    if number == 0x1F:  # high tag number form, base 128, minimal
        number = 0
        if pos >= len(data):
            raise DerError("truncated tag number")
        if data[pos] == 0x80:
            raise DerError("non-minimal tag number")
        while True:
            if pos >= len(data):
                raise DerError("truncated tag number")
            byte = data[pos]
            pos += 1
            number = (number << 7) | (byte & 0x7F)
            if number > 0xFFFFFFFF:
                raise DerError("tag number too large")
            if not byte & 0x80:
                break
        if number < 0x1F:
            raise DerError("high tag form used for a low tag number")
    return cls, constructed, number, pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise DerError("truncated: length expected")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0:
        raise DerError("indefinite length is not DER")
    if count > 4:
        raise DerError("length too large")
    if pos + count > len(data):
        raise DerError("truncated length")
    raw = data[pos:pos + count]
    if raw[0] == 0:
        raise DerError("non-minimal length")
    length = int.from_bytes(raw, "big")
    if length < 0x80:
        raise DerError("long form used for a short length")
    return length, pos + count


def read_tlv(data: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """Read one element at ``pos``; return it and the position just after it."""
    cls, constructed, number, pos = _read_tag(data, pos)
    length, pos = _read_length(data, pos)
    end = pos + length
    if end > len(data):
        raise DerError("truncated content")
    return Tlv(cls, constructed, number, bytes(data[pos:end])), end


def parse(data: bytes) -> Tlv:
    """Exactly one element filling ``data`` (trailing bytes refused)."""
    tlv, end = read_tlv(data)
    if end != len(data):
        raise DerError("trailing bytes after the element")
    return tlv


def children(tlv: Tlv) -> list[Tlv]:
    """The elements inside a constructed element, in order."""
    if not tlv.constructed:
        raise DerError("primitive element has no children")
    out: list[Tlv] = []
    pos = 0
    while pos < len(tlv.content):
        child, pos = read_tlv(tlv.content, pos)
        out.append(child)
    return out


def sequence(tlv: Tlv) -> list[Tlv]:
    if not (tlv.is_universal(SEQUENCE) and tlv.constructed):
        raise DerError("SEQUENCE expected")
    return children(tlv)


def set_of(tlv: Tlv) -> list[Tlv]:
    if not (tlv.is_universal(SET) and tlv.constructed):
        raise DerError("SET expected")
    # X.690 11.6 wants the components sorted; real KeyMint implementations emit purposes {3, 2}
    # (android/keyattestation testdata/allow_while_on_body.pem). A set means the same in any order,
    # so the order is tolerated: unlike tag order or BOOLEAN encoding, no reader can see two meanings.
    return children(tlv)


def explicit(tlv: Tlv) -> Tlv:
    """The single element inside an EXPLICIT context tag."""
    if not tlv.constructed:
        raise DerError("EXPLICIT tag must be constructed")
    return parse(tlv.content)


def integer(tlv: Tlv, *, enumerated: bool = False) -> int:
    expected = ENUMERATED if enumerated else INTEGER
    if not tlv.is_universal(expected) or tlv.constructed:
        raise DerError("ENUMERATED expected" if enumerated else "INTEGER expected")
    content = tlv.content
    if not content:
        raise DerError("empty INTEGER")
    if len(content) > 1 and (
        (content[0] == 0x00 and not content[1] & 0x80) or (content[0] == 0xFF and content[1] & 0x80)
    ):
        raise DerError("non-minimal INTEGER")
    return int.from_bytes(content, "big", signed=True)


def boolean(tlv: Tlv) -> bool:
    if not tlv.is_universal(BOOLEAN) or tlv.constructed or len(tlv.content) != 1:
        raise DerError("BOOLEAN expected")
    if tlv.content[0] not in (0x00, 0xFF):
        raise DerError(f"BOOLEAN encoded as 0x{tlv.content[0]:02x} (DER allows only 0x00 and 0xff)")
    return tlv.content[0] == 0xFF


def octets(tlv: Tlv) -> bytes:
    if not tlv.is_universal(OCTET_STRING) or tlv.constructed:
        raise DerError("OCTET STRING expected")
    return tlv.content


def null(tlv: Tlv) -> None:
    if not tlv.is_universal(NULL) or tlv.constructed or tlv.content:
        raise DerError("NULL expected")

