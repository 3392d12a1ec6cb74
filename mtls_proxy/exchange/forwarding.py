"""The request head Django receives: strip, then set. Pure, no I/O.

Removed from the client's request: hop-by-hop fields and those named in ``Connection``, the
framing fields (re-derived here), ``Expect`` (answered by the proxy), every identity header
the proxy sets in any spelling (``_`` for ``-``, any case), and every forwarding header a
client could use to lie about where it is or what it asked for: the whole ``X-Forwarded-*``
family, ``Forwarded``, ``X-Real-IP``, ``X-Client-IP``, ``True-Client-IP``, ``X-Original-URL``,
``X-Rewrite-URL``. Then the proxy's own are added.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mtls_proxy.certs import PeerIdentity
from mtls_proxy.http1 import EOL, REQUEST_OWNED, connection_tokens
from mtls_proxy.identity import IDENTITY_HEADER_KEYS
from mtls_proxy.judging import ConnectionFacts, RequestHead

if TYPE_CHECKING:
    from mtls_proxy.state import RuntimeState

#: client-sent headers dropped in every spelling (compared after lower-casing and ``_`` -> ``-``)
STRIPPED_KEYS: frozenset[bytes] = frozenset(
    k.encode("ascii") for k in IDENTITY_HEADER_KEYS
) | frozenset({
    b"forwarded", b"x-real-ip", b"x-client-ip", b"true-client-ip", b"x-original-url", b"x-rewrite-url",
})
_FORWARDED_FAMILY = b"x-forwarded-"
#: dropped whatever the request says: framing and Expect (re-derived), and every stripped name as spelled
_ALWAYS_DROPPED = REQUEST_OWNED | STRIPPED_KEYS


def is_stripped(name: bytes) -> bool:
    """Whether a client-sent header of this name never reaches Django."""
    key = name.lower().replace(b"_", b"-")
    return key in STRIPPED_KEYS or key.startswith(_FORWARDED_FAMILY)


def _forwarded_for(client_ip: bytes) -> bytes:
    """RFC 7239 ``for=``: an IPv6 address is bracketed and quoted."""
    return b'"[' + client_ip + b']"' if b":" in client_ip else client_ip


def upstream_head(head: RequestHead, conn: ConnectionFacts, identity: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The HTTP/1.1 request head sent upstream for ``head`` with ``identity`` headers appended."""
    dropped = connection_tokens(head.headers)
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    for name, value in head.headers:
        key = name.lower()
        if key in _ALWAYS_DROPPED or key in dropped or key.startswith(_FORWARDED_FAMILY):
            continue
        if b"_" in key and is_stripped(key):  # the spelling WSGI servers fold into the same META key
            continue
        parts += (name, b": ", value, EOL)
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % head.content_length)
    if head.is_websocket:
        parts.append(b"Connection: upgrade\r\nUpgrade: websocket\r\n")
    ip = conn.client_ip
    parts += (b"X-Forwarded-For: ", ip, b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ", head.host,
              b"\r\nForwarded: for=", _forwarded_for(ip), b';proto=https;host="', head.host, b'"\r\n')
    for name, value in identity:
        parts += (name, b": ", value, EOL)
    parts.append(EOL)
    return b"".join(parts)


def identity_of(peer: PeerIdentity | None, state: RuntimeState) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """The identity headers (without signature) and the response's renew header for ``peer`` under ``state``.

    Built once per connection and state generation by each frontend; no certificate: neither.
    """
    if peer is None:
        return (), b""
    return state.identity.connection_headers(peer), renew_header(peer, state.settings.identity.renew_window)


def renew_header(peer: PeerIdentity, window: float, now: float | None = None) -> bytes:
    """``Client-Cert-Renew-By`` when the certificate expires within ``window`` seconds, so the app renews early."""
    current = time.time() if now is None else now
    if window <= 0 or peer.not_after.timestamp() - current > window:
        return b""
    return b"Client-Cert-Renew-By: " + peer.not_after.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + EOL
