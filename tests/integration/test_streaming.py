"""Streaming: bodies pass through the proxy in pieces, never whole, in both directions.

The 1 GiB transfers are generated and hashed on the fly on the client side too (the
test never holds a body), and the proxy's resident memory is sampled during the
transfer: it must stay flat, which it cannot if anything buffers the body.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
from collections.abc import Iterator

import pytest

from mtls_proxy.demo_app.content import pattern_chunks, pattern_sha256
from tests.support.rawhttp import RawConn, chunk, request_bytes

pytestmark = pytest.mark.timeout(180)

GIB = 1 << 30
MIB = 1 << 20
RSS_GROWTH_LIMIT_KIB = 64 * 1024


@pytest.fixture
def ctx(pki) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return pki.client_context(pki.client("device-stream"))


class RssSampler:
    """Samples the proxy's VmRSS every 50 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, proxy) -> None:  # type: ignore[no-untyped-def]
        self.proxy = proxy
        self.baseline = proxy.rss_kib()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                rss = self.proxy.rss_kib()
            except (OSError, RuntimeError):
                return
            self.samples += 1
            self.peak = max(self.peak, rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_kib(self) -> int:
        return self.peak - self.baseline


def _warm_up(proxy, ctx) -> None:  # type: ignore[no-untyped-def]
    """Run both directions once so that first-use allocations are in the baseline."""
    for _ in range(2):
        status, body = proxy.get_json(ctx, "/api/upload", method="POST", body=b"w" * (4 * MIB))
        assert status == 200 and body["length"] == 4 * MIB
        status, _, data = proxy.request(ctx, "GET", "/api/download?size=8388608&seed=warm")
        assert status == 200 and len(data) == 8 * MIB


@pytest.mark.slow
def test_1gib_upload_streams_with_flat_memory(proxies, ctx):
    proxy = proxies.start(limits={"max_body_size": "2G", "body_timeout": 120})
    _warm_up(proxy, ctx)
    digest = hashlib.sha256()
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for piece in pattern_chunks(GIB, "up", chunk=MIB):
            digest.update(piece)
            sent += len(piece)
            yield piece

    conn = proxy.connection(ctx, timeout=120)
    try:
        with RssSampler(proxy) as rss:
            conn.request("POST", "/api/upload", body=body(), headers={"Content-Length": str(GIB)})
            resp = conn.getresponse()
            result = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert sent == GIB
    assert result == {"sha256": digest.hexdigest(), "length": GIB}
    assert rss.samples > 20
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, f"proxy RSS grew {rss.growth_kib} KiB during the upload"


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["/api/download", "/api/download-chunked"])
def test_1gib_download_streams_with_flat_memory(proxy, ctx, endpoint):
    _warm_up(proxy, ctx)
    expected = pattern_sha256(GIB, "down")
    digest = hashlib.sha256()
    received = 0
    conn = proxy.connection(ctx, timeout=120)
    try:
        with RssSampler(proxy) as rss:
            conn.request("GET", f"{endpoint}?size={GIB}&seed=down")
            resp = conn.getresponse()
            assert resp.status == 200
            if endpoint == "/api/download":
                assert resp.getheader("Content-Length") == str(GIB)
            else:
                assert resp.getheader("Transfer-Encoding") == "chunked"
            while piece := resp.read(MIB):
                digest.update(piece)
                received += len(piece)
    finally:
        conn.close()
    assert received == GIB
    assert digest.hexdigest() == expected
    assert rss.samples > 20
    assert rss.growth_kib < RSS_GROWTH_LIMIT_KIB, f"proxy RSS grew {rss.growth_kib} KiB during the download"


def test_chunked_request_body_arrives_whole(proxy, ctx):
    pieces = [b"a", b"bb" * 3, b"c" * 65536, b"d" * 3, b"e" * 300_000, b"f"]
    body = b"".join(pieces)
    framed = b"".join(chunk(p, b";ext=1" if i == 1 else b"") for i, p in enumerate(pieces))
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("POST", "/api/echo", [("Transfer-Encoding", "chunked")]))
        for i in range(0, len(framed), 4096):  # arbitrary split points, unrelated to chunk boundaries
            c.send(framed[i : i + 4096])
        c.send(b"0\r\nX-Trailer: t\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200
        echo = resp.json()
        assert echo["body_length"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert echo["headers"].get("HTTP_TRANSFER_ENCODING") == "chunked"
        assert "CONTENT_LENGTH" not in echo["headers"] or echo["headers"]["CONTENT_LENGTH"] == ""
        assert "HTTP_X_TRAILER" not in echo["headers"]  # trailers are dropped, never turned into headers
        # the connection stays usable after a chunked request
        c.send(request_bytes("POST", "/api/echo", [("Transfer-Encoding", "chunked")]) + chunk(b"xyz") + b"0\r\n\r\n")
        assert c.read_response().json()["body_length"] == 3


def test_chunked_request_body_via_http_client(proxy, ctx):
    pieces = [bytes([i]) * (i * 1000 + 1) for i in range(40)]
    conn = proxy.connection(ctx)
    try:
        conn.request("PUT", "/api/upload", body=iter(pieces), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        result = json.loads(resp.read())
    finally:
        conn.close()
    body = b"".join(pieces)
    assert resp.status == 200
    assert result == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}


def test_empty_chunked_request_body(proxy, ctx):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("POST", "/api/echo", [("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n")
        echo = c.read_response().json()
        assert echo["body_length"] == 0
        assert echo["body_sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("size", [0, 1, 65535, 3 * MIB + 17])
def test_chunked_response_arrives_whole(proxy, ctx, size):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", f"/api/download-chunked?size={size}&seed=ch{size}"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert resp.complete
        assert len(resp.body) == size
        assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size, f"ch{size}")
        # keep-alive after a chunked response
        c.send(request_bytes("GET", "/api/download?size=10&seed=x"))
        after = c.read_response()
        assert after.status == 200 and after.body == next(pattern_chunks(10, "x"))


def test_content_length_response_keeps_its_length(proxy, ctx):
    size = 5 * MIB + 3
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", f"/api/download?size={size}&seed=cl"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("content-length") == str(size)
        assert resp.header("transfer-encoding") is None
        assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size, "cl")


def test_large_upload_and_download_share_one_connection(proxy, ctx):
    """A 16 MiB upload then download on one keep-alive connection, with http.client."""
    size = 16 * MIB
    conn = proxy.connection(ctx)
    try:
        conn.request("POST", "/api/upload", body=pattern_chunks(size, "both", chunk=MIB),
                     headers={"Content-Length": str(size)})
        resp = conn.getresponse()
        assert json.loads(resp.read()) == {"sha256": pattern_sha256(size, "both"), "length": size}
        conn.request("GET", f"/api/download?size={size}&seed=both")
        resp = conn.getresponse()
        digest = hashlib.sha256()
        while piece := resp.read(MIB):
            digest.update(piece)
        assert digest.hexdigest() == pattern_sha256(size, "both")
    finally:
        conn.close()
