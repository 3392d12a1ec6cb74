"""Every request judged by the current rules at forwarding time, on every kind of connection.

Real proxy process, real Django (uvicorn + Channels), real TLS clients. What is tried is what an
attacker holding one valid device certificate would try: keep a WebSocket tunnel or a keep-alive
connection open across a revoking reload, keep using a certificate (or a CRL) past its expiry on an
open or resumed connection, queue requests behind a slow one before a revoking reload, and flood
one connection with pipelined requests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import socket
import ssl
import time
from typing import Any

import aiohttp
import pytest

from mtls_proxy.pki import x509 as X
from tests.hardening.wire import django_saw, new_marker
from tests.support.rawhttp import RawConn, request_bytes

pytestmark = pytest.mark.timeout(90)

ECHO = "/api/echo"


def reload_with(proxies: Any, proxy: Any, **overrides: Any) -> None:
    cfg = proxies.config(**overrides)
    cfg["listen"] = f"127.0.0.1:{proxy.port}"
    proxy.write_config(cfg)
    proxy.reload()


def get(conn: RawConn, path: str, port: int) -> tuple[int, Any]:
    conn.send(request_bytes("GET", path, host=f"localhost:{port}"))
    resp = conn.read_response()
    return resp.status, resp.json()


# --- WebSocket tunnels ---------------------------------------------------------------------------------------

async def _ws_closed_within(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> float:
    start = time.monotonic()
    while True:
        msg = await ws.receive(timeout=seconds)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR):
            return time.monotonic() - start


@pytest.mark.parametrize("how", ["revoked", "denylisted"])
async def test_tunnel_of_a_device_refused_by_reload_is_closed_within_a_second(proxies, pki, how):
    victim = pki.client(f"ws-victim-{how}")
    bystander = pki.client(f"ws-bystander-{how}")
    proxy = proxies.start(tls={"crl": str(pki.crl(f"ws-{how}-clean.pem", []))})
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"wss://localhost:{proxy.port}/ws/echo", ssl=pki.client_context(victim)) as ws, \
            session.ws_connect(f"wss://localhost:{proxy.port}/ws/echo", ssl=pki.client_context(bystander)) as ok:
        assert (await ws.receive_json(timeout=10))["hello"] is True
        assert (await ok.receive_json(timeout=10))["hello"] is True
        await ws.send_str("before")
        assert (await ws.receive(timeout=10)).data == "before"
        if how == "revoked":
            overrides: dict[str, Any] = {"tls": {"crl": str(pki.crl(f"ws-{how}-crl.pem", [victim]))}}
        else:
            overrides = {"tls": {"crl": str(pki.crl(f"ws-{how}-clean.pem", []))},
                         "policy": {"deny": {"serials": [victim.serial_hex]},
                                    "rules": [{"name": "all", "paths": ["/"], "clients": "any"}]}}
        await asyncio.get_running_loop().run_in_executor(None, lambda: reload_with(proxies, proxy, **overrides))
        elapsed = await _ws_closed_within(ws, 5)
        assert elapsed < 1.0, elapsed
        proxy.wait_for_log(rf"tunnel closed: cn=ws-victim-{how} cause=refused:{how}", 5)
        # the other device's tunnel is undisturbed
        await ok.send_str("still here")
        assert (await ok.receive(timeout=10)).data == "still here"


async def test_idle_tunnel_is_closed_after_its_timeout_and_busy_one_at_its_lifetime(proxies, pki):
    client = pki.client("ws-idle")
    proxy = proxies.start(limits={"tunnel_idle_timeout": "1s", "tunnel_max_lifetime": "3s"})
    ctx = pki.client_context(client)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"wss://localhost:{proxy.port}/ws/echo", ssl=ctx, autoping=False,
                                      heartbeat=None) as ws:
            assert (await ws.receive_json(timeout=10))["hello"] is True
            start = time.monotonic()
            await _ws_closed_within(ws, 5)
            assert 0.9 <= time.monotonic() - start < 2.5
        proxy.wait_for_log(r"tunnel closed: cn=ws-idle cause=idle_timeout", 5)
        async with session.ws_connect(f"wss://localhost:{proxy.port}/ws/echo", ssl=ctx, autoping=False,
                                      heartbeat=None) as ws:
            assert (await ws.receive_json(timeout=10))["hello"] is True
            start = time.monotonic()
            closed = False
            while time.monotonic() - start < 6:  # traffic every 0.3 s: never idle, cut at 3 s all the same
                try:
                    await ws.send_str("x")
                except (ConnectionResetError, aiohttp.ClientConnectionError):
                    closed = True
                    break
                msg = await ws.receive(timeout=2)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    closed = True
                    break
                await asyncio.sleep(0.3)
            assert closed and 2.5 <= time.monotonic() - start < 4.5
        proxy.wait_for_log(r"tunnel closed: cn=ws-idle cause=max_lifetime", 5)
    body = proxy.request(ctx, "GET", "/__nothing__")  # the admin metrics count both causes
    del body
    metrics = _admin_metrics(proxy)
    assert 'mtls_proxy_tunnel_closes_total{cause="idle_timeout"} 1.0' in metrics
    assert 'mtls_proxy_tunnel_closes_total{cause="max_lifetime"} 1.0' in metrics


def _admin_metrics(proxy: Any) -> str:
    cfg = json.loads(json.dumps(__import__("yaml").safe_load(proxy.config_path.read_text())))
    host, port = cfg["admin"]["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


# --- time passing ---------------------------------------------------------------------------------------------

def _short_lived(pki: Any, name: str, seconds: float) -> Any:
    now = dt.datetime.now(dt.UTC)
    return pki.client(name, not_before=now - dt.timedelta(minutes=1), not_after=now + dt.timedelta(seconds=seconds))


def test_expired_certificate_is_refused_on_keep_alive_and_on_a_resumed_session(proxies, pki):
    client = _short_lived(pki, "expiring-soon", 4)
    proxy = proxies.start()
    ctx = pki.client_context(client)
    with RawConn(proxy.port, ctx) as conn:
        assert get(conn, ECHO, proxy.port)[0] == 200
        # a ticket from before the expiry
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            resp = http.client.HTTPResponse(s)
            resp.begin()
            resp.read()
            session = s.session
        time.sleep(max(0.0, client.issued.cert.not_valid_after_utc.timestamp() - time.time()) + 0.5)
        status, body = get(conn, ECHO, proxy.port)
        assert (status, body) == (403, {"error": "forbidden", "reason": "cert_expired"})
    proxy.wait_for_log(r"denied: cn=expiring-soon .* reason=cert_expired", 5)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        assert s.session_reused  # OpenSSL resumes without looking at the certificate again ...
        s.sendall(b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        resp = http.client.HTTPResponse(s)
        resp.begin()
        assert (resp.status, json.loads(resp.read())) == (403, {"error": "forbidden", "reason": "cert_expired"})


def test_expired_crl_refuses_open_connections(proxies, pki):
    client = pki.client("crl-runs-out")
    now = dt.datetime.now(dt.UTC)
    crl = pki.crl("crl-runs-out-crl.pem", [], this_update=now - dt.timedelta(minutes=1),
                  next_update=now + dt.timedelta(seconds=4))
    proxy = proxies.start(tls={"crl": str(crl)})
    with RawConn(proxy.port, pki.client_context(client)) as conn:
        assert get(conn, ECHO, proxy.port)[0] == 200
        time.sleep(max(0.0, (now + dt.timedelta(seconds=4)).timestamp() - time.time()) + 0.5)
        assert get(conn, ECHO, proxy.port) == (403, {"error": "forbidden", "reason": "crl_expired"})
    proxy.wait_for_log(r"denied: cn=crl-runs-out .* reason=crl_expired", 5)


async def test_tunnel_closes_when_its_certificate_expires(proxies, pki):
    client = _short_lived(pki, "ws-expiring", 3)
    proxy = proxies.start()
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"wss://localhost:{proxy.port}/ws/echo", ssl=pki.client_context(client)) as ws:
        assert (await ws.receive_json(timeout=10))["hello"] is True
        left = client.issued.cert.not_valid_after_utc.timestamp() - time.time()
        await _ws_closed_within(ws, left + 3)
        assert time.time() >= client.issued.cert.not_valid_after_utc.timestamp()
    proxy.wait_for_log(r"tunnel closed: cn=ws-expiring cause=refused:cert_expired", 5)


# --- the chain ---------------------------------------------------------------------------------------------------

def test_leaf_under_an_intermediate_the_root_revoked_is_refused(proxies, pki, tmp_path):
    inter = X.issue_ca({"CN": "Issuing Intermediate", "O": "Acme"}, issuer=pki.ca)
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(pki.ca.cert_pem() + inter.cert_pem())
    leaf = pki.client("under-revoked-inter", issuer=inter)
    root_crl_clean = pki.crl("root-clean.pem", [])
    inter_crl = pki.crl("inter.pem", [], issuer=inter)
    proxy = proxies.start(tls={"client_ca": str(bundle), "crl": [str(root_crl_clean), str(inter_crl)]})
    ctx = pki.client_context(leaf)
    with RawConn(proxy.port, ctx) as conn:
        assert get(conn, ECHO, proxy.port)[0] == 200
        now = dt.datetime.now(dt.UTC)
        revoking = pki.root / "root-revoking.pem"
        revoking.write_bytes(X.crl_pem(X.build_crl(pki.ca, [(inter.cert.serial_number, now)])))
        reload_with(proxies, proxy, tls={"client_ca": str(bundle), "crl": [str(revoking), str(inter_crl)]})
        assert get(conn, ECHO, proxy.port) == (403, {"error": "forbidden", "reason": "ca_revoked"})
    # a new connection: the CRL of every configured CA is there, so the whole chain is checked at the handshake
    with pytest.raises(ssl.SSLError) as refused:
        proxy.get_json(ctx, ECHO)
    assert refused.value.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    proxy.wait_for_log(r"tls handshake failed: .* reason=cert_revoked", 5)


# --- pipelining -----------------------------------------------------------------------------------------------

def test_requests_queued_before_a_revoking_reload_are_judged_when_their_turn_comes(proxies, pki, upstream):
    victim = pki.client("pipeline-victim")
    proxy = proxies.start(tls={"crl": str(pki.crl("pipeline-clean.pem", []))})
    marker = new_marker("queued")
    with RawConn(proxy.port, pki.client_context(victim), timeout=20) as conn:
        conn.send(request_bytes("GET", "/api/slow?seconds=2", host="localhost")
                  + request_bytes("GET", f"/api/probe/{marker}", host="localhost")
                  + request_bytes("GET", f"/api/probe/{marker}?again=1", host="localhost"))
        time.sleep(0.5)  # the slow one is upstream, the two probes wait in the queue
        reload_with(proxies, proxy, tls={"crl": str(pki.crl("pipeline-revoking.pem", [victim]))})
        first = conn.read_response()
        assert first.status == 200  # already forwarded before the reload: answered
        second, third = conn.read_response(), conn.read_response()
        assert (second.status, second.json()["reason"]) == (403, "revoked")
        assert (third.status, third.json()["reason"]) == (403, "revoked")
    assert django_saw(upstream, marker) == []  # neither queued request reached Django


def test_a_thousand_pipelined_requests_in_one_write_are_answered_in_order(proxies, pki):
    client = pki.client("pipeline-flood")
    proxy = proxies.start(limits={"max_pipelined": 16})
    rss_before = proxy.rss_kib()
    n = 1000
    data = b"".join(request_bytes("GET", f"{ECHO}?i={i}", host="localhost") for i in range(n))
    with RawConn(proxy.port, pki.client_context(client), timeout=60) as conn:
        conn.send(data)
        for i in range(n):
            resp = conn.read_response()
            assert resp.status == 200, (i, resp.status)
            assert resp.json()["query_string"] == f"i={i}"
        rss_after = proxy.rss_kib()
    assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)  # bounded: no queue of 1,000


def test_requests_pipelined_after_a_body_in_one_write_are_all_answered(proxies, pki):
    """The queue bound counts heads only after the body: a body followed by 100 requests, max_pipelined 4."""
    proxy = proxies.start(limits={"max_pipelined": 4})
    body = b"x" * 5000 + b"\r\n\r\n" * 50  # body bytes that look like head ends are still body
    data = (b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            + b"".join(request_bytes("GET", f"{ECHO}?i={i}", host="localhost") for i in range(100)))
    with RawConn(proxy.port, pki.client_context(pki.client("pipeline-after-body")), timeout=30) as conn:
        conn.send(data)
        first = conn.read_response()
        assert (first.status, first.json()["length"]) == (200, len(body))
        for i in range(100):
            resp = conn.read_response()
            assert (resp.status, resp.json()["query_string"]) == (200, f"i={i}")
