"""The client's certificate identity as HTTP headers: written by the proxy, read by Django.

Django never sees the TLS handshake, so the proxy has to *tell* it who the client is. It
does so with request headers, and headers are only as trustworthy as the path they came
on: if Django (or the port or socket it listens on) can be reached without the proxy,
anyone can send ``X-Client-Cert-Subject: CN=admin``. Two defences, which combine:

* the proxy removes every client-sent header whose :func:`header_key` is in
  :data:`PROXY_SET_HEADER_KEYS` before it adds its own ("strip, then set");
* with a shared signing key, the proxy adds ``X-Client-Cert-Signature``, an HMAC over the
  identity values and the request they travel with (method, raw target, Host, body
  framing), a timestamp, a random nonce and the key's id. The Django side
  (:func:`verify_identity`) rejects unsigned, altered, moved, stale and replayed identities.

This module is pure (no asyncio, aiohttp or Django): the proxy encodes with
:class:`IdentityEncoder`, the Django middleware decodes with :func:`verify_identity` or
:func:`decode_unsigned`, and both are unit-tested without sockets.

Header contract (public; names are case-insensitive on the wire)
-----------------------------------------------------------------

==============================  ==============================================================
``X-Client-Cert-Subject``       subject DN, RFC 4514 string (``CN=device-42,O=Acme``), pct-encoded
``X-Client-Cert-Issuer``        issuer DN, same format
``X-Client-Cert-Serial``        serial number, lowercase hex without leading zeros
``X-Client-Cert-Fingerprint``   lowercase hex SHA-256 of the certificate DER
``X-Client-Cert-SPKI``          base64 SHA-256 of the SubjectPublicKeyInfo (the pinning format)
``X-Client-Cert-Not-After``     expiry, RFC 3339 UTC (``2027-01-01T00:00:00Z``)
``X-Client-Cert-SAN``           ``DNS=…``, ``URI=…``, ``email=…``, ``IP=…`` entries joined by ``,``
                                (each value pct-encoded); absent when the certificate has no SAN
``X-Client-Cert-Signature``     ``v2;k=<key id>;t=<unix seconds>;n=<32 hex nonce>;s=<base64url HMAC>``
                                (only when a signing key is configured)
``Client-Cert``                 RFC 9440 ``:<base64 DER>:`` (opt-in)
``Client-Cert-Chain``           RFC 9440 ``:<b64>:, :<b64>:``, verified chain without the leaf (opt-in)
==============================  ==============================================================

Percent-encoding: in the DNs and in each SAN value, ``%``, ``,``, ``=``, ``"``, ``;``, space,
control characters and non-ASCII are written as ``%XX`` of their UTF-8 bytes, so every
header value is printable ASCII without separators that HTTP or list parsing could split
or trim. The DN therefore travels as ``CN%3Ddevice-42%2CO%3DAcme``; :func:`verify_identity`
and :func:`decode_unsigned` give back the exact RFC 4514 string.

Signature (v2): ``s`` is HMAC-SHA256(key, message) with::

    message = b"mtls-proxy-identity-v2\\n" + k + b"\\n" + t + b"\\n" + n + b"\\n"
              + METHOD + b"\\n" + TARGET + b"\\n" + HOST + b"\\n" + FRAMING + b"\\n"
              + for each name in SIGNED_HEADER_ORDER: (header value or b"") + b"\\n"

``TARGET`` is the request target as forwarded (raw path and query, percent-encoding as sent;
a ``?`` with an empty query is dropped), ``HOST`` the Host header, ``FRAMING`` ``length=<n>``,
``chunked`` or ``none``: the signature binds the identity to this one request (method,
resource, authority, body length), not only to a client and a time, so headers captured
on the proxy->Django link are worth nothing on any other request, and the nonce stops the
same request twice. ``k`` names the key (:func:`key_id`) so the verifier picks it from a
set during rotation. docs/django.md has the full wire format; v1 (identity and method only)
is refused (``unsupported_version``) because accepting it would keep every v1 weakness open.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import heapq
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from mtls_proxy.certs import PeerIdentity

__all__ = [
    "CLIENT_CERT",
    "CLIENT_CERT_CHAIN",
    "IDENTITY_HEADER_KEYS",
    "PROXY_SET_HEADER_KEYS",
    "SIGNATURE_CONTEXT",
    "SIGNED_HEADER_ORDER",
    "X_CLIENT_CERT_FINGERPRINT",
    "X_CLIENT_CERT_ISSUER",
    "X_CLIENT_CERT_NOT_AFTER",
    "X_CLIENT_CERT_SAN",
    "X_CLIENT_CERT_SERIAL",
    "X_CLIENT_CERT_SIGNATURE",
    "X_CLIENT_CERT_SPKI",
    "X_CLIENT_CERT_SUBJECT",
    "ClientCert",
    "ConnectionHeaders",
    "IdentityEncoder",
    "IdentityError",
    "IdentityOptions",
    "NonceCache",
    "RequestBinding",
    "SignedIdentity",
    "body_framing",
    "canonical_target",
    "check_signature",
    "decode_unsigned",
    "generate_signing_key",
    "has_identity_headers",
    "header_key",
    "key_id",
    "keys_by_id",
    "load_signing_key",
    "verify_identity",
]

# Header names as sent (the proxy writes these spellings).
X_CLIENT_CERT_SUBJECT = "X-Client-Cert-Subject"
X_CLIENT_CERT_ISSUER = "X-Client-Cert-Issuer"
X_CLIENT_CERT_SERIAL = "X-Client-Cert-Serial"
X_CLIENT_CERT_FINGERPRINT = "X-Client-Cert-Fingerprint"
X_CLIENT_CERT_SPKI = "X-Client-Cert-SPKI"
X_CLIENT_CERT_NOT_AFTER = "X-Client-Cert-Not-After"
X_CLIENT_CERT_SAN = "X-Client-Cert-SAN"
X_CLIENT_CERT_SIGNATURE = "X-Client-Cert-Signature"
CLIENT_CERT = "Client-Cert"
CLIENT_CERT_CHAIN = "Client-Cert-Chain"

#: The order in which identity values enter the HMAC. Changing it is a protocol change (bump ``v2``).
SIGNED_HEADER_ORDER: tuple[str, ...] = (
    X_CLIENT_CERT_SUBJECT,
    X_CLIENT_CERT_ISSUER,
    X_CLIENT_CERT_SERIAL,
    X_CLIENT_CERT_FINGERPRINT,
    X_CLIENT_CERT_SPKI,
    X_CLIENT_CERT_NOT_AFTER,
    X_CLIENT_CERT_SAN,
    CLIENT_CERT,
    CLIENT_CERT_CHAIN,
)

SIGNATURE_CONTEXT = b"mtls-proxy-identity-v2\n"


def header_key(name: str | bytes) -> str:
    """Normalise a header name the way servers collapse it: lowercase, ``_`` -> ``-``.

    WSGI/ASGI servers and Django turn ``X-Client-Cert`` and ``X_Client_Cert`` into the same
    ``HTTP_X_CLIENT_CERT`` META key, so stripping must compare on this key, not on the
    spelling, or a client could smuggle an identity header past the proxy.
    """
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return name.lower().replace("_", "-")


#: Normalised keys of the identity headers (signed values plus the signature).
IDENTITY_HEADER_KEYS: frozenset[str] = frozenset(header_key(n) for n in (*SIGNED_HEADER_ORDER, X_CLIENT_CERT_SIGNATURE))

#: Every header the proxy sets; client-sent copies (any spelling) must be stripped first.
PROXY_SET_HEADER_KEYS: frozenset[str] = IDENTITY_HEADER_KEYS | frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)

_SIGNED_KEYS: tuple[str, ...] = tuple(header_key(n) for n in SIGNED_HEADER_ORDER)
_SIGNATURE_KEY = header_key(X_CLIENT_CERT_SIGNATURE)
_SIGNATURE_NAME_B = X_CLIENT_CERT_SIGNATURE.encode("ascii")

# Printable ASCII that may stay literal; everything else (and these separators) is %XX-encoded.
_PCT_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '%,="; ')
_SAN_LABELS = (("DNS", "san_dns"), ("URI", "san_uri"), ("email", "san_email"), ("IP", "san_ip"))
_SAN_FIELD = {label: attr for label, attr in _SAN_LABELS}
_SIGNATURE_V2 = re.compile(r"\Av2;k=([0-9a-f]{16});t=([0-9]{1,12});n=([0-9a-f]{32});s=([A-Za-z0-9_-]{43})\Z")
_HEX = re.compile(r"\A[0-9a-f]+\Z")
_RFC3339_Z = "%Y-%m-%dT%H:%M:%SZ"
_MIN_KEY_BYTES = 32


def _pct(value: str) -> str:
    return quote(value, safe=_PCT_SAFE, encoding="utf-8", errors="strict")


def _unpct(value: str) -> str:
    return unquote(value, encoding="utf-8", errors="strict")


class IdentityError(Exception):
    """The identity headers cannot be trusted; ``reason`` is a short code for logs and the 403 body.

    Codes: ``missing_signature``, ``unsupported_version``, ``unknown_key``, ``bad_signature``,
    ``expired``, ``future``, ``replayed``, ``malformed``, ``target_unavailable``, ``replay_store_full``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def key_id(key: bytes) -> str:
    """The key's public name in the signature: the first 8 bytes of SHA-256(key), lowercase hex.

    Derived, not configured, so proxy and Django cannot disagree about it and an operator
    has nothing to keep in sync; it lets Django pick the right key among several during a
    rotation. It reveals nothing the HMAC does not: both let a holder test key guesses.
    """
    return hashlib.sha256(key).hexdigest()[:16]


def keys_by_id(keys: bytes | Iterable[bytes] | Mapping[str, bytes]) -> dict[str, bytes]:
    """``{key_id(k): k}`` for one key, several, or an already keyed mapping (checked)."""
    if isinstance(keys, Mapping):
        items = list(keys.values())
    elif isinstance(keys, bytes | bytearray):
        items = [bytes(keys)]
    else:
        items = list(keys)
    if not items or any(len(k) < _MIN_KEY_BYTES for k in items):
        raise ValueError(f"identity signing keys must be at least {_MIN_KEY_BYTES} bytes")
    return {key_id(bytes(k)): bytes(k) for k in items}


def canonical_target(target: bytes) -> bytes:
    """The signed form of a request target: as sent, except that a ``?`` with nothing after it goes.

    Servers hand the application the path and the query separately (``raw_path`` and
    ``query_string`` in ASGI), so ``/a?`` and ``/a`` look the same to Django; both sides
    sign the form Django can rebuild. Percent-encoding is kept byte for byte.
    """
    return target[:-1] if target.endswith(b"?") and target.count(b"?") == 1 else target


def body_framing(content_length: int | None, chunked: bool) -> bytes:
    """``chunked``, ``length=<n>`` or ``none``: how the forwarded request delimits its body."""
    if chunked:
        return b"chunked"
    if content_length is not None:
        return b"length=%d" % content_length
    return b"none"


class RequestBinding(NamedTuple):
    """The parts of the request the signature covers besides the identity, as wire bytes.

    The proxy builds it from what it forwards; the Django side from what the server handed
    Django (see :mod:`mtls_proxy.django.binding`). ``target`` is :func:`canonical_target`
    form, ``framing`` :func:`body_framing` form.
    """

    method: bytes
    target: bytes
    host: bytes
    framing: bytes

    def signed_part(self) -> bytes:
        """``METHOD LF TARGET LF HOST LF FRAMING LF``; refuses a component holding CR or LF."""
        joined = b"\n".join((self.method.upper(), self.target, self.host, self.framing))
        if b"\r" in joined or joined.count(b"\n") != 3:  # one pass each instead of eight
            raise IdentityError("malformed", "a signed request component contains CR or LF")
        return joined + b"\n"


@dataclass(frozen=True)
class IdentityOptions:
    """What the proxy sends upstream; ``signing_key`` (>= 32 bytes) turns on the signature header."""

    enabled: bool = True
    rfc9440: bool = False
    rfc9440_chain: bool = False
    signing_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.signing_key is not None and len(self.signing_key) < _MIN_KEY_BYTES:
            raise ValueError(f"identity signing key must be at least {_MIN_KEY_BYTES} bytes")


class ConnectionHeaders(tuple[tuple[bytes, bytes], ...]):
    """The per-connection identity headers, carrying the precomputed signed tail.

    A tuple subclass so callers can treat it as plain ``(name, value)`` pairs, while
    :meth:`IdentityEncoder.request_headers` finds the HMAC input for the identity values
    ready-made and does only one HMAC per request.
    """

    signed_tail: bytes

    def __new__(cls, pairs: Iterable[tuple[bytes, bytes]]) -> ConnectionHeaders:
        self = super().__new__(cls, pairs)
        self.signed_tail = _signed_tail(self)
        return self


def _signed_tail(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    values: dict[str, bytes] = {}
    for name, value in pairs:
        key = header_key(name)
        if key in values:
            values[key] += b"," + value
        else:
            values[key] = value
    return b"".join(values.get(k, b"") + b"\n" for k in _SIGNED_KEYS)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(_RFC3339_Z)


def _sf_binary(der: bytes) -> bytes:
    return b":" + base64.b64encode(der) + b":"


class IdentityEncoder:
    """Turns a verified peer into upstream headers (proxy side).

    :meth:`connection_headers` does the encoding once per TLS connection; the per-request
    :meth:`request_headers` only adds the signature (one HMAC, a few concatenations).
    """

    def __init__(self, options: IdentityOptions) -> None:
        self.options = options
        # HMAC state keyed once: hmac.digest(key, msg, "sha256") looks the digest up in OpenSSL 3 on
        # every call (~5 us, more than the MAC itself); a copy of a keyed template costs ~1 us.
        self._mac = hmac.new(options.signing_key, digestmod=hashlib.sha256) if options.signing_key else None
        self.key_id = key_id(options.signing_key) if options.signing_key is not None else None
        self._kid = (self.key_id or "").encode("ascii")

    def connection_headers(self, peer: PeerIdentity) -> tuple[tuple[bytes, bytes], ...]:
        """All identity headers for ``peer`` except the signature (empty when disabled)."""
        if not self.options.enabled:
            return ConnectionHeaders(())
        pairs: list[tuple[str, str]] = [
            (X_CLIENT_CERT_SUBJECT, _pct(peer.subject_dn)),
            (X_CLIENT_CERT_ISSUER, _pct(peer.issuer_dn)),
            (X_CLIENT_CERT_SERIAL, format(peer.serial, "x")),
            (X_CLIENT_CERT_FINGERPRINT, peer.fingerprint_sha256.lower()),
            (X_CLIENT_CERT_SPKI, peer.spki_sha256),
            (X_CLIENT_CERT_NOT_AFTER, _rfc3339(peer.not_after)),
        ]
        san = ",".join(
            f"{label}={_pct(value)}" for label, attr in _SAN_LABELS for value in getattr(peer, attr)
        )
        if san:
            pairs.append((X_CLIENT_CERT_SAN, san))
        out = [(n.encode("ascii"), v.encode("ascii")) for n, v in pairs]
        if self.options.rfc9440:
            out.append((CLIENT_CERT.encode("ascii"), _sf_binary(peer.der)))
            if self.options.rfc9440_chain and peer.chain_der:
                out.append((CLIENT_CERT_CHAIN.encode("ascii"), b", ".join(_sf_binary(d) for d in peer.chain_der)))
        return ConnectionHeaders(out)

    def request_headers(
        self,
        conn_headers: tuple[tuple[bytes, bytes], ...],
        *,
        method: bytes,
        target: bytes,
        host: bytes,
        content_length: int | None,
        chunked: bool,
        now: float | None = None,
        anonymous: bool = False,
    ) -> tuple[tuple[bytes, bytes], ...]:
        """``conn_headers`` plus, with a signing key, a fresh v2 ``X-Client-Cert-Signature``.

        ``anonymous``: the client presented no certificate (a ``client_auth: optional`` listener):
        the signature is made over empty identity values, so Django learns from the proxy itself
        that there is no certificate, and a client-sent identity (always stripped) cannot pose as one.

        ``method``, ``target`` (as forwarded), ``host`` (the forwarded Host value) and the
        body framing (``chunked`` wins over ``content_length``, as in the forwarded head)
        must be exactly what goes upstream: Django recomputes them from what it receives.
        """
        template = self._mac
        if template is None or not (conn_headers or anonymous):
            return conn_headers
        tail = conn_headers.signed_tail if isinstance(conn_headers, ConnectionHeaders) else _signed_tail(conn_headers)
        request = RequestBinding(method, canonical_target(target), host, body_framing(content_length, chunked))
        t = str(int(time.time() if now is None else now)).encode("ascii")
        n = os.urandom(16).hex().encode("ascii")
        k = self._kid
        message = b"".join((SIGNATURE_CONTEXT, k, b"\n", t, b"\n", n, b"\n", request.signed_part(), tail))
        h = template.copy()
        h.update(message)
        mac = h.digest()
        sig = b"v2;k=" + k + b";t=" + t + b";n=" + n + b";s=" + base64.urlsafe_b64encode(mac).rstrip(b"=")
        return (*conn_headers, (_SIGNATURE_NAME_B, sig))


@dataclass(frozen=True)
class ClientCert:
    """The client certificate as the Django side learns it from the proxy's headers."""

    subject: str
    subject_attributes: dict[str, tuple[str, ...]]
    issuer: str
    serial: str
    fingerprint: str
    spki: str
    not_after: dt.datetime
    san_dns: tuple[str, ...] = ()
    san_uri: tuple[str, ...] = ()
    san_email: tuple[str, ...] = ()
    san_ip: tuple[str, ...] = ()
    der: bytes | None = field(default=None, repr=False)
    chain_der: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def common_name(self) -> str:
        """The first CN of the subject, or ``""``: the usual device identifier."""
        return self.subject_attributes.get("CN", ("",))[0]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for APIs, logs and the demo app)."""
        return {
            "subject": self.subject,
            "subject_attributes": {k: list(v) for k, v in self.subject_attributes.items()},
            "common_name": self.common_name,
            "issuer": self.issuer,
            "serial": self.serial,
            "fingerprint": self.fingerprint,
            "spki": self.spki,
            "not_after": _rfc3339(self.not_after),
            "san_dns": list(self.san_dns),
            "san_uri": list(self.san_uri),
            "san_email": list(self.san_email),
            "san_ip": list(self.san_ip),
            "der": base64.b64encode(self.der).decode("ascii") if self.der is not None else None,
            "chain_length": len(self.chain_der),
        }


@dataclass(frozen=True)
class SignedIdentity:
    """A signature that checked out; the caller still has to reject a reused ``nonce``."""

    cert: ClientCert | None  # None: signed by the proxy for a client without a certificate
    nonce: str
    timestamp: int
    expires_at: float


def has_identity_headers(headers: Mapping[str, str]) -> bool:
    """True if any identity header (or the signature alone) is present: then it must verify."""
    return any(k in headers for k in IDENTITY_HEADER_KEYS)


def _split_dn(dn: str, separators: str = ",+") -> list[str]:
    """Split an RFC 4514 string at unescaped ``,`` and ``+`` (multi-valued RDNs flattened)."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(dn):
        c = dn[i]
        if c == "\\" and i + 1 < len(dn):
            cur.append(dn[i : i + 2])
            i += 2
            continue
        if c in separators:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


_DN_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


def _unescape_dn_value(value: str) -> str:
    # Hex escapes are UTF-8 bytes; collect runs of them so multi-byte characters survive.
    raw = bytearray()
    pos = 0
    for m in _DN_ESCAPE.finditer(value):
        raw += value[pos : m.start()].encode("utf-8")
        esc = m.group(1)
        raw += bytes.fromhex(esc) if len(esc) == 2 else esc.encode("utf-8")
        pos = m.end()
    raw += value[pos:].encode("utf-8")
    return raw.decode("utf-8", errors="replace")


def parse_dn(dn: str) -> dict[str, tuple[str, ...]]:
    """RFC 4514 string -> ``{"CN": ("x",), "OU": ("a", "b")}``, in certificate order.

    RFC 4514 writes the RDNs last one first; repeated attributes are given back in the order of the
    certificate, the order the proxy's policy and logs see (so ``common_name`` is the same first CN).

    Attribute types are kept as written (``CN``, ``O``, a dotted OID...); a ``#hex`` value
    (an attribute type the encoder had no name for) is kept verbatim.
    """
    out: dict[str, list[str]] = {}
    if not dn:
        return {}
    for part in (p for rdn in reversed(_split_dn(dn, ",")) for p in _split_dn(rdn, "+")):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise IdentityError("malformed", "subject is not an RFC 4514 DN")
        value = value if value.startswith("#") else _unescape_dn_value(value)
        out.setdefault(name.strip(), []).append(value)
    return {k: tuple(v) for k, v in out.items()}


def _parse_sf_binary(value: str) -> bytes:
    value = value.strip()
    if len(value) < 2 or value[0] != ":" or value[-1] != ":":
        raise IdentityError("malformed", "Client-Cert is not an RFC 9440 byte sequence")
    try:
        return base64.b64decode(value[1:-1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IdentityError("malformed", "Client-Cert is not valid base64") from exc


def _decode(headers: Mapping[str, str]) -> ClientCert:
    def required(name: str) -> str:
        value = headers.get(header_key(name), "")
        if not value:
            raise IdentityError("malformed", f"{name} missing")
        return value

    try:
        subject = _unpct(required(X_CLIENT_CERT_SUBJECT))
        issuer = _unpct(required(X_CLIENT_CERT_ISSUER))
        serial = required(X_CLIENT_CERT_SERIAL)
        fingerprint = required(X_CLIENT_CERT_FINGERPRINT)
        if not _HEX.match(serial) or not _HEX.match(fingerprint) or len(fingerprint) != 64:
            raise IdentityError("malformed", "serial or fingerprint is not lowercase hex")
        spki = required(X_CLIENT_CERT_SPKI)
        try:
            not_after = dt.datetime.strptime(required(X_CLIENT_CERT_NOT_AFTER), _RFC3339_Z).replace(
                tzinfo=dt.UTC
            )
        except ValueError as exc:
            raise IdentityError("malformed", "Not-After is not RFC 3339 UTC") from exc
        sans: dict[str, list[str]] = {attr: [] for attr in _SAN_FIELD.values()}
        san_header = headers.get(header_key(X_CLIENT_CERT_SAN), "")
        if san_header:
            for entry in san_header.split(","):
                label, sep, value = entry.strip().partition("=")
                if not sep or label not in _SAN_FIELD:
                    raise IdentityError("malformed", f"unknown SAN entry {label!r}")
                sans[_SAN_FIELD[label]].append(_unpct(value))
        der_header = headers.get(header_key(CLIENT_CERT), "")
        der = _parse_sf_binary(der_header) if der_header else None
        chain_header = headers.get(header_key(CLIENT_CERT_CHAIN), "")
        chain = tuple(_parse_sf_binary(item) for item in chain_header.split(",")) if chain_header else ()
    except UnicodeDecodeError as exc:
        raise IdentityError("malformed", "percent-encoding is not UTF-8") from exc
    return ClientCert(
        subject=subject,
        subject_attributes=parse_dn(subject),
        issuer=issuer,
        serial=serial,
        fingerprint=fingerprint,
        spki=spki,
        not_after=not_after,
        san_dns=tuple(sans["san_dns"]),
        san_uri=tuple(sans["san_uri"]),
        san_email=tuple(sans["san_email"]),
        san_ip=tuple(sans["san_ip"]),
        der=der,
        chain_der=chain,
    )


def decode_unsigned(headers: Mapping[str, str]) -> ClientCert:
    """Decode identity headers without a signature check (trusted-peer mode).

    Only safe when the caller has established that the request came from the proxy
    (e.g. the peer address is the proxy's). ``headers`` is keyed by :func:`header_key`.
    """
    return _decode(headers)


def _parse_signature(value: str) -> tuple[str, bytes, int, bytes, bytes]:
    """``v2;k=;t=;n=;s=`` (fields in this order, nothing else) -> (kid, t, t as int, nonce, mac)."""
    value = value.strip()
    m = _SIGNATURE_V2.match(value)
    if m is None:
        if value.startswith("v1;"):
            raise IdentityError("unsupported_version", "v1 signatures do not bind the request; upgrade the proxy")
        raise IdentityError("malformed", "signature is not v2;k=;t=;n=;s=")
    kid, t, n, s = m.groups()
    return kid, t.encode("ascii"), int(t), n.encode("ascii"), base64.urlsafe_b64decode(s + "=")


def check_signature(
    headers: Mapping[str, str],
    *,
    request: RequestBinding,
    keys: bytes | Iterable[bytes] | Mapping[str, bytes],
    max_age: float = 10,
    now: float | None = None,
    clock_skew: float = 5,
) -> SignedIdentity:
    """Verify signature and freshness for this ``request``, decode the identity; does *not* check the nonce.

    Split from :func:`verify_identity` so an async caller can record the nonce with its own
    (async) store. ``keys``: one key, several, or :func:`keys_by_id` output (rotation: the
    signature's key id picks one). Order matters: the HMAC is checked before anything is
    remembered, so unsigned junk cannot fill the nonce store.
    """
    sig_value = headers.get(_SIGNATURE_KEY)
    if not sig_value:
        raise IdentityError("missing_signature")
    kid, t_b, t, n_b, mac = _parse_signature(sig_value)
    key = (keys if isinstance(keys, dict) else keys_by_id(keys)).get(kid)
    if key is None:
        raise IdentityError("unknown_key", f"key id {kid} is not configured")
    try:
        tail = b"".join(headers.get(k, "").encode("latin-1") + b"\n" for k in _SIGNED_KEYS)
    except UnicodeEncodeError as exc:
        raise IdentityError("malformed", "header value is not latin-1") from exc
    message = b"".join(
        (SIGNATURE_CONTEXT, kid.encode("ascii"), b"\n", t_b, b"\n", n_b, b"\n", request.signed_part(), tail)
    )
    if not hmac.compare_digest(hmac.digest(key, message, "sha256"), mac):
        raise IdentityError("bad_signature")
    current = time.time() if now is None else now
    if t > current + clock_skew:
        raise IdentityError("future", f"timestamp {t} is ahead of {int(current)}")
    if current - t > max_age:
        raise IdentityError("expired", f"timestamp {t} is older than {max_age}s")
    # A signature over no identity at all: the proxy saying the client presented no certificate
    # (a client_auth: optional listener); still bound to this request and replay-checked.
    cert = _decode(headers) if any(headers.get(k) for k in _SIGNED_KEYS) else None
    return SignedIdentity(cert=cert, nonce=n_b.decode("ascii"), timestamp=t, expires_at=t + max_age + clock_skew)


def verify_identity(
    headers: Mapping[str, str],
    *,
    request: RequestBinding,
    keys: bytes | Iterable[bytes] | Mapping[str, bytes],
    max_age: float = 10,
    now: float | None = None,
    seen_nonce: Callable[[str, float], bool] | None = None,
    clock_skew: float = 5,
) -> ClientCert | None:
    """Verify signed identity headers (keyed by :func:`header_key`) for ``request``; return the certificate
    (None: the proxy signed for a client that presented none).

    ``seen_nonce(nonce, expires_at)`` must return True if the nonce was already used and
    otherwise remember it until ``expires_at``; without it replays are not detected.
    Raises :class:`IdentityError` with a reason code.
    """
    signed = check_signature(headers, request=request, keys=keys, max_age=max_age, now=now, clock_skew=clock_skew)
    if seen_nonce is not None and seen_nonce(signed.nonce, signed.expires_at):
        raise IdentityError("replayed", f"nonce {signed.nonce}")
    return signed.cert


class NonceCache:
    """An in-process nonce store that never forgets a nonce before it expires.

    Expired entries are dropped (a heap keeps them in expiry order, whatever order they
    came in); when ``max_entries`` unexpired nonces are held it refuses new ones with
    ``replay_store_full`` instead of evicting one, because an evicted live nonce is a replay
    that succeeds. One process only: several workers each have their own, so a replay to
    another worker passes (the Django side demands ``SINGLE_PROCESS`` to use it). Not
    thread-safe by itself; callers that share it across threads lock.
    """

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, float] = {}
        self._by_expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, nonce: str, expires_at: float) -> bool:
        entries = self._entries
        if nonce in entries:
            return True
        now = self._clock()
        heap = self._by_expiry
        while heap and heap[0][0] < now:
            _, old = heapq.heappop(heap)
            del entries[old]
        if len(entries) >= self.max_entries:
            raise IdentityError("replay_store_full", f"{len(entries)} unexpired nonces held")
        entries[nonce] = expires_at
        heapq.heappush(heap, (expires_at, nonce))
        return False


def load_signing_key(path: str | os.PathLike[str]) -> bytes:
    """Read a shared signing key file (raw bytes or text; surrounding whitespace stripped).

    The bytes of the file are the key as-is (a hex text key is *not* hex-decoded), so the
    proxy and Django only have to read the same file.
    """
    data = Path(path).read_bytes().strip()
    if len(data) < _MIN_KEY_BYTES:
        raise ValueError(
            f"identity signing key {os.fspath(path)!r} is too short: {len(data)} bytes, need at least "
            f"{_MIN_KEY_BYTES} (generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return data


def generate_signing_key() -> str:
    """A fresh key as 64 hex characters (256 bits of randomness), ready to write to a key file."""
    return secrets.token_hex(32)
