"""The client's verified certificate, as a frontend reads it off its TLS transport once per connection."""

from __future__ import annotations

import asyncio
import ssl

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.judging import ConnectionFacts
from mtls_proxy.state import RuntimeState


def connection_facts(transport: asyncio.BaseTransport, client_ip: bytes, state: RuntimeState) -> ConnectionFacts | None:
    """What the handshake established (peer, SNI, address); None: refuse the connection.

    No certificate is a client without one (``peer`` None) only on a ``client_auth: optional``
    listener; on any other it fails closed (CERT_REQUIRED makes that unreachable).
    """
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    sni = getattr(ssl_object, "mtls_sni", None)
    if not der:
        return ConnectionFacts(None, sni, client_ip) if ssl_object.context.verify_mode == ssl.CERT_OPTIONAL else None
    return ConnectionFacts(_verified_peer(ssl_object, der, state), sni, client_ip)


def _verified_peer(ssl_object: ssl.SSLObject, der: bytes, state: RuntimeState) -> PeerIdentity:
    """The peer as verified at the handshake, with its chain (a resumed session's is rebuilt)."""
    chain: tuple[bytes, ...] = ()
    get_chain = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
    )
    if get_chain is not None:
        try:
            chain = tuple(_cert_der(c) for c in get_chain()[1:])
        except Exception:
            chain = ()
    if not chain:  # a resumed session carries no verified chain: rebuild it from the trusted CAs
        chain = state.rebuilt_chain(der)
    return parse_peer(der, chain)


def _cert_der(cert: object) -> bytes:
    public_bytes = getattr(cert, "public_bytes", None)
    if public_bytes is None:
        raise TypeError("not a certificate")
    return bytes(public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
