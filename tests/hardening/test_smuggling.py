"""Request smuggling and parser discrepancies, as exact bytes over real mTLS.

Every case sends a request the proxy must refuse, immediately followed (in the same bytes)
by a well-formed request to Django's probe view under a fresh marker. The proxy must
answer the documented status with its JSON reason, close the connection when the stream
can no longer be trusted, and Django must never run the smuggled probe (asked directly,
bypassing the proxy). Cases the proxy accepts are checked the other way round: Django saw
exactly what the proxy judged, once, with the body the client framed.

The table in docs/security.md lists the same cases with their results.
"""

from __future__ import annotations

import pytest

from tests.hardening.wire import converse, django_saw, new_marker, probe_request, proxy_judged

H = "Host: localhost\r\n"


def _post(headers: str, body: bytes = b"", target: str = "/api/echo") -> bytes:
    return f"POST {target} HTTP/1.1\r\n{H}{headers}\r\n".encode() + body


# (id, first request bytes, expected status, expected reason). The first request is refused;
# the connection must close, and the probe that follows it must never reach Django.
REFUSED: list[tuple[str, bytes, int, str]] = [
    # --- Content-Length / Transfer-Encoding framing ---
    ("cl-then-te", _post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400, "cl_and_te"),
    ("te-then-cl", _post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), 400, "cl_and_te"),
    ("two-cl-equal", _post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400, "duplicate_content_length"),
    ("two-cl-different", _post("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400,
     "duplicate_content_length"),
    ("cl-list", _post("Content-Length: 5, 5\r\n", b"hello"), 400, "bad_content_length"),
    ("cl-empty", _post("Content-Length: \r\n", b""), 400, "bad_content_length"),
    ("cl-plus-signed", _post("Content-Length: +5\r\n", b"hello"), 400, "bad_content_length"),
    ("cl-minus-signed", _post("Content-Length: -5\r\n", b"hello"), 400, "bad_content_length"),
    ("cl-hex", _post("Content-Length: 0x5\r\n", b"hello"), 400, "bad_content_length"),
    ("cl-inner-space", _post("Content-Length: 1 0\r\n", b"helloworld"), 400, "bad_content_length"),
    ("cl-overflow", _post("Content-Length: 99999999999999999999999\r\n", b"hello"), 400, "bad_content_length"),
    ("te-chunked-identity", _post("Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), 400,
     "bad_transfer_encoding"),
    # llhttp refuses these only after the head is complete; the proxy's own check answers first (RFC 9112 6.1)
    ("te-identity", _post("Transfer-Encoding: identity\r\n", b"0\r\n\r\n"), 501, "unsupported_transfer_coding"),
    ("te-xchunked", _post("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501, "unsupported_transfer_coding"),
    ("te-chunked-twice", _post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400,
     "bad_transfer_encoding"),
    ("te-chunked-then-identity", _post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                                       b"0\r\n\r\n"), 400, "bad_transfer_encoding"),
    ("te-space-before-colon", _post("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400, "bad_header"),
    ("te-leading-space-line", b"POST /api/echo HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" + H.encode()
     + b"\r\n0\r\n\r\n", 400, "bad_request"),
    ("te-vertical-tab", _post("Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), 400, "bad_header"),
    ("te-obs-fold", _post("Transfer-Encoding: gzip,\r\n chunked\r\n", b"0\r\n\r\n"), 400, "bad_header"),
    ("obs-fold-other-header", f"GET /api/echo HTTP/1.1\r\n{H}X-A: b\r\n c\r\n\r\n".encode(), 400, "bad_header"),
    ("te-gzip-chunked", _post("Transfer-Encoding: gzip, chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 501,
     "unsupported_transfer_coding"),
    ("te-gzip-then-chunked", _post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                                   b"5\r\nhello\r\n0\r\n\r\n"), 501, "unsupported_transfer_coding"),
    ("te-in-http10", b"POST /api/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     "te_in_http10"),
    # --- chunk framing ---
    ("chunk-size-not-hex", _post("Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-size-negative", _post("Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-size-0x", _post("Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-size-space", _post("Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-size-overflow", _post("Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
     400, "bad_chunk"),
    ("chunk-ext-bare-lf", _post("Transfer-Encoding: chunked\r\n", b"5;a=b\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-ext-cr", _post("Transfer-Encoding: chunked\r\n", b"5;a\rb\r\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-ext-nul", _post("Transfer-Encoding: chunked\r\n", b"5;a\x00\r\nhello\r\n0\r\n\r\n"), 400, "bad_chunk"),
    ("chunk-data-too-long", _post("Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n"), 400,
     "bad_chunk"),
    ("chunk-bare-lf", _post("Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"), 400, "bad_chunk"),
    ("last-chunk-bare-lf", _post("Transfer-Encoding: chunked\r\n", b"0\n\r\n"), 400, "bad_chunk"),
    ("trailer-content-length", _post("Transfer-Encoding: chunked\r\n", b"0\r\nContent-Length: 50\r\n\r\n"), 400,
     "cl_and_te"),
    # --- line endings, control bytes, header names ---
    ("bare-lf-request-line", b"GET /api/echo HTTP/1.1\nHost: localhost\n\n", 400, "bad_line_ending"),
    ("bare-lf-after-header", f"GET /api/echo HTTP/1.1\r\n{H}X-A: b\nX-B: c\r\n\r\n".encode(), 400,
     "bad_line_ending"),
    ("bare-cr-after-header", f"GET /api/echo HTTP/1.1\r\n{H}X-A: b\rX-B: c\r\n\r\n".encode(), 400,
     "bad_line_ending"),
    ("cr-in-value", f"GET /api/echo HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n".encode(), 400, "bad_line_ending"),
    ("nul-in-name", f"GET /api/echo HTTP/1.1\r\n{H}X\x00A: b\r\n\r\n".encode(), 400, "bad_header"),
    ("nul-in-value", f"GET /api/echo HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n".encode(), 400, "bad_header"),
    ("cr-in-name", f"GET /api/echo HTTP/1.1\r\n{H}X\rA: b\r\n\r\n".encode(), 400, "bad_header"),
    ("ctl-in-value", f"GET /api/echo HTTP/1.1\r\n{H}X-A: a\x01b\r\n\r\n".encode(), 400, "bad_header"),
    ("del-in-value", f"GET /api/echo HTTP/1.1\r\n{H}X-A: a\x7fb\r\n\r\n".encode(), 400, "bad_header"),
    ("empty-header-name", f"GET /api/echo HTTP/1.1\r\n{H}: b\r\n\r\n".encode(), 400, "bad_header"),
    ("space-in-header-name", f"GET /api/echo HTTP/1.1\r\n{H}X A: b\r\n\r\n".encode(), 400, "bad_header"),
    # --- request line and target ---
    ("nul-in-target", b"GET /api/echo\x00 HTTP/1.1\r\n" + H.encode() + b"\r\n", 400, "bad_target"),
    ("raw-utf8-in-target", b"GET /api/\xc3\xa9 HTTP/1.1\r\n" + H.encode() + b"\r\n", 400, "bad_target"),
    ("lowercase-method", b"get /api/echo HTTP/1.1\r\n" + H.encode() + b"\r\n", 400, "bad_method"),
    ("tab-after-method", b"GET\t/api/echo HTTP/1.1\r\n" + H.encode() + b"\r\n", 400, "bad_method"),
    ("lowercase-version", b"GET /api/echo http/1.1\r\n" + H.encode() + b"\r\n", 400, "bad_request"),
    ("http09-request", b"GET /api/echo\r\n\r\n", 505, "http_version_not_supported"),
    ("http2-request-line", b"GET /api/echo HTTP/2.0\r\n" + H.encode() + b"\r\n", 505, "http_version_not_supported"),
    ("http10-without-host", b"GET /api/echo HTTP/1.0\r\n\r\n", 400, "missing_host"),
    ("absolute-form-other-host", f"GET http://other.example/api/echo HTTP/1.1\r\n{H}\r\n".encode(), 400,
     "not_origin_form"),
    ("absolute-form-same-host", f"GET https://localhost/api/echo HTTP/1.1\r\n{H}\r\n".encode(), 400,
     "not_origin_form"),
    ("asterisk-form", f"OPTIONS * HTTP/1.1\r\n{H}\r\n".encode(), 400, "not_origin_form"),
    ("fragment-in-target", f"GET /api/echo#frag HTTP/1.1\r\n{H}\r\n".encode(), 400, "fragment"),
    ("connect-method", f"CONNECT localhost:443 HTTP/1.1\r\n{H}\r\n".encode(), 400, "bad_upgrade"),
    # --- Host ---
    ("two-host-same", f"GET /api/echo HTTP/1.1\r\n{H}{H}\r\n".encode(), 400, "multiple_host"),
    ("two-host-different", f"GET /api/echo HTTP/1.1\r\n{H}Host: other.example\r\n\r\n".encode(), 400,
     "multiple_host"),
    ("no-host-http11", b"GET /api/echo HTTP/1.1\r\n\r\n", 400, "missing_host"),
    # --- upgrades the proxy does not tunnel ---
    ("h2c-upgrade", f"GET /api/echo HTTP/1.1\r\n{H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
     "HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n".encode(), 400, "bad_upgrade"),
    ("websocket-upgrade-with-body", f"GET /ws/echo HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: websocket\r\n"
     "Content-Length: 5\r\n\r\nhello".encode(), 400, "bad_upgrade"),
]


@pytest.mark.parametrize(("case", "first", "status", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_and_closed_and_nothing_smuggled(guarded, case, first, status, reason):
    marker = new_marker(case)
    conv = converse(guarded.port, guarded.ctx, first + probe_request(marker))
    assert conv.statuses == [status], (case, conv.raw[:400])
    resp = conv.responses[0]
    assert resp.header("content-type") == "application/json"
    assert resp.json()["reason"] == reason
    assert resp.header("connection") == "close"
    assert conv.closed, f"{case}: connection left open after {status}"
    assert conv.leftover == b""
    assert django_saw(guarded.upstream, marker) == []
    assert proxy_judged(guarded.proxy, marker) == []


def test_refused_framing_never_reaches_django_even_partly(guarded):
    """A chunked upload that breaks framing mid-body (after Django got the head) is never completed."""
    marker = new_marker("midbody")
    head = f"POST /api/probe/{marker} HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n".encode()
    conv = converse(guarded.port, guarded.ctx, [head + b"5\r\nhello\r\n", b"5\r\nworld\r\nzz\r\n"], gap=0.3)
    # The head and the first chunk were forwarded (Django is waiting for the rest); the broken chunk
    # resets the upstream connection, so Django's view never runs with a body it takes as complete.
    assert conv.closed
    assert conv.statuses == [400]
    assert conv.responses[0].reason == "bad_chunk"
    assert django_saw(guarded.upstream, marker) == []


# --- accepted forms: Django sees exactly the request the proxy judged, once ------------------------------

ACCEPTED: list[tuple[str, str, bytes, int]] = [
    # (id, headers after Host, body as framed by the client, decoded body length Django must see)
    ("cl-leading-zeros", "Content-Length: 005\r\n", b"hello", 5),
    ("te-capitalised", "Transfer-Encoding: Chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", 5),
    ("te-tab-before-value", "Transfer-Encoding:\tchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", 5),
    ("te-trailing-space", "Transfer-Encoding: chunked \r\n", b"5\r\nhello\r\n0\r\n\r\n", 5),
    ("chunk-extensions", "Transfer-Encoding: chunked\r\n", b'5;a=b;c="d e"\r\nhello\r\n0;z\r\n\r\n', 5),
    ("chunk-trailers-dropped", "Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", 5),
    ("connection-lists-content-length", "Connection: Content-Length\r\nContent-Length: 5\r\n", b"hello", 5),
    ("connection-lists-host", "Connection: Host, Transfer-Encoding\r\nContent-Length: 5\r\n", b"hello", 5),
]


@pytest.mark.parametrize(("case", "headers", "body", "length"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_framing_is_reframed_exactly(guarded, case, headers, body, length):
    first, second = new_marker(case), new_marker(case + "-next")
    data = f"POST /api/probe/{first} HTTP/1.1\r\n{H}{headers}\r\n".encode() + body + probe_request(second)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [200, 200], conv.raw[:400]
    assert conv.closed  # the second request said Connection: close
    seen = django_saw(guarded.upstream, first)
    assert len(seen) == 1
    assert seen[0]["body_length"] == length
    assert seen[0]["method"] == "POST"
    assert seen[0]["signed"] is True
    assert "HTTP_X_TRAILER" not in seen[0]["headers"]
    # the pipelined request after it was judged by the proxy (logged) and reached Django once
    assert len(django_saw(guarded.upstream, second)) == 1
    assert len(proxy_judged(guarded.proxy, second)) == 1


# --- pipelining after a refusal ----------------------------------------------------------------------------


def test_pipelined_after_403_is_judged_on_its_own(guarded):
    """A policy refusal leaves a trustworthy stream: the next request is judged (and allowed) by itself."""
    marker = new_marker("after-403")
    data = f"GET /admin/ HTTP/1.1\r\n{H}\r\n".encode() + probe_request(marker)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [403, 200]
    assert conv.responses[0].reason == "denied_by_rule"
    assert conv.responses[0].header("connection") is None  # keep-alive: the stream is still in step
    assert conv.closed
    assert len(django_saw(guarded.upstream, marker)) == 1
    assert len(proxy_judged(guarded.proxy, marker)) == 1


def test_pipelined_after_403_with_body_closes(guarded):
    """A refused request with a body: the body (holding a request) is discarded and the connection closes."""
    marker = new_marker("in-body")
    hidden = probe_request(marker)
    data = f"POST /admin/ HTTP/1.1\r\n{H}Content-Length: {len(hidden)}\r\n\r\n".encode() + hidden
    conv = converse(guarded.port, guarded.ctx, data + probe_request(new_marker("after-body")))
    assert conv.statuses == [403]
    assert conv.responses[0].header("connection") == "close"
    assert conv.closed
    assert django_saw(guarded.upstream, marker) == []


def test_pipelined_after_400_closes_before_the_next(guarded):
    marker = new_marker("after-400")
    data = f"GET /api/..%2Fadmin/ HTTP/1.1\r\n{H}\r\n".encode() + probe_request(marker)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [400]
    assert conv.responses[0].reason == "encoded_separator"
    assert conv.closed
    assert django_saw(guarded.upstream, marker) == []
    assert proxy_judged(guarded.proxy, marker) == []


def test_pipelined_refusal_behind_an_active_request(guarded):
    """The broken request arrives while the first is still upstream: the first is answered, then close."""
    slow, marker = new_marker("slow"), new_marker("behind")
    data = (f"GET /api/probe/{slow} HTTP/1.1\r\n{H}\r\n".encode()
            + f"GET /api/echo HTTP/1.1\r\n{H}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab".encode()
            + probe_request(marker))
    conv = converse(guarded.port, guarded.ctx, data)
    # the first is answered (and told the connection ends there); the broken one gets no answer
    assert conv.statuses == [200]
    assert conv.responses[0].header("connection") == "close"
    assert conv.closed
    assert len(django_saw(guarded.upstream, slow)) == 1
    assert django_saw(guarded.upstream, marker) == []


def test_http10_keep_alive_pipeline(guarded):
    """HTTP/1.0 + keep-alive with a Content-Length response: the next request is judged on its own."""
    second = new_marker("h10b")
    data = (b"GET /api/download?size=5 HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
            + f"GET /api/probe/{second} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [200, 200]
    assert conv.responses[0].header("connection") == "keep-alive"
    assert conv.responses[0].header("content-length") == "5"
    assert conv.closed  # the second HTTP/1.0 request did not ask for keep-alive
    assert len(django_saw(guarded.upstream, second)) == 1
    assert len(proxy_judged(guarded.proxy, second)) == 1


def test_http10_keep_alive_with_unsized_response_closes(guarded):
    """An HTTP/1.0 client cannot take chunks: an unsized response ends at close, so nothing follows it."""
    first, second = new_marker("h10a"), new_marker("h10b")
    data = (f"GET /api/probe/{first} HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
            f"GET /api/probe/{second} HTTP/1.0\r\nHost: localhost\r\n\r\n").encode()
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [200]
    assert conv.responses[0].header("connection") == "close"
    assert conv.responses[0].header("content-length") is None
    assert conv.responses[0].json()["probe"] == first
    assert conv.closed
    assert len(django_saw(guarded.upstream, first)) == 1
    assert django_saw(guarded.upstream, second) == []
    assert proxy_judged(guarded.proxy, second) == []


def test_http10_without_keep_alive_closes_before_the_next(guarded):
    first, second = new_marker("h10c"), new_marker("h10d")
    data = f"GET /api/probe/{first} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode() + probe_request(second)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [200]
    assert conv.closed
    assert len(django_saw(guarded.upstream, first)) == 1
    assert django_saw(guarded.upstream, second) == []


# --- WebSocket upgrade smuggling ----------------------------------------------------------------------------

WS_HEAD = (
    "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\n{key}\r\n"
)
WS_KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize(
    ("case", "path", "key", "status"),
    [
        # no WebSocket route at that path: Channels refuses the handshake
        ("no-ws-route", "/api/probe/{first}", WS_KEY, 500),
        # the WebSocket route, but no Sec-WebSocket-Key: the server answers 400, not 101
        ("bad-handshake", "/ws/echo", "", 400),
    ],
)
def test_websocket_upgrade_answered_non_101_smuggles_nothing(guarded, case, path, key, status):
    first, smuggled = new_marker("ws-" + case), new_marker("ws-smuggled")
    data = WS_HEAD.format(path=path.format(first=first), key=key).encode() + probe_request(smuggled)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [status], conv.raw[:400]
    assert conv.responses[0].header("connection") == "close"
    assert conv.closed
    assert django_saw(guarded.upstream, smuggled) == []
    assert proxy_judged(guarded.proxy, smuggled) == []
    assert django_saw(guarded.upstream, first) == []  # the upgrade went to the WebSocket router, not the view


def test_websocket_upgrade_refused_by_policy_smuggles_nothing(guarded):
    smuggled = new_marker("ws-admin-smuggled")
    data = WS_HEAD.format(path="/admin/ws", key=WS_KEY).encode() + probe_request(smuggled)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [403]
    assert conv.responses[0].reason == "denied_by_rule"
    assert conv.closed
    assert django_saw(guarded.upstream, smuggled) == []


def test_http_bytes_inside_an_accepted_websocket_tunnel_are_not_a_request(guarded):
    """After a real 101 the bytes are WebSocket frames for Channels, never an HTTP request for Django."""
    smuggled = new_marker("ws-tunnel")
    data = WS_HEAD.format(path="/ws/echo", key=WS_KEY).encode() + probe_request(smuggled)
    conv = converse(guarded.port, guarded.ctx, data, timeout=5)
    assert conv.statuses[:1] == [101]
    assert conv.closed  # the WebSocket server closes on bytes that are not a masked frame
    assert django_saw(guarded.upstream, smuggled) == []
    assert proxy_judged(guarded.proxy, smuggled) == []


def test_host_sni_mismatch_is_421_and_stream_stays_in_step(guarded):
    marker, other = new_marker("sni"), new_marker("sni-next")
    data = f"GET /api/probe/{marker} HTTP/1.1\r\nHost: other.example\r\n\r\n".encode() + probe_request(other)
    conv = converse(guarded.port, guarded.ctx, data)
    assert conv.statuses == [421, 200]
    assert conv.responses[0].json() == {"error": "misdirected request", "reason": "host_sni_mismatch"}
    assert django_saw(guarded.upstream, marker) == []
    assert len(django_saw(guarded.upstream, other)) == 1


def test_empty_host_is_refused(guarded):
    conv = converse(guarded.port, guarded.ctx, b"GET /api/echo HTTP/1.1\r\nHost: \r\n\r\n")
    assert conv.statuses == [400]
    assert conv.responses[0].json()["reason"] == "missing_host"
