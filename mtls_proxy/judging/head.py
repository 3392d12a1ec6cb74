"""The request head as every frontend hands it over: method, target, authority, headers, body framing.

The frontend only collects; what the fields mean for the request's fate is decided by
:func:`mtls_proxy.judging.judge`. Collecting is one pass over the header list.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_DNS_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(slots=True)
class RequestHead:
    """One request's head. ``host`` is the first Host value (HTTP/2: ``:authority``)."""

    method: bytes
    target: bytes
    version: str  # "1.1", "1.0", "2" (anything else is refused by judge)
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool = True
    #: the framing asks to switch protocols (HTTP/1.1: ``Connection: upgrade`` + ``Upgrade``)
    upgrade_requested: bool = False
    head_size: int = 0
    host: bytes = b""
    host_count: int = 0
    content_length: int | None = None
    #: every Transfer-Encoding value, lowercased, stripped, joined with ", " (the codings in order)
    transfer_encoding: bytes | None = None
    expect: tuple[bytes, ...] = ()
    upgrade: bytes = b""  # lowercased Upgrade token

    @classmethod
    def collect(cls, method: bytes, target: bytes, version: str, headers: list[tuple[bytes, bytes]],
                *, keep_alive: bool = True, upgrade_requested: bool = False, head_size: int = 0) -> RequestHead:
        head = cls(method, target, version, headers, keep_alive, upgrade_requested, head_size)
        expect: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"host":
                if head.host_count == 0:
                    head.host = value
                head.host_count += 1
            elif lname == b"content-length":
                head.content_length = int(value)
            elif lname == b"transfer-encoding":
                coding = value.strip().lower()
                te = head.transfer_encoding
                head.transfer_encoding = coding if te is None else te + b", " + coding
            elif lname == b"expect":
                expect.append(value.strip().lower())
            elif lname == b"upgrade":
                head.upgrade = value.strip().lower()
        head.expect = tuple(expect)
        return head

    @property
    def chunked(self) -> bool:
        return self.transfer_encoding is not None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    @property
    def expect_continue(self) -> bool:
        return self.expect == (b"100-continue",)

    @property
    def is_websocket(self) -> bool:
        """An upgrade to WebSocket the framing asked for (judge decides whether it is allowed)."""
        return self.upgrade_requested and self.upgrade == b"websocket"


_AUTHORITIES: dict[bytes, str | None] = {}  # memo: a phone sends the same Host on every request


def authority_name(host: bytes) -> str | None:
    """:func:`parse_authority`, memoised (pure, so the memo changes nothing but the cost)."""
    known = _AUTHORITIES.get(host, _MISSING)
    if known is not _MISSING:
        return known  # type: ignore[return-value]
    if len(_AUTHORITIES) >= 1024:
        _AUTHORITIES.clear()
    name = _AUTHORITIES[host] = parse_authority(host)
    return name


_MISSING = object()


def parse_authority(host: bytes) -> str | None:
    """The lower-cased host name of a ``host[:port]`` authority, or None when it is not one.

    Accepted: a DNS name, an IPv4 address or a bracketed IPv6 address, optionally followed by
    ``:`` and 1-5 digits (at most 65535). Anything else (userinfo, a comma list, spaces, an
    empty or non-numeric port) could be read differently by Django, a cache or a log.
    """
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    else:
        name, sep, port = text.partition(":")
        rest = sep + port
        if not _DNS_NAME.fullmatch(name):
            return None
    if rest and (rest[0] != ":" or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535):
        return None
    return name
