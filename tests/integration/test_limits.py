"""Limits: head size, body size (global and per rule), slow heads, idle keep-alive, connection cap.

Each limit is shown from both sides: a request just inside it is served, one over it gets
the exact refusal (status and JSON ``reason``) and, where a body is involved, Django
is shown never to have received it whole (``/api/tracked-upload/<id>/status``).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from http import HTTPStatus

import pytest

from tests.support.rawhttp import RawConn, chunk, request_bytes

pytestmark = pytest.mark.timeout(60)

HEAD_LIMIT = 2048
ERROR_413 = HTTPStatus(413).phrase.lower()  # "request entity too large" up to 3.12, "content too large" from 3.13


@pytest.fixture
def ctx(pki) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client("device-limits"))


def _upload_status(proxy, ctx, upload_id: str) -> dict:  # type: ignore[no-untyped-def]
    status, body = proxy.get_json(ctx, f"/api/tracked-upload/{upload_id}/status")
    assert status == 200
    return body


def _assert_never_completed(proxy, ctx, upload_id: str, wait: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + wait
    while True:
        assert _upload_status(proxy, ctx, upload_id) == {"id": upload_id, "completed": False}
        if time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def _send_until_answered(c: RawConn, pieces, settle: float = 0.05) -> int:  # type: ignore[no-untyped-def]
    """Send pieces until the proxy answers (or closes); returns how many bytes were sent."""
    sent = 0
    for piece in pieces:
        if c.readable(settle):
            return sent
        try:
            c.send(piece)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return sent
        sent += len(piece)
    c.readable(5)
    return sent


# --- head size ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_head_proxy(proxies):  # type: ignore[no-untyped-def]
    return proxies.start(limits={"max_head_size": HEAD_LIMIT})


def test_head_within_limit_is_served(small_head_proxy, ctx):
    with RawConn(small_head_proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo", [("X-Pad", "p" * (HEAD_LIMIT - 400))]))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.json()["headers"]["HTTP_X_PAD"] == "p" * (HEAD_LIMIT - 400)


@pytest.mark.parametrize("where", ["header", "many_headers", "target"])
def test_head_over_limit_gets_431_and_close(small_head_proxy, ctx, where):
    if where == "header":
        data = request_bytes("GET", "/api/echo", [("X-Pad", "p" * (HEAD_LIMIT + 10))])
    elif where == "many_headers":
        data = request_bytes("GET", "/api/echo", [(f"X-H{i}", "v" * 40) for i in range(60)])
    else:
        data = request_bytes("GET", "/api/echo?q=" + "q" * (HEAD_LIMIT + 10))
    with RawConn(small_head_proxy.port, ctx) as c:
        c.send(data)
        resp = c.read_response()
        assert resp.status == 431
        assert resp.json() == {"error": "request header fields too large", "reason": "request_head_too_large"}
        assert resp.header("connection") == "close"
        assert c.closed_by_peer(5)


def test_unterminated_header_is_refused_once_over_the_limit(small_head_proxy, ctx):
    """A header line that never ends must not be buffered without bound until the head timeout."""
    with RawConn(small_head_proxy.port, ctx) as c:
        c.send(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
        sent = _send_until_answered(c, (b"e" * 4096 for _ in range(256)))  # up to 1 MiB, never a CRLF
        assert sent < 64 * 1024, f"the proxy took {sent} bytes of one header line"
        resp = c.read_response()
        assert resp.status == 431
        assert resp.json()["reason"] == "request_head_too_large"


# --- body size ---------------------------------------------------------------------------------------------
@pytest.fixture
def body_proxy(proxies):  # type: ignore[no-untyped-def]
    return proxies.start(limits={"max_body_size": "64k"})


def test_body_at_the_limit_is_served(body_proxy, ctx):
    upload_id = uuid.uuid4().hex
    status, body = body_proxy.get_json(ctx, f"/api/tracked-upload/{upload_id}", method="POST",
                                       body=b"b" * 65536)
    assert status == 200 and body["length"] == 65536
    assert _upload_status(body_proxy, ctx, upload_id)["completed"] is True


@pytest.mark.parametrize("expect", [False, True])
def test_content_length_over_limit_refused_before_the_body(body_proxy, ctx, expect):
    upload_id = uuid.uuid4().hex
    headers = [("Content-Length", str(65537))]
    if expect:
        headers.append(("Expect", "100-continue"))
    with RawConn(body_proxy.port, ctx) as c:
        c.send(request_bytes("POST", f"/api/tracked-upload/{upload_id}", headers))
        # not a byte of the body sent: the answer comes from the head alone (and no 100 Continue)
        assert c.readable(5), "no answer to an over-limit Content-Length"
        resp = c.read_response(skip_interim=False)
        assert resp.status == 413
        assert resp.json() == {"error": ERROR_413, "reason": "body_too_large"}
        assert resp.header("connection") == "close"
        assert c.closed_by_peer(5)
    _assert_never_completed(body_proxy, ctx, upload_id, wait=0)


def test_chunked_body_over_limit_refused_while_streaming(body_proxy, ctx):
    upload_id = uuid.uuid4().hex
    with RawConn(body_proxy.port, ctx) as c:
        c.send(request_bytes("POST", f"/api/tracked-upload/{upload_id}", [("Transfer-Encoding", "chunked")]))
        sent = _send_until_answered(c, (chunk(b"c" * 8192) for _ in range(64)))  # 512 KiB if never stopped
        assert sent < 256 * 1024
        resp = c.read_response()
        assert resp.status == 413
        assert resp.json() == {"error": ERROR_413, "reason": "body_too_large"}
        assert resp.header("connection") == "close"
        assert c.closed_by_peer(5)
    _assert_never_completed(body_proxy, ctx, upload_id)
    # the proxy goes on serving
    status, _body = body_proxy.get_json(ctx, "/api/echo")
    assert status == 200


def test_chunked_body_within_limit_is_served(body_proxy, ctx):
    upload_id = uuid.uuid4().hex
    with RawConn(body_proxy.port, ctx) as c:
        c.send(request_bytes("POST", f"/api/tracked-upload/{upload_id}", [("Transfer-Encoding", "chunked")])
               + chunk(b"c" * 32768) * 2 + b"0\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200 and resp.json()["length"] == 65536
    assert _upload_status(body_proxy, ctx, upload_id)["completed"] is True


def test_per_rule_max_body_size_overrides_the_global_one(proxies, ctx):
    p = proxies.start(
        limits={"max_body_size": "4k"},
        policy={"rules": [
            {"name": "tiny-echo", "paths": ["/api/echo"], "clients": "any", "max_body_size": "1k"},
            {"name": "big-upload", "paths": ["/api/upload"], "clients": "any", "max_body_size": "1M"},
            {"name": "all", "paths": ["/"], "clients": "any"},
        ]},
    )

    def post(path: str, size: int) -> tuple[int, dict]:
        return p.get_json(ctx, path, method="POST", body=b"z" * size)  # type: ignore[no-any-return]

    # a rule smaller than the global limit
    assert post("/api/echo", 1024)[0] == 200
    status, body = post("/api/echo", 1025)
    assert (status, body["reason"]) == (413, "body_too_large")
    # a rule larger than the global limit
    status, body = post("/api/upload", 1024 * 1024)
    assert status == 200 and body["length"] == 1024 * 1024
    assert post("/api/upload", 1024 * 1024 + 1) == (413, {"error": ERROR_413, "reason": "body_too_large"})
    # no max_body_size on the rule: the global limit
    assert post("/api/echo/other", 4096)[0] == 200
    assert post("/api/echo/other", 4097)[0] == 413


# --- slow and idle clients ---------------------------------------------------------------------------------
def test_slowloris_is_cut_off_at_head_timeout_while_others_are_served(proxies, ctx):
    p = proxies.start(limits={"head_timeout": 2})
    request = request_bytes("GET", "/api/echo", [("X-Slow", "s" * 40)])
    with RawConn(p.port, ctx) as slow:
        start = time.monotonic()
        served_meanwhile: list[int] = []
        cut_after = None
        for i, byte in enumerate(request):
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                cut_after = time.monotonic() - start
                break
            if i == 2:  # while the slow client dribbles, another client is served at once
                t0 = time.monotonic()
                status, _ = p.get_json(ctx, "/api/echo")
                served_meanwhile.append(status)
                assert time.monotonic() - t0 < 1.5
            if slow.closed_by_peer(0.5):
                cut_after = time.monotonic() - start
                break
        assert cut_after is not None, "the slow client sent its whole head and was never cut off"
        assert 1.8 <= cut_after <= 5.0, cut_after  # head_timeout is 2 s; the upper bound allows a loaded CI box
        assert served_meanwhile == [200]


def test_slow_but_timely_head_is_served(proxies, ctx):
    p = proxies.start(limits={"head_timeout": 2})
    with RawConn(p.port, ctx) as c:
        data = request_bytes("GET", "/api/echo")
        c.send(data[:10])
        time.sleep(1.0)
        c.send(data[10:])
        assert c.read_response().status == 200


def test_idle_keep_alive_connection_closed_after_idle_timeout(proxies, ctx):
    p = proxies.start(limits={"idle_timeout": 1})
    with RawConn(p.port, ctx) as c:
        c.send(request_bytes("GET", "/api/echo"))
        assert c.read_response().status == 200
        # used again inside the idle window: still open, and the window restarts
        time.sleep(0.6)
        c.send(request_bytes("GET", "/api/echo"))
        assert c.read_response().status == 200
        done = time.monotonic()
        assert not c.closed_by_peer(0.6)
        assert c.closed_by_peer(3.0)
        assert 0.9 <= time.monotonic() - done <= 3.0


# --- connection cap ----------------------------------------------------------------------------------------
def test_max_connections_queues_the_next_connection_until_one_closes(proxies, ctx):
    p = proxies.start(limits={"max_connections": 2})
    first = RawConn(p.port, ctx)
    second = RawConn(p.port, ctx)
    try:
        for c in (first, second):  # both served
            c.send(request_bytes("GET", "/api/echo"))
            assert c.read_response().status == 200

        result: dict[str, object] = {}

        def third_client() -> None:
            try:
                conn = http.client.HTTPSConnection("localhost", p.port, context=ctx, timeout=20)
                conn.request("GET", "/api/echo?who=third")
                resp = conn.getresponse()
                result["status"] = resp.status
                result["query"] = json.loads(resp.read())["query_string"]
                result["at"] = time.monotonic()
                conn.close()
            except Exception as exc:
                result["error"] = exc

        t = threading.Thread(target=third_client, daemon=True)
        t.start()
        t.join(1.5)
        assert t.is_alive() and not result, f"the third connection was served over the cap: {result}"
        # the first two are still fully usable meanwhile
        second.send(request_bytes("GET", "/api/echo"))
        assert second.read_response().status == 200

        closed_at = time.monotonic()
        first.close()
        t.join(10)
        assert result.get("status") == 200, result
        assert result["query"] == "who=third"
        assert closed_at <= result["at"] <= closed_at + 3  # type: ignore[operator]
    finally:
        first.close()
        second.close()


def test_a_socket_in_the_handshake_does_not_hold_a_connection_slot(proxies, ctx):
    """max_connections counts established connections; handshakes have their own budget
    (test_handshake_budget.py), so an idle TCP socket cannot keep a device out."""
    p = proxies.start(limits={"max_connections": 1})
    idle = socket.create_connection(("127.0.0.1", p.port))  # TCP only: sits in the handshake
    try:
        time.sleep(0.3)
        started = time.monotonic()
        with RawConn(p.port, ctx) as c:
            c.send(request_bytes("GET", "/api/echo"))
            assert c.read_response().status == 200
        assert time.monotonic() - started < 1.0
    finally:
        idle.close()


def test_a_body_that_stalls_gets_408_and_never_reaches_django_as_complete(proxies, ctx, upstream):
    from tests.hardening.wire import django_saw, new_marker

    p = proxies.start(limits={"body_timeout": 1})
    marker = new_marker("stall")
    with RawConn(p.port, ctx) as c:
        c.send(f"POST /api/probe/{marker} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".encode()
               + b"x" * 10)
        started = time.monotonic()
        resp = c.read_response()
        assert (resp.status, resp.json()) == (408, {"error": "request timeout", "reason": "client_body_timeout"})
        assert 0.9 <= time.monotonic() - started < 4
        assert resp.header("connection") == "close"
        assert c.closed_by_peer(3)
    assert django_saw(upstream, marker) == []  # the upstream request was reset, never completed
