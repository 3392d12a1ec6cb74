"""Upstream failures: unreachable, too slow, killed mid-response, and a client leaving mid-upload.

The rule behind all of them: the proxy answers with a JSON error when it still can, and
when a body is already on its way it breaks the connection rather than let either side
take a cut-short body as complete.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest

from tests.support.proxy import free_port
from tests.support.rawhttp import RawConn, chunk, request_bytes
from tests.support.upstream import start_demo_upstream

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def ctx(pki) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client("device-upfail"))


def _dead_unix_socket(tmp_path: Path) -> str:
    """A socket file with nobody listening (connect: ECONNREFUSED), on a path short enough for sun_path."""
    path = tmp_path / "dead.sock"
    if len(str(path)) > 100:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="mtls-dead-", dir="/tmp")) / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    return str(path)


@pytest.mark.parametrize("kind", ["unix_no_listener", "unix_missing", "tcp_closed_port"])
def test_unreachable_upstream_gives_502_upstream_connect_failed(proxies, ctx, tmp_path, kind):
    if kind == "unix_no_listener":
        url = "unix:" + _dead_unix_socket(tmp_path)
    elif kind == "unix_missing":
        url = f"unix:{tmp_path}/no-such.sock"
    else:
        url = f"http://127.0.0.1:{free_port()}"
    p = proxies.start(upstream=url)
    with RawConn(p.port, ctx) as c:
        for _ in range(2):  # the connection stays usable: each request gets its own answer
            c.send(request_bytes("GET", "/api/echo"))
            resp = c.read_response()
            assert resp.status == 502
            assert resp.header("content-type") == "application/json"
            assert resp.json() == {"error": "bad gateway", "reason": "upstream_connect_failed"}
            assert resp.header("connection") is None


def test_an_upload_slower_than_the_upstream_read_timeout_is_not_cut(proxies, ctx):
    """The read timeout counts from the end of the request: a phone uploading slowly is not a slow upstream."""
    import hashlib

    p = proxies.start(limits={"upstream_read_timeout": 1})
    chunks = [bytes([i]) * 1000 for i in range(6)]
    with RawConn(p.port, ctx) as c:
        c.send(b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6000\r\n\r\n")
        for piece in chunks:  # 3 s in all, 3x the read timeout
            c.send(piece)
            time.sleep(0.5)
        resp = c.read_response()
        assert resp.status == 200
        assert resp.json() == {"sha256": hashlib.sha256(b"".join(chunks)).hexdigest(), "length": 6000}


def test_slow_upstream_gives_504_upstream_timeout(proxies, ctx):
    p = proxies.start(limits={"upstream_read_timeout": 1})
    with RawConn(p.port, ctx) as c:
        started = time.monotonic()
        c.send(request_bytes("GET", "/api/slow?seconds=5"))
        resp = c.read_response()
        elapsed = time.monotonic() - started
        assert resp.status == 504
        assert resp.json() == {"error": "gateway timeout", "reason": "upstream_timeout"}
        assert 0.9 <= elapsed < 4.0, elapsed  # upstream_read_timeout is 1 s, the view sleeps 5 s
        # an upstream answering within the timeout on the same client connection is served
        c.send(request_bytes("GET", "/api/slow?seconds=0.2"))
        resp = c.read_response()
        assert resp.status == 200 and resp.json() == {"slept": 0.2}


def test_slow_streaming_response_is_not_cut_while_data_flows(proxies, ctx):
    """upstream_read_timeout is about silence, not total time: a 2.5 s stream at 1 s timeout passes."""
    p = proxies.start(limits={"upstream_read_timeout": 1})
    with RawConn(p.port, ctx) as c:
        c.send(request_bytes("GET", "/api/download-chunked?size=100000&rate=40000"))
        resp = c.read_response()
        assert resp.status == 200 and resp.complete and len(resp.body) == 100000


@pytest.mark.parametrize("endpoint", ["/api/download", "/api/download-chunked"])
def test_upstream_killed_mid_response_never_looks_complete(proxies, ctx, tmp_path, pki, endpoint):
    own = start_demo_upstream(tmp_path / "own-upstream", signing_key_file=pki.signing_key)
    try:
        p = proxies.start(upstream=own.url)
        size = 64 * 1024 * 1024
        with RawConn(p.port, ctx, timeout=20) as c:
            c.send(request_bytes("GET", f"{endpoint}?size={size}&rate=2000000"))
            head = c.read_head()
            assert head.status == 200
            if endpoint == "/api/download":
                assert head.header("content-length") == str(size)
            else:
                assert head.header("transfer-encoding") == "chunked"
            # some of the body has flowed, then the upstream dies
            deadline = time.monotonic() + 10
            while len(c.buf) < 300_000 and time.monotonic() < deadline:
                c._fill()
            assert len(c.buf) >= 300_000
            own.process.kill()  # SIGKILL: no graceful end of anything
            own.process.wait(10)
            if endpoint == "/api/download":
                resp = head
                got = bytearray(c.buf)
                c.buf.clear()
                cut = False
                try:
                    while len(got) < size:
                        c._fill()
                        got += c.buf
                        c.buf.clear()
                except Exception:
                    cut = True
                assert cut, "the connection did not break"
                assert len(got) < size
            else:
                c.read_chunked(head, tolerate_cut=True)
                resp = head
                assert resp.complete is False, "a final chunk was sent for a body the upstream never finished"
                assert len(resp.body) < size
        assert p.process.poll() is None  # the proxy lives on
        status, body = p.get_json(ctx, "/api/echo")  # and says the upstream is gone
        assert (status, body) == (502, {"error": "bad gateway", "reason": "upstream_connect_failed"})
    finally:
        own.stop()


def _assert_upload_never_completes(proxy, ctx, upload_id: str, wait: float = 1.5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + wait
    while True:
        status, body = proxy.get_json(ctx, f"/api/tracked-upload/{upload_id}/status")
        assert (status, body) == (200, {"id": upload_id, "completed": False})
        if time.monotonic() >= deadline:
            return
        time.sleep(0.25)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_gone_mid_upload_aborts_the_upstream_request(proxy, ctx, framing):
    declared = 8 * 1024 * 1024
    upload_id = f"gone-{framing}-{uuid.uuid4().hex}"
    c = RawConn(proxy.port, ctx)
    if framing == "chunked":
        c.send(request_bytes("POST", f"/api/tracked-upload/{upload_id}", [("Transfer-Encoding", "chunked")]))
        for _ in range(64):
            c.send(chunk(b"u" * 16384))
    else:
        c.send(request_bytes("POST", f"/api/tracked-upload/{upload_id}", [("Content-Length", str(declared))]))
        c.send(b"u" * (1024 * 1024))
    time.sleep(0.3)  # the proxy has connected upstream and forwarded what it got
    c.close()  # gone, mid-body

    # the proxy saw it and says so in its access log
    proxy.wait_for_log(rf"path=/api/tracked-upload/{upload_id} status=499 .*reason=client_closed", 5)
    # the proxy keeps serving others meanwhile
    status, body = proxy.get_json(ctx, "/api/echo?still=up")
    assert status == 200 and body["query_string"] == "still=up"
    # and Django never took the cut body as a complete request
    _assert_upload_never_completes(proxy, ctx, upload_id)

    # control: the same upload completed is recorded, so the check above can see a completion
    done_id = f"done-{framing}-{uuid.uuid4().hex}"
    status, body = proxy.get_json(ctx, f"/api/tracked-upload/{done_id}", method="POST", body=b"u" * 1024)
    assert status == 200
    status, body = proxy.get_json(ctx, f"/api/tracked-upload/{done_id}/status")
    assert body["completed"] is True and body["length"] == 1024


def test_client_breaking_chunked_framing_mid_upload_aborts_the_upstream_request(proxy, ctx):
    upload_id = f"badframe-{uuid.uuid4().hex}"
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("POST", f"/api/tracked-upload/{upload_id}", [("Transfer-Encoding", "chunked")]))
        c.send(chunk(b"v" * 65536) * 4)
        time.sleep(0.2)
        c.send(b"zz\r\nnot a chunk\r\n")  # invalid chunk size
        resp = c.read_response()
        assert resp.status == 400
        assert resp.json() == {"error": "bad request", "reason": "bad_chunk"}
        assert c.closed_by_peer(5)
    _assert_upload_never_completes(proxy, ctx, upload_id)
