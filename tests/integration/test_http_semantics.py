"""HTTP/1.1 semantics through the real proxy to the real Django app.

What Django received is read back from ``/api/echo`` (method, raw path, query string,
every ``HTTP_*`` header, body hash); byte-exact requests go over raw TLS sockets.
"""

from __future__ import annotations

import hashlib
import json
import ssl

import pytest

from tests.support.rawhttp import RawConn, request_bytes

pytestmark = pytest.mark.timeout(60)

HOP_BY_HOP_META = ("HTTP_CONNECTION", "HTTP_KEEP_ALIVE", "HTTP_TE", "HTTP_TRAILER", "HTTP_UPGRADE",
                   "HTTP_PROXY_CONNECTION", "HTTP_X_FOO", "HTTP_X_BAR")


@pytest.fixture
def ctx(pki) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client("device-http"))


def test_keep_alive_serves_many_requests_on_one_tls_connection(proxy, ctx):
    conn = proxy.connection(ctx)
    try:
        conn.request("GET", "/api/echo?n=0")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["query_string"] == "n=0"
        sock = conn.sock
        session_id = sock.session.id
        for n in range(1, 6):
            body = b"x" * (n * 1000)
            conn.request("POST" if n % 2 else "GET", f"/api/echo?n={n}", body=body if n % 2 else None)
            resp = conn.getresponse()
            echo = json.loads(resp.read())
            assert resp.status == 200
            assert resp.getheader("Connection") is None  # no close announced
            assert echo["query_string"] == f"n={n}"
            assert echo["body_length"] == (len(body) if n % 2 else 0)
            assert conn.sock is sock  # http.client reconnects silently if the proxy closed: it did not
        assert sock.session.id == session_id
    finally:
        conn.close()


def test_keep_alive_raw_pipelined_requests_answered_in_order(proxy, ctx):
    with RawConn(proxy.port, ctx) as c:
        # three requests in one write: answered one after the other, in order
        c.send(b"".join(request_bytes("GET", f"/api/echo?i={i}") for i in range(3)))
        for i in range(3):
            resp = c.read_response()
            assert resp.status == 200
            assert resp.json()["query_string"] == f"i={i}"
        c.send(request_bytes("GET", "/api/echo?i=last"))
        assert c.read_response().json()["query_string"] == "i=last"
        assert not c.closed_by_peer(0.3)


def test_client_connection_close_is_honoured_and_not_forwarded(proxy, ctx):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", [("Connection", "close")]))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("connection") == "close"
        assert "HTTP_CONNECTION" not in resp.json()["headers"]
        assert c.closed_by_peer(5)


@pytest.mark.parametrize("path", ["/api/download?size=1000", "/api/download-chunked?size=1000", "/api/echo"])
def test_head_returns_headers_only_and_connection_stays_usable(proxy, ctx, path):
    with RawConn(proxy.port, ctx, timeout=10) as c:
        c.send(request_bytes("HEAD", path))
        head = c.read_response(head_request=True)
        assert head.status == 200
        if path.startswith("/api/download?"):
            assert head.header("content-length") == "1000"  # the length of the body a GET would get
        # the very next bytes must be the next response: no body leaked, nothing waits for one
        c.send(request_bytes("GET", "/api/echo?after=head"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.json()["query_string"] == "after=head"
        assert resp.json()["method"] == "GET"


def test_head_reaches_django_as_head(proxy, ctx):
    conn = proxy.connection(ctx)
    try:
        conn.request("HEAD", "/api/download?size=5")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == b""
        assert resp.getheader("Content-Length") == "5"
        conn.request("GET", "/api/download?size=5")
        resp = conn.getresponse()
        assert resp.read() and resp.status == 200
    finally:
        conn.close()


def test_expect_100_continue_before_the_body(proxy, ctx):
    body = b"0123456789" * 5000
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("POST", "/api/echo", [("Expect", "100-continue"), ("Content-Length", str(len(body)))],
                             content_length=False))
        # nothing of the body sent yet: the proxy must invite it
        assert c.readable(5), "no 100 Continue while the client waits"
        interim = c.read_head()
        assert (interim.status, interim.reason, interim.headers) == (100, "Continue", [])
        c.send(body)
        resp = c.read_response()
        assert resp.status == 200
        echo = resp.json()
        assert echo["body_length"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert "HTTP_EXPECT" not in echo["headers"]  # the proxy answered it; Django must not answer again
        # and the connection goes on
        c.send(request_bytes("GET", "/api/echo?x=2"))
        assert c.read_response().json()["query_string"] == "x=2"


def test_hop_by_hop_headers_never_reach_django(proxy, ctx):
    headers = [
        ("Connection", "keep-alive, X-Foo"),
        ("Connection", "X-Bar"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "example/1"),  # no 'Connection: upgrade': just a hop-by-hop field, not an upgrade
        ("Proxy-Connection", "keep-alive"),
        ("X-Foo", "named in Connection"),
        ("X-Bar", "named in the second Connection"),
        ("X-Kept", "end-to-end"),
    ]
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", headers))
        resp = c.read_response()
        assert resp.status == 200
        seen = resp.json()["headers"]
        assert [k for k in HOP_BY_HOP_META if k in seen] == []
        assert seen["HTTP_X_KEPT"] == "end-to-end"
        # the connection is still keep-alive for the client
        c.send(request_bytes("GET", "/api/echo"))
        assert c.read_response().status == 200


def test_hop_by_hop_response_headers_are_not_passed_to_the_client(proxy, ctx):
    # uvicorn frames this response with Transfer-Encoding: chunked; the proxy re-frames it itself
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/download-chunked?size=10"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header_all("transfer-encoding") == ["chunked"]
        assert resp.header("keep-alive") is None and resp.header("connection") is None
        assert len(resp.body) == 10


@pytest.mark.parametrize(
    ("target", "raw_path", "path", "query"),
    [
        ("/api/echo/a%20b;c?x=%41&y=1&y=2", "/api/echo/a%20b;c", "/api/echo/a b;c", "x=%41&y=1&y=2"),
        ("/api/echo/%7Euser/caf%C3%A9?q=a+b&e=&=v&x", "/api/echo/%7Euser/caf%C3%A9", "/api/echo/~user/caf\u00e9",
         "q=a+b&e=&=v&x"),
        ("/api/echo/x?a=%2F%5C%00&b=/?c", "/api/echo/x", "/api/echo/x", "a=%2F%5C%00&b=/?c"),
        ("/api/echo?", "/api/echo", "/api/echo", ""),
    ],
)
def test_path_and_query_forwarded_byte_exact(proxy, ctx, target, raw_path, path, query):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", target))
        resp = c.read_response()
        assert resp.status == 200, resp.body
        echo = resp.json()
        assert echo["raw_path"] == raw_path
        assert echo["path"] == path
        assert echo["query_string"] == query


def test_policy_judges_the_path_django_routes_not_only_the_normalised_one(proxies, pki, ctx):
    """``/admin/../api/echo`` normalises to ``/api/echo``, but Django routes it literally to the admin view.

    The target is forwarded byte-exact, so the policy must also hold for the decoded,
    un-normalised path that the upstream resolves; otherwise a deny rule is bypassed.
    """
    p = proxies.start(policy={"rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "all", "paths": ["/"], "clients": "any"},
    ]})
    for target in ("/admin", "/admin/../api/echo", "/admin/%2e%2e/api/echo", "/admin/./../api/echo",
                   "/api/../admin/x", "/admin//..//api/echo"):
        status, body = p.get_json(ctx, target)
        assert (status, body) == (403, {"error": "forbidden", "reason": "denied_by_rule"}), target
    status, body = p.get_json(ctx, "/api/echo/./x/../y")  # harmless dot-segments still pass, as sent
    assert status == 200 and body["raw_path"] == "/api/echo/./x/../y"


def test_repeated_request_headers_all_reach_django(proxy, ctx):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", [("X-Multi", "one"), ("X-Other", "o"), ("X-Multi", "two, three")]))
        seen = c.read_response().json()["headers"]
        assert seen["HTTP_X_MULTI"] == "one,two, three"  # Django joins repeated fields with ','
        assert seen["HTTP_X_OTHER"] == "o"


def test_repeated_response_headers_are_kept(proxy, ctx):
    conn = proxy.connection(ctx)
    try:
        conn.request("GET", "/api/set-cookies")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        cookies = sorted(resp.msg.get_all("Set-Cookie"))
        assert len(cookies) == 2
        assert cookies[0].startswith("a=1;")
        assert cookies[1].startswith("b=2;") and "HttpOnly" in cookies[1]
    finally:
        conn.close()


def test_x_forwarded_headers_are_set_and_client_values_replaced(proxy, ctx):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", [
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "7.7.7.7"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil.example"),
            ("X_Forwarded_For", "8.8.8.8"),  # the underscore spelling servers fold into the same META key
            ("Forwarded", "for=9.9.9.9"),
            ("X-Real-IP", "9.9.9.9"),
        ], host=f"localhost:{proxy.port}"))
        seen = c.read_response().json()["headers"]
        assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
        assert seen["HTTP_X_FORWARDED_PROTO"] == "https"
        assert seen["HTTP_X_FORWARDED_HOST"] == f"localhost:{proxy.port}"
        assert seen["HTTP_HOST"] == f"localhost:{proxy.port}"
        assert seen["HTTP_FORWARDED"] == f'for=127.0.0.1;proto=https;host="localhost:{proxy.port}"'  # ours only
        assert "HTTP_X_REAL_IP" not in seen


@pytest.mark.parametrize("name", [
    "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Ssl", "X-Forwarded-Server", "X_Forwarded_Port",
    "X-Client-IP", "True-Client-IP", "True_Client_IP", "X-Original-URL", "X-Rewrite-URL", "x-real-ip",
])
def test_every_client_forwarding_header_is_stripped(proxy, ctx, name):
    """A client must not tell Django where it is or what it asked for: the whole family goes."""
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", [(name, "/admin/evil")], host=f"localhost:{proxy.port}"))
        seen = c.read_response().json()["headers"]
    meta = "HTTP_" + name.upper().replace("-", "_")
    assert meta not in seen
    assert not any(v == "/admin/evil" for v in seen.values())
