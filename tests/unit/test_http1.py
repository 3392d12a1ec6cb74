"""mtls_proxy.http1: the header tables and the bytes the proxy writes itself."""

from __future__ import annotations

import json
from http import HTTPStatus

import httptools
import pytest

from mtls_proxy.http1 import (
    CHUNKED_END,
    CONTINUE_100,
    EOL,
    HOP_BY_HOP,
    PROTECTED,
    REQUEST_OWNED,
    chunk_header,
    connection_tokens,
    error_body,
    error_response,
)


def test_hop_by_hop_table_is_rfc9110_plus_framing() -> None:
    assert {
        b"connection", b"proxy-connection", b"keep-alive", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"http2-settings",
    } == HOP_BY_HOP
    assert HOP_BY_HOP | {b"content-length", b"expect"} == REQUEST_OWNED
    assert all(name == name.lower() for name in REQUEST_OWNED)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], set()),
        ([(b"Connection", b"close")], {b"close"}),
        ([(b"Connection", b"keep-alive, X-Foo")], {b"keep-alive", b"x-foo"}),
        ([(b"connection", b"  X-A ,,X-B  , ")], {b"x-a", b"x-b"}),  # empty list members are ignored
        ([(b"CONNECTION", b"X-A"), (b"Connection", b"x-b")], {b"x-a", b"x-b"}),  # every Connection field counts
        ([(b"X-Other", b"X-A")], set()),  # only Connection names hop-by-hop fields
        # a client cannot make the proxy drop the fields it needs for framing and routing
        ([(b"Connection", b"Host, Content-Length, Transfer-Encoding, X-A")], {b"x-a"}),
    ],
)
def test_connection_tokens(headers: list[tuple[bytes, bytes]], expected: set[bytes]) -> None:
    assert connection_tokens(headers) == frozenset(expected)


def test_protected_fields() -> None:
    assert {b"host", b"content-length", b"transfer-encoding"} == PROTECTED


@pytest.mark.parametrize(
    ("status", "reason", "error"),
    [
        (400, "bad_chunk", "bad request"),
        (403, "denied_by_rule", "forbidden"),
        # 3.11/3.12 say "Request Entity Too Large", 3.13 "Content Too Large": the phrase follows Python
        (413, "body_too_large", HTTPStatus(413).phrase.lower()),
        (431, "request_head_too_large", "request header fields too large"),
        (502, "upstream_connect_failed", "bad gateway"),
        (504, "upstream_timeout", "gateway timeout"),
        (599, "weird", "error"),  # not a registered status: a generic phrase, never an exception
    ],
)
def test_error_body(status: int, reason: str, error: str) -> None:
    assert json.loads(error_body(status, reason)) == {"error": error, "reason": reason}


def _parse(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """Parse a response with llhttp, as a client would."""

    class Sink:
        def __init__(self) -> None:
            self.headers: list[tuple[bytes, bytes]] = []
            self.body = b""
            self.done = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.done = True

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(data)
    return parser.get_status_code(), sink.headers, sink.body, sink.done


def test_error_response_is_a_complete_keep_alive_response() -> None:
    data = error_response(403, "denied_by_rule", close=False)
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    status, headers, body, done = _parse(data)
    assert status == 403 and done
    assert json.loads(body) == {"error": "forbidden", "reason": "denied_by_rule"}
    names = [n.lower() for n, _ in headers]
    assert names == [b"content-type", b"content-length", b"cache-control"]
    assert dict(headers)[b"Content-Length"] == str(len(body)).encode()
    assert dict(headers)[b"Content-Type"] == b"application/json"
    assert dict(headers)[b"Cache-Control"] == b"no-store"


def test_error_response_with_close() -> None:
    data = error_response(431, "request_head_too_large", close=True)
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    status, headers, body, done = _parse(data)
    assert (status, done) == (431, True)
    assert (b"Connection", b"close") in headers
    assert json.loads(body)["reason"] == "request_head_too_large"


def test_error_response_to_head_has_the_length_but_no_body() -> None:
    full = error_response(404, "x", close=False)
    head_only = error_response(404, "x", close=False, head_only=True)
    assert full.startswith(head_only)
    assert head_only.endswith(b"\r\n\r\n")
    assert len(full) - len(head_only) == len(error_body(404, "x"))
    assert b"Content-Length: %d\r\n" % len(error_body(404, "x")) in head_only


def test_error_response_unknown_status() -> None:
    assert error_response(599, "weird", close=True).startswith(b"HTTP/1.1 599 Error\r\n")


@pytest.mark.parametrize(("size", "expected"), [(1, b"1\r\n"), (15, b"f\r\n"), (16, b"10\r\n"),
                                                (65536, b"10000\r\n"), (1 << 30, b"40000000\r\n")])
def test_chunk_header(size: int, expected: bytes) -> None:
    assert chunk_header(size) == expected


def test_chunk_framing_round_trips_through_llhttp() -> None:
    pieces = [b"a", b"b" * 15, b"c" * 70000]
    framed = b"".join(chunk_header(len(p)) + p + EOL for p in pieces) + CHUNKED_END
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
    status, _, body, done = _parse(data)
    assert (status, done) == (200, True)
    assert body == b"".join(pieces)


def test_constants() -> None:
    assert CONTINUE_100 == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert CHUNKED_END == b"0\r\n\r\n"
    assert EOL == b"\r\n"
