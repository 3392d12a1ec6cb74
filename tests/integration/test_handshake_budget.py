"""Sockets that never finish (or never start) a TLS handshake cannot take the devices' slots.

Handshakes have their own budget (``limits.max_handshakes``, per client address
``limits.max_handshakes_per_address``), apart from ``limits.max_connections``, and a socket must
send its first TLS bytes within ``limits.first_byte_timeout``. The attacker's sockets come from
127.0.0.1, the device from 127.0.0.2 (both loopback).
"""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.timeout(120)


def _idle_sockets(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        out.append(s)
    return out


def _device_get(proxy: Any, ctx: Any) -> float:
    """One GET from 127.0.0.2 on a new TLS connection; returns the seconds it took."""
    started = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10, source_address=("127.0.0.2", 0))
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        resp = http.client.HTTPResponse(tls)
        resp.begin()
        assert resp.status == 200
        resp.read()
    return time.monotonic() - started


def _metric(proxy: Any, name: str) -> str:
    cfg = yaml.safe_load(proxy.config_path.read_text())
    host, port = cfg["admin"]["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_a_thousand_idle_sockets_do_not_delay_a_device(proxies, pki):
    proxy = proxies.start(limits={"max_connections": 20, "max_handshakes": 256, "max_handshakes_per_address": 32,
                                  "first_byte_timeout": "2s"})
    ctx = pki.client_context(pki.client("budget-device"))
    crowd = _idle_sockets(proxy.port, 1000)
    try:
        time.sleep(0.5)  # all accepted: 32 hold handshake slots, the rest were closed at once
        took = [_device_get(proxy, ctx) for _ in range(5)]
        assert max(took) < 1.0, took
        rejected = _metric(proxy, "mtls_proxy_connections_refused_before_handshake_total")
        count = float(rejected.split()[-1]) if rejected else 0.0
        assert count >= 900, rejected
        assert 'reason="handshakes_per_address"' in rejected
        proxy.wait_for_log(r"connection refused before the handshake: client=127\.0\.0\.1 "
                           r"reason=handshakes_per_address", 5)
        # the 32 holding a slot are cut at first_byte_timeout (counted; their log lines are rate-limited)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cut = _metric(proxy, 'mtls_proxy_tls_handshake_failures_total{reason="first_byte_timeout"}')
            if cut.endswith(" 32.0"):
                break
            time.sleep(0.2)
        assert cut.endswith(" 32.0"), cut
        assert "mtls_proxy_tls_handshakes_in_progress 0.0" in _metric(proxy, "mtls_proxy_tls_handshakes_in_progress")
    finally:
        for s in crowd:
            s.close()


def test_the_global_handshake_budget_refuses_past_it(proxies, pki):
    proxy = proxies.start(limits={"max_handshakes": 10, "max_handshakes_per_address": 64, "first_byte_timeout": "5s"})
    crowd = _idle_sockets(proxy.port, 30)
    try:
        proxy.wait_for_log(r"connection refused before the handshake: client=127\.0\.0\.1 reason=handshake_budget", 5)
        assert "mtls_proxy_tls_handshakes_in_progress 10.0" in _metric(proxy, "mtls_proxy_tls_handshakes_in_progress")
    finally:
        for s in crowd:
            s.close()
    # once they are gone, devices handshake again
    status, _ = proxy.get_json(pki.client_context(pki.client("budget-after")), "/api/echo")
    assert status == 200
