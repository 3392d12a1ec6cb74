"""HTTP/1.1 wire helpers for the proxy: header tables and head serialisation. Pure, no I/O.

The tables are built once at import; the per-request code only does set look-ups
and joins.
"""

from __future__ import annotations

import json
from http import HTTPStatus

#: RFC 9110 7.6.1 hop-by-hop fields, plus the framing fields the proxy always rewrites itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)
#: Request fields the proxy owns: framing is re-derived, ``Expect`` is answered by the proxy itself.
REQUEST_OWNED = HOP_BY_HOP | {b"content-length", b"expect"}
#: Never removed because a client listed them in ``Connection``.
PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-cased field names listed in ``Connection`` headers (to be removed as hop-by-hop)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens - PROTECTED)


def error_body(status: int, reason: str) -> bytes:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return json.dumps({"error": phrase.lower(), "reason": reason}).encode()


def error_response(status: int, reason: str, *, close: bool, head_only: bool = False) -> bytes:
    """A complete JSON error response (the one format every refusal uses)."""
    body = error_body(status, reason)
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode()
    return head if head_only else head + body


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"
EOL = b"\r\n"


def chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size
