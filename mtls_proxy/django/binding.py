"""Rebuild the signed request components from what the server handed Django.

The v2 signature covers the method, the raw target, Host and the body framing *as the
proxy forwarded them*. Django's own view of the request is already decoded
(``request.path`` has ``%2F`` turned into ``/``; ``get_full_path()`` re-quotes with its own
rules), so it cannot be compared byte for byte. The servers keep the raw form:

* ASGI (uvicorn, daphne, hypercorn): ``scope["raw_path"]`` (path bytes as sent, no query)
  and ``scope["query_string"]`` (bytes after the first ``?``);
* WSGI: gunicorn's ``RAW_URI`` or uWSGI's / mod_wsgi's ``REQUEST_URI`` (the request target
  as sent, query included). ``PATH_INFO`` is decoded, so a server that gives neither cannot
  verify: ``target_unavailable``, never a guess.

Host is the ``Host`` header as received (duplicates joined with ``,`` so they cannot
verify); framing comes from ``Transfer-Encoding`` and ``Content-Length``. No Django import:
these are pure functions over the scope or the environ, unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mtls_proxy.identity import IdentityError, RequestBinding, canonical_target

__all__ = ["binding_from_environ", "binding_from_scope", "framing_from_headers"]

#: WSGI environ keys that carry the raw request target, in order of preference.
RAW_TARGET_KEYS = ("RAW_URI", "REQUEST_URI")


def framing_from_headers(content_length: bytes | None, transfer_encoding: bytes | None) -> bytes:
    """The ``FRAMING`` component for the received framing headers (raw values, ``None`` if absent).

    The proxy sends exactly one of ``Transfer-Encoding: chunked`` and ``Content-Length``;
    anything else (both, another coding) yields a value it never signs, so it cannot verify.
    """
    if transfer_encoding is not None:
        te = transfer_encoding.strip().lower()
        if te != b"chunked" or content_length is not None:
            return b"invalid"
        return b"chunked"
    if content_length is not None:
        return b"length=" + content_length.strip()
    return b"none"


def binding_from_scope(scope: Mapping[str, Any]) -> RequestBinding:
    """The request components of an ASGI ``http`` or ``websocket`` scope (a WebSocket handshake is a GET)."""
    raw_path = scope.get("raw_path")
    if not isinstance(raw_path, bytes) or not raw_path:
        raise IdentityError("target_unavailable", "the ASGI server gives no raw_path")
    query = scope.get("query_string") or b""
    target = raw_path + b"?" + query if query else raw_path
    method = scope.get("method", "GET") if scope.get("type") == "http" else "GET"
    found: dict[bytes, bytes] = {}
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for name, value in headers:
        key = name.lower()
        if key in (b"host", b"content-length", b"transfer-encoding"):
            found[key] = found[key] + b"," + value if key in found else value
    return RequestBinding(
        method=str(method).encode("ascii"),
        target=canonical_target(target),
        host=found.get(b"host", b""),
        framing=framing_from_headers(found.get(b"content-length"), found.get(b"transfer-encoding")),
    )


def _environ_bytes(environ: Mapping[str, Any], key: str) -> bytes | None:
    value = environ.get(key)
    if value is None or value == "":
        return None
    # PEP 3333: environ strings are the wire bytes decoded as latin-1.
    return str(value).encode("latin-1")


def binding_from_environ(environ: Mapping[str, Any]) -> RequestBinding:
    """The request components of a WSGI environ (``request.META``)."""
    target = next((raw for key in RAW_TARGET_KEYS if (raw := _environ_bytes(environ, key)) is not None), None)
    if target is None:
        raise IdentityError("target_unavailable", "the WSGI server gives neither RAW_URI nor REQUEST_URI")
    return RequestBinding(
        method=str(environ.get("REQUEST_METHOD", "")).upper().encode("latin-1"),
        target=canonical_target(target),
        host=_environ_bytes(environ, "HTTP_HOST") or b"",
        framing=framing_from_headers(
            _environ_bytes(environ, "CONTENT_LENGTH"), _environ_bytes(environ, "HTTP_TRANSFER_ENCODING")
        ),
    )
