"""HTTP/2 header blocks to and from the version-neutral core. Pure, no I/O.

h2's own inbound header validation is off (it would turn every malformed request into a
connection error that also kills the other streams); :func:`request_head` does it instead,
so a malformed request is a *stream* error (RFC 9113 8.1.1: RST_STREAM PROTOCOL_ERROR) with
a reason code, and a well-formed one becomes a :class:`RequestHead` that :func:`judge`
decides like any HTTP/1.1 request: ``:authority`` in the role of Host (a Host field that
disagrees with it counts as a second Host: 400 ``multiple_host``), ``:path`` as the target
(not starting with ``/``: 400 ``not_origin_form``), version ``"2"``.

Every field name and value is checked byte by byte because the head is re-serialised as
HTTP/1.1 for Django: a CR or LF let through would be a header injection.
"""

from __future__ import annotations

import re

from mtls_proxy.http1 import HOP_BY_HOP, connection_tokens
from mtls_proxy.judging import RequestHead

#: RFC 9110 5.6.2 token characters, lower-case only (RFC 9113 8.2.1: upper case is malformed)
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_UPPER = re.compile(rb"[A-Z]")
#: the methods llhttp parses (so the same ones as over HTTP/1.1, and ones Django's server can read), CONNECT aside
_METHODS = frozenset({
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"COPY", b"LOCK", b"MKCOL",
    b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND", b"REBIND", b"UNBIND", b"ACL", b"REPORT",
    b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PURGE",
    b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE", b"QUERY",
})
#: RFC 3986 characters only (visible ASCII): a space in :path would split the HTTP/1.1 request line
_TARGET = re.compile(rb"[\x21-\x7e]+")
#: RFC 9113 8.2.1: no NUL, CR or LF anywhere, no leading or trailing SP/HTAB; and RFC 9110 5.5: no other
#: control character but HTAB (Django's HTTP/1.1 server would refuse them)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\A[ \t]|[ \t]\Z")
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
#: RFC 9113 8.2.2: connection-specific fields make a request malformed
_CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding",
                                  b"upgrade"})
#: per-field overhead counted in the head size (RFC 9113 6.5.2's header list size)
FIELD_OVERHEAD = 32


class Malformed(Exception):
    """A request header block RFC 9113 8.1.1 calls malformed: the stream is reset with PROTOCOL_ERROR."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_name(name: bytes) -> None:
    if _NAME.fullmatch(name) is None:
        raise Malformed("h2_uppercase_header" if _UPPER.search(name) else "h2_bad_header_name")


def request_head(headers: list[tuple[bytes, bytes]], end_stream: bool) -> RequestHead:
    """The head of one HTTP/2 request, or :class:`Malformed` with its reason code."""
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    hosts: list[bytes] = []
    content_length: bytes | None = None
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + FIELD_OVERHEAD
        if _BAD_VALUE.search(value) is not None:
            raise Malformed("h2_bad_header_value")
        if name[:1] == b":":
            if regular or cookies or hosts:
                raise Malformed("h2_pseudo_header_after_regular")
            if name not in _REQUEST_PSEUDO:
                raise Malformed("h2_bad_pseudo_header")
            if name in pseudo:
                raise Malformed("h2_duplicate_pseudo_header")
            pseudo[name] = value
            continue
        _check_name(name)
        if name in _CONNECTION_SPECIFIC:
            raise Malformed("h2_connection_header")
        if name == b"te":
            if value.lower() != b"trailers":
                raise Malformed("h2_bad_te")
            continue  # hop-by-hop: never forwarded
        if name == b"cookie":
            cookies.append(value)  # RFC 9113 8.2.3: split crumbs are joined again for HTTP/1.1
        elif name == b"host":
            hosts.append(value)
        else:
            if name == b"content-length":
                if content_length is not None and value != content_length:
                    raise Malformed("h2_conflicting_content_length")  # h2 refuses this too; fail closed
                content_length = value
                if regular.count((name, value)):
                    continue  # the same value twice is one Content-Length
            regular.append((name, value))
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    scheme = pseudo.get(b":scheme")
    if method == b"CONNECT":
        raise Malformed("h2_connect")  # no tunnels over HTTP/2 (and no extended CONNECT: not advertised)
    if method is None or path is None or scheme is None:
        raise Malformed("h2_missing_pseudo_header")
    if not path:
        raise Malformed("h2_empty_path")
    if method not in _METHODS:
        raise Malformed("h2_bad_method")
    if _TARGET.fullmatch(path) is None:
        raise Malformed("h2_bad_path")  # judge() checks the path part again; this covers the query too
    if scheme != b"https":
        raise Malformed("h2_bad_scheme")
    if content_length is not None and not content_length.isdigit():
        raise Malformed("h2_bad_content_length")
    authority = pseudo.get(b":authority")
    # a Host that names the same authority is the same field; one that differs is a second Host
    host_values = hosts if authority is None else [authority, *(h for h in hosts if h != authority)]
    fields = [(b"host", h) for h in host_values] + regular
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    head = RequestHead.collect(method, path, "2", fields, head_size=size)
    if content_length is None and not end_stream:
        head.transfer_encoding = b"chunked"  # a body of unannounced length: chunked to Django
    return head


def response_headers(status: int, headers: list[tuple[bytes, bytes]], *, keep_length: bool,
                     extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    """An upstream HTTP/1.1 response head as an HTTP/2 header block: ``:status``, lower-case names,
    no hop-by-hop or connection-listed fields; Content-Length only when the body is passed on as is."""
    dropped = connection_tokens(headers)
    out = [(b":status", b"%d" % status)]
    for name, value in headers:
        key = name.lower()
        if key in HOP_BY_HOP or key in dropped or (key == b"content-length" and not keep_length):
            continue
        out.append((key, value))
    out.extend(extra)
    return out


def renew_field(renew: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The HTTP/1.1 ``Client-Cert-Renew-By: ...\\r\\n`` line as an HTTP/2 field (empty when absent)."""
    if not renew:
        return ()
    name, _, value = renew.rstrip(b"\r\n").partition(b":")
    return ((name.strip().lower(), value.strip()),)
