"""SIGTERM drain (and SIGHUP during it) against the real proxy process and the real Django upstream.

Contract: on SIGTERM the proxy stops accepting at once, closes idle keep-alive connections, lets
in-flight responses finish whole (up to ``limits.drain_timeout``), then exits 0. A response still
running at the deadline is cut off so that the client can tell (never a complete-looking body).
"""

from __future__ import annotations

import hashlib
import http.client
import signal
import socket
import ssl
import time
from typing import Any

import pytest

from mtls_proxy.demo_app.content import pattern_sha256

ECHO = "/api/echo"


def start_download(proxy: Any, ctx: ssl.SSLContext, path: str, first: int
                   ) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse, Any, int]:
    """Start a GET of ``path`` and read its first ``first`` body bytes (so it is surely in flight)."""
    conn = proxy.connection(ctx, timeout=20)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    digest = hashlib.sha256()
    got = 0
    while got < first:
        piece = resp.read1(first - got)
        assert piece, "the download ended early"
        digest.update(piece)
        got += len(piece)
    return conn, resp, digest, got


def idle_keepalive(proxy: Any, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    conn = proxy.connection(ctx, timeout=10)
    conn.request("GET", ECHO)
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    assert conn.sock is not None  # kept alive
    return conn


def assert_closed_by_server(conn: http.client.HTTPSConnection) -> None:
    """The server closed this (idle) connection: a read gets a clean EOF, not data and not a timeout."""
    assert conn.sock is not None
    conn.sock.settimeout(5)
    assert conn.sock.recv(1) == b""
    conn.close()


def assert_no_longer_accepting(port: int) -> None:
    """New TCP connections are refused. The proxy logs "draining" just before it closes its listener,
    so on a busy machine a connect may still reach the old backlog for a few ms (and is reset, never
    served): allow 1 s for the refusals to start, then they must be steady."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            break
        except ConnectionResetError:
            pass
        assert time.monotonic() < deadline, "still accepting connections 1 s after the drain started"
        time.sleep(0.01)
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_sigterm_during_download_finishes_it_whole_then_exits_0(proxies, pki):
    client = pki.client("drain-downloader")
    ctx = pki.client_context(client)
    proxy = proxies.start()
    size, rate = 600_000, 200_000  # ~3 s
    idle = idle_keepalive(proxy, ctx)
    conn, resp, digest, got = start_download(proxy, ctx, f"/api/download?size={size}&rate={rate}", 20_000)

    mark = proxy.log_count()
    proxy.terminate()
    t0 = time.monotonic()
    proxy.wait_for_log(r"draining 2 connection\(s\), up to 30s", 5, start=mark)
    assert_no_longer_accepting(proxy.port)
    assert_closed_by_server(idle)
    assert proxy.process.poll() is None  # still serving the download

    rest = resp.read()
    digest.update(rest)
    got += len(rest)
    done_at = time.monotonic()
    assert got == size
    assert digest.hexdigest() == pattern_sha256(size)
    assert done_at - t0 > 1.5  # the download really spanned the drain
    assert proxy.wait(10) == 0
    assert time.monotonic() - done_at < 2.0
    proxy.wait_for_log(r"INFO mtls_proxy stopped$", 1, start=mark)
    assert "Traceback" not in "\n".join(proxy.logs)
    assert proxy.logs[-1].endswith("INFO mtls_proxy stopped")
    conn.close()


def test_sigterm_with_only_idle_keepalive_connections_exits_promptly(proxies, pki):
    ctx = pki.client_context(pki.client("drain-idle"))
    proxy = proxies.start()
    idle = [idle_keepalive(proxy, ctx) for _ in range(3)]

    mark = proxy.log_count()
    t0 = time.monotonic()
    proxy.terminate()
    rc = proxy.wait(5)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < 2.0, elapsed
    for conn in idle:
        assert_closed_by_server(conn)
    proxy.wait_for_log(r"draining 3 connection\(s\)", 1, start=mark)
    proxy.wait_for_log(r"INFO mtls_proxy stopped$", 1, start=mark)
    assert "Traceback" not in "\n".join(proxy.logs)


@pytest.mark.parametrize("endpoint", ["download", "download-chunked"])
def test_drain_timeout_cuts_off_a_longer_download(proxies, pki, endpoint):
    """drain_timeout 1 s, a download that would take 10 s: the process exits 0 at the deadline and
    the client sees the body cut short (IncompleteRead: short of Content-Length, or no last chunk)."""
    ctx = pki.client_context(pki.client("drain-cut"))
    proxy = proxies.start(limits={"drain_timeout": "1s"})
    size, rate = 2_000_000, 200_000
    conn, resp, _, got = start_download(proxy, ctx, f"/api/{endpoint}?size={size}&rate={rate}", 20_000)
    if endpoint == "download":
        assert resp.getheader("Content-Length") == str(size)
    else:
        assert resp.getheader("Transfer-Encoding") == "chunked"

    mark = proxy.log_count()
    proxy.terminate()
    t0 = time.monotonic()
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    cut_at = time.monotonic() - t0
    got += len(cut.value.partial)
    assert 20_000 < got < size
    assert proxy.wait(5) == 0
    exited_at = time.monotonic() - t0
    assert 0.9 < cut_at < 2.0, cut_at  # cut at the deadline, not before it
    assert exited_at < 2.5, exited_at
    proxy.wait_for_log(r"draining 1 connection\(s\), up to 1s", 1, start=mark)
    proxy.wait_for_log(r"INFO mtls_proxy stopped$", 1, start=mark)
    assert "Traceback" not in "\n".join(proxy.logs)
    conn.close()


def test_sighup_during_drain_is_ignored_and_logged(proxies, pki):
    ctx = pki.client_context(pki.client("drain-sighup"))
    proxy = proxies.start()
    conn = proxy.connection(ctx, timeout=20)
    conn.request("GET", "/api/slow?seconds=1.5")
    proxy.wait_for_log(r"listening on")
    time.sleep(0.2)  # the request is in flight at the upstream

    mark = proxy.log_count()
    proxy.terminate()
    proxy.wait_for_log(r"draining 1 connection\(s\)", 5, start=mark)
    # a config change that a reload would apply (deny everything): must not be applied now
    cfg = proxies.config(policy={"rules": [{"name": "nothing", "paths": ["/"], "action": "deny"}]})
    cfg["listen"] = f"127.0.0.1:{proxy.port}"
    proxy.write_config(cfg)
    for _ in range(2):
        hup = proxy.log_count()
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_for_log(r"INFO mtls_proxy reload ignored: shutting down", 5, start=hup)

    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == b'{"slept": 1.5}'
    assert resp.getheader("Connection") == "close"
    assert proxy.wait(10) == 0
    logs = proxy.logs[mark:]
    assert sum("reload ignored: shutting down" in line for line in logs) == 2
    assert not any("reloaded: generation" in line or "reload failed" in line for line in logs)
    assert "Traceback" not in "\n".join(proxy.logs)
    assert proxy.logs[-1].endswith("INFO mtls_proxy stopped")
    conn.close()


def test_sighup_storm_through_the_whole_shutdown_never_kills_the_process(proxies, pki):
    """SIGHUP every 2 ms from the start of the drain until the process is gone (a supervisor
    forwarding reloads, or log rotation, during a restart). Once the event loop closes it restores
    SIGHUP's default action (terminate), so without care the last ones end the process with -SIGHUP
    instead of exit 0."""
    ctx = pki.client_context(pki.client("drain-storm"))
    for _ in range(3):
        proxy = proxies.start()
        conn = proxy.connection(ctx, timeout=20)
        conn.request("GET", "/api/slow?seconds=0.3")
        time.sleep(0.1)
        mark = proxy.log_count()
        proxy.terminate()
        proxy.wait_for_log(r"draining 1 connection", 5, start=mark)
        sent = 0
        while proxy.process.poll() is None:
            proxy.process.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.002)
        assert proxy.wait(5) == 0, f"exit status after {sent} SIGHUPs"
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"slept": 0.3}')
        assert any("reload ignored: shutting down" in line for line in proxy.logs)
        assert not any("reloaded: generation" in line for line in proxy.logs)
        assert proxy.logs[-1].endswith("INFO mtls_proxy stopped")
        conn.close()
