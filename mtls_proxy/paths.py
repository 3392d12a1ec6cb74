"""The path Django will route, computed from the raw request target.

Policy decisions are made on this form, never on the raw bytes: percent-decoded
once (as ASGI/WSGI servers do before Django sees ``path_info``), dot-segments
removed and repeated slashes merged (so ``/api/../admin`` and ``//admin`` are judged
as ``/admin``). Anything a server or framework could read two ways is refused:
encoded ``/`` or ``\\``, NUL and control bytes, broken percent-encoding, invalid
UTF-8. Too long a path, or one with too many segments, is refused before any of that, so the
cost of every later step (decoding, policy matching on both readings) is bounded. Pure
functions, no I/O.
"""

from __future__ import annotations

import re

_HEX = frozenset(b"0123456789abcdefABCDEF")

#: defaults of ``limits.max_path_length`` (bytes of the raw path, query excluded) and
#: ``limits.max_path_segments`` ('/' characters in the raw path): far above what an API routes,
#: low enough that matching stays cheap.
MAX_PATH_LENGTH = 8 * 1024
MAX_PATH_SEGMENTS = 256


class AmbiguousPath(ValueError):
    """The target cannot be given one meaning; ``reason`` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """``b"/a/b?x=1"`` -> ``(b"/a/b", b"x=1")``; the query is forwarded untouched."""
    path, _, query = target.partition(b"?")
    return path, query


def _percent_decode(raw: bytes) -> bytes:
    if b"%" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            h1 = raw[i + 1] if i + 1 < n else -1
            h2 = raw[i + 2] if i + 2 < n else -1
            if h1 not in _HEX or h2 not in _HEX:
                raise AmbiguousPath("bad_percent_encoding")
            value = int(raw[i + 1 : i + 3], 16)
            if value == 0x2F or value == 0x5C:
                raise AmbiguousPath("encoded_separator")
            if value < 0x20 or value == 0x7F:
                raise AmbiguousPath("control_character")
            out.append(value)
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, plus merging of empty segments (``//``)."""
    segments: list[str] = []
    parts = path.split("/")
    for seg in parts[1:]:
        if seg == "..":
            if segments:
                segments.pop()
        elif seg not in (".", ""):
            segments.append(seg)
    trailing = parts[-1] in ("", ".", "..") and len(parts) > 1
    result = "/" + "/".join(segments)
    if trailing and segments:
        result += "/"
    return result


# A path made only of these bytes, without '//' or dot-segments, is already in normal form.
_PLAIN = re.compile(rb"/[A-Za-z0-9\-_~!$&'()*+,;=:@/.]*")
_DOTS = re.compile(rb"//|/\.\.?(?:/|$)")


def normalize_path(
    raw_path: bytes, max_length: int = MAX_PATH_LENGTH, max_segments: int = MAX_PATH_SEGMENTS
) -> str:
    """The routed path for policy decisions, or :class:`AmbiguousPath`.

    The caps are on the raw path (what the upstream also routes, dot-segments kept): over
    ``max_length`` bytes is ``path_too_long``, over ``max_segments`` '/' is ``too_many_segments``.
    """
    if len(raw_path) > max_length:
        raise AmbiguousPath("path_too_long")
    if raw_path.count(b"/") > max_segments:
        raise AmbiguousPath("too_many_segments")
    if _PLAIN.fullmatch(raw_path) and not _DOTS.search(raw_path):
        return raw_path.decode("ascii")  # the per-request fast path: nothing to decode or remove
    if not raw_path.startswith(b"/"):
        raise AmbiguousPath("not_origin_form")
    for c in raw_path:
        if c <= 0x20 or c >= 0x7F:
            raise AmbiguousPath("control_character")
        if c == 0x5C:
            raise AmbiguousPath("backslash")
        if c == 0x23:
            raise AmbiguousPath("fragment")
    decoded = _percent_decode(raw_path)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousPath("invalid_utf8") from None
    return remove_dot_segments(text)
