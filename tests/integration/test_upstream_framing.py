"""A misbehaving upstream, a client that stops reading, and Host hygiene, through the real proxy.

The misbehaving upstream is a real HTTP server on loopback (a thread with a listening socket)
that answers each path with exact bytes: surplus bytes after a complete response, transfer
codings other than chunked, a 101 nobody asked for. What the proxy must do: never let surplus
bytes answer a later request (of another client) on a pooled connection, and refuse what it
cannot forward faithfully with a 502 and a reason.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from tests.hardening.wire import converse, django_saw, new_marker
from tests.support.rawhttp import PeerClosed, RawConn, request_bytes

pytestmark = pytest.mark.timeout(60)

ANSWERS: dict[bytes, bytes] = {
    b"/surplus": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                 b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    b"/normal": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nnormal",
    b"/te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi",
    b"/unexpected-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
}


class ScriptedUpstream:
    """An HTTP/1.1 server that answers each request path with fixed bytes and counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            conn.settimeout(10)
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1]
                    conn.sendall(ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def scripted() -> Any:
    up = ScriptedUpstream()
    yield up
    up.close()


@pytest.fixture
def ctx(pki):  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client("device-framing"))


def test_surplus_bytes_after_a_response_never_answer_the_next_request(proxies, scripted, pki, ctx):
    proxy = proxies.start(upstream=f"http://127.0.0.1:{scripted.port}")
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/surplus"))
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"ok")
    other = pki.client_context(pki.client("device-framing-other"))
    with RawConn(proxy.port, other) as c:
        c.send(request_bytes("GET", "/normal"))
        resp = c.read_response()
        assert (resp.status, resp.body) == (200, b"normal")  # not "forged"
    assert scripted.connections == 2  # the out-of-step connection was closed, not pooled


@pytest.mark.parametrize("path", ["/te-gzip-chunked", "/te-gzip"])
def test_upstream_transfer_coding_other_than_chunked_is_502(proxies, scripted, ctx, path):
    proxy = proxies.start(upstream=f"http://127.0.0.1:{scripted.port}")
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", path))
        resp = c.read_response()
        assert (resp.status, resp.json()) == (502, {"error": "bad gateway", "reason": "upstream_bad_transfer_coding"})


def test_101_to_a_request_that_asked_for_no_upgrade_is_502(proxies, scripted, ctx):
    proxy = proxies.start(upstream=f"http://127.0.0.1:{scripted.port}")
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/unexpected-101"))
        resp = c.read_response()
        assert (resp.status, resp.json()) == (502, {"error": "bad gateway", "reason": "upstream_bad_response"})
    assert "Traceback" not in "\n".join(proxy.logs)


def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(proxies, ctx):
    proxy = proxies.start(limits={"send_timeout": "1s"})
    with RawConn(proxy.port, ctx, timeout=20) as c:
        c.send(request_bytes("GET", "/api/download?size=200000000&seed=stall"))
        started = time.monotonic()
        proxy.wait_for_log(r"send timeout: client 127\.0\.0\.1 took no bytes for 1s", 15)
        elapsed = time.monotonic() - started
        assert elapsed < 10, elapsed
        with pytest.raises((PeerClosed, ConnectionError, OSError)):
            while True:  # what was buffered drains, then the connection is gone
                c.read_exact(1 << 20)
    # the proxy still serves everyone else
    status, _ = proxy.get_json(ctx, "/api/echo")
    assert status == 200


@pytest.mark.parametrize("host", [
    "localhost:443@evil.example", "localhost:1, evil.example", "localhost:", "localhost:http",
    "localhost:99999", "[::1", "local host", "localhost\t",
])
def test_malformed_host_is_refused_before_django(proxies, pki, upstream, host):
    proxy = proxies.start()
    marker = new_marker("host")
    raw = f"GET /api/probe/{marker} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    conv = converse(proxy.port, pki.client_context(pki.client("device-host")), raw)
    if conv.responses:
        assert conv.statuses == [400]
        assert conv.responses[0].reason in ("bad_host", "bad_header", "bad_request"), conv.responses[0].reason
    assert conv.closed
    assert django_saw(upstream, marker) == []
