"""HTTP/2 header blocks <-> the version-neutral head: what is malformed (stream error) and what judge() sees."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls_proxy.exchange.forwarding import upstream_head
from mtls_proxy.frontends.h2_head import Malformed, renew_field, request_head, response_headers
from mtls_proxy.judging import ConnectionFacts

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api.example.com"), (b":path", b"/api/x")]


def test_a_plain_request():
    head = request_head([*BASE, (b"accept", b"*/*")], end_stream=True)
    assert (head.method, head.target, head.version) == (b"GET", b"/api/x", "2")
    assert head.host == b"api.example.com" and head.host_count == 1
    assert head.headers == [(b"host", b"api.example.com"), (b"accept", b"*/*")]
    assert not head.has_body and head.content_length is None and head.transfer_encoding is None
    assert head.head_size == sum(len(n) + len(v) + 32 for n, v in [*BASE, (b"accept", b"*/*")])


def test_body_with_content_length_is_forwarded_with_it():
    head = request_head([*BASE, (b"content-length", b"5")], end_stream=False)
    assert head.content_length == 5 and not head.chunked


def test_body_without_content_length_goes_chunked_to_django():
    head = request_head(BASE, end_stream=False)
    assert head.chunked and head.content_length is None


def test_same_content_length_twice_is_one():
    head = request_head([*BASE, (b"content-length", b"5"), (b"content-length", b"5")], end_stream=False)
    assert [h for h in head.headers if h[0] == b"content-length"] == [(b"content-length", b"5")]


def test_cookie_crumbs_are_joined():
    head = request_head([*BASE, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")], end_stream=True)
    assert head.headers[-1] == (b"cookie", b"a=1; b=2")


def test_host_equal_to_authority_is_one_host():
    head = request_head([*BASE, (b"host", b"api.example.com")], end_stream=True)
    assert head.host_count == 1


def test_host_differing_from_authority_counts_as_a_second_host():
    head = request_head([*BASE, (b"host", b"evil.example.com")], end_stream=True)
    assert head.host_count == 2 and head.host == b"api.example.com"  # judge: 400 multiple_host


def test_no_authority_uses_host():
    head = request_head([BASE[0], BASE[1], BASE[3], (b"host", b"h.example.com")], end_stream=True)
    assert head.host == b"h.example.com"


def test_no_authority_and_no_host_is_left_to_judge():
    head = request_head([BASE[0], BASE[1], BASE[3]], end_stream=True)
    assert head.host_count == 0  # judge: 400 missing_host


def test_tab_and_obs_text_inside_values_are_fine():
    head = request_head([*BASE, (b"x-a", b"a\tb"), (b"x-b", b"caf\xc3\xa9")], end_stream=True)
    assert head.headers[-2:] == [(b"x-a", b"a\tb"), (b"x-b", b"caf\xc3\xa9")]


def test_te_trailers_is_allowed_and_not_forwarded():
    head = request_head([*BASE, (b"te", b"trailers")], end_stream=True)
    assert all(n != b"te" for n, _ in head.headers)


@pytest.mark.parametrize(("headers", "reason"), [
    ([BASE[0], BASE[1], BASE[2]], "h2_missing_pseudo_header"),
    ([BASE[1], BASE[2], BASE[3]], "h2_missing_pseudo_header"),
    ([BASE[0], BASE[2], BASE[3]], "h2_missing_pseudo_header"),
    ([*BASE, (b":path", b"/other")], "h2_duplicate_pseudo_header"),
    ([*BASE, (b":method", b"POST")], "h2_duplicate_pseudo_header"),
    ([BASE[0], BASE[1], BASE[2], (b"accept", b"*/*"), BASE[3]], "h2_pseudo_header_after_regular"),
    ([*BASE, (b":protocol", b"websocket")], "h2_bad_pseudo_header"),
    ([*BASE, (b":status", b"200")], "h2_bad_pseudo_header"),
    ([*BASE, (b"Accept", b"*/*")], "h2_uppercase_header"),
    ([*BASE, (b"x-A", b"1")], "h2_uppercase_header"),
    ([*BASE, (b"bad name", b"1")], "h2_bad_header_name"),
    ([*BASE, (b"", b"1")], "h2_bad_header_name"),
    ([*BASE, (b"x-a", b"1\r\nx-injected: 1")], "h2_bad_header_value"),
    ([*BASE, (b"x-a", b"1\n")], "h2_bad_header_value"),
    ([*BASE, (b"x-a", b"a\x00b")], "h2_bad_header_value"),
    ([*BASE, (b"x-a", b" padded")], "h2_bad_header_value"),
    ([*BASE, (b"x-a", b"a\x01b")], "h2_bad_header_value"),
    ([*BASE, (b"x-a", b"a\x7fb")], "h2_bad_header_value"),
    ([BASE[0], BASE[1], BASE[2], (b":path", b"/a\r\nHost: x")], "h2_bad_header_value"),
    ([*BASE, (b"connection", b"close")], "h2_connection_header"),
    ([*BASE, (b"keep-alive", b"5")], "h2_connection_header"),
    ([*BASE, (b"proxy-connection", b"x")], "h2_connection_header"),
    ([*BASE, (b"transfer-encoding", b"chunked")], "h2_connection_header"),
    ([*BASE, (b"upgrade", b"websocket")], "h2_connection_header"),
    ([*BASE, (b"te", b"gzip")], "h2_bad_te"),
    ([*BASE, (b"te", b"trailers, deflate")], "h2_bad_te"),
    ([BASE[0], BASE[1], BASE[2], (b":path", b"")], "h2_empty_path"),
    ([BASE[0], BASE[1], BASE[2], (b":path", b"/api/echo?a HTTP/1.0")], "h2_bad_path"),
    ([BASE[0], BASE[1], BASE[2], (b":path", b"/api/x y")], "h2_bad_path"),
    ([BASE[0], BASE[1], BASE[2], (b":path", b"/api/\xc3\xa9")], "h2_bad_path"),
    ([BASE[0], BASE[1], BASE[2], (b":path", b"/api/\x7f")], "h2_bad_header_value"),  # a control character
    ([(b":method", b"GET /admin"), BASE[1], BASE[2], BASE[3]], "h2_bad_method"),
    ([(b":method", b""), BASE[1], BASE[2], BASE[3]], "h2_bad_method"),
    ([(b":method", b"GE(T"), BASE[1], BASE[2], BASE[3]], "h2_bad_method"),
    ([(b":method", b"get"), BASE[1], BASE[2], BASE[3]], "h2_bad_method"),
    ([(b":method", b"FOO"), BASE[1], BASE[2], BASE[3]], "h2_bad_method"),  # a token, but no HTTP/1.1 parser's
    ([BASE[0], (b":scheme", b"http"), BASE[2], BASE[3]], "h2_bad_scheme"),
    ([(b":method", b"CONNECT"), BASE[2]], "h2_connect"),
    ([*BASE, (b"content-length", b"5"), (b"content-length", b"6")], "h2_conflicting_content_length"),
    ([*BASE, (b"content-length", b"+5")], "h2_bad_content_length"),
])
def test_malformed_requests(headers, reason):
    with pytest.raises(Malformed) as info:
        request_head(headers, end_stream=True)
    assert info.value.reason == reason


def test_response_headers_drop_hop_by_hop_and_lower_case():
    upstream = [(b"Content-Type", b"text/plain"), (b"Connection", b"close, X-Secret"), (b"X-Secret", b"1"),
                (b"Keep-Alive", b"5"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"),
                (b"Set-Cookie", b"a=1")]
    out = response_headers(200, upstream, keep_length=False, extra=((b"client-cert-renew-by", b"x"),))
    assert out == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                   (b"client-cert-renew-by", b"x")]


def test_content_length_kept_only_when_the_body_is_passed_on_as_is():
    upstream = [(b"Content-Length", b"10")]
    assert response_headers(200, upstream, keep_length=True) == [(b":status", b"200"), (b"content-length", b"10")]
    assert response_headers(200, upstream, keep_length=False) == [(b":status", b"200")]


def test_renew_field():
    assert renew_field(b"Client-Cert-Renew-By: 2030-01-01T00:00:00Z\r\n") == (
        (b"client-cert-renew-by", b"2030-01-01T00:00:00Z"),)
    assert renew_field(b"") == ()


# --- property: whatever an HTTP/2 client sends, what reaches Django is one well-formed HTTP/1.1 head ---------

_VALUES = st.sampled_from([b"", b"a b", b"/x?a HTTP/1.0", b"GET", b"a\tb", b"caf\xc3\xa9", b"1", b"x\ry", b"a\nb",
                           b"trailers", b"5", b"localhost"]) | st.binary(max_size=10)
_NAMES = st.sampled_from([b"x-a", b"accept", b"cookie", b"host", b"content-length", b"te", b"user-agent",
                          b"x-client-cert-subject", b"X-A", b"a b", b"connection"])
_PATHS = st.sampled_from([b"/api/echo", b"/a b", b"/x?a b", b"*", b"/x?\x01", b"/x?a=1&b=%20"]) | st.binary(
    min_size=1, max_size=10).map(lambda b: b"/" + b)
_METHODS = st.sampled_from([b"GET", b"POST", b"G T", b"GET\r\n", b"PATCH"]) | st.binary(min_size=1, max_size=5)


@given(_METHODS, _PATHS, st.lists(st.tuples(_NAMES, _VALUES), max_size=6), st.booleans())
@settings(max_examples=500, deadline=None)
def test_every_accepted_head_is_one_well_formed_http1_request(method, path, extra, end_stream):
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", path), *extra]
    try:
        head = request_head(headers, end_stream)
    except Malformed:
        return
    wire = upstream_head(head, ConnectionFacts(None, None, b"127.0.0.1"), ())  # type: ignore[arg-type]
    seen: list[tuple[bytes, bytes]] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen.append((name, value))

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(wire)  # llhttp (strict) takes it as exactly one request head
    assert parser.get_method() == head.method
    sent = [line for line in wire.split(b"\r\n")[1:] if line]
    assert len(seen) == len(sent)  # no field was split or smuggled into another
