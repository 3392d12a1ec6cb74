"""WebSocket through the proxy to Django Channels (/ws/echo), with aiohttp as the real client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl

import aiohttp
import pytest

from tests.support.rawhttp import RawConn, request_bytes

pytestmark = pytest.mark.timeout(60)

WS_KEY = base64.b64encode(b"raw-test-key-16b").decode()
WS_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", WS_KEY),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.fixture
def client(pki):  # type: ignore[no-untyped-def]
    return pki.client("device-ws", subject={"CN": "device-ws", "O": "Acme", "OU": "Mobile"})


@pytest.fixture
def ctx(pki, client) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return pki.client_context(client)


async def test_websocket_echo_text_and_binary_with_identity(proxy, ctx, client):
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"wss://localhost:{proxy.port}/ws/echo", ssl=ctx, headers={"X-Client-Cert-Subject": "CN=forged"}
    ) as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["hello"] is True
        # Django (Channels) verified the identity the proxy signed
        assert hello["client_cert"]["common_name"] == "device-ws"
        assert hello["client_cert"]["serial"] == client.serial_hex
        headers = hello["headers"]
        assert headers["x-client-cert-subject"] != "CN=forged"  # the client's copy was stripped, ours set
        assert "CN%3Ddevice-ws" in headers["x-client-cert-subject"]
        assert headers["x-client-cert-signature"].startswith("v2;k=")
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["upgrade"].lower() == "websocket"

        for text in ("hello", "h\u00e9llo \u2603", "x" * 70000):  # 70000: a 64-bit length frame
            await ws.send_str(text)
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, text)
        for data in (b"\x00\xff\x00", os.urandom(1 << 20)):
            await ws.send_bytes(data)
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY
            assert msg.data == data
        # several messages in flight at once come back in order
        for i in range(20):
            await ws.send_str(f"m{i}")
        got = [(await ws.receive(timeout=10)).data for _ in range(20)]
        assert got == [f"m{i}" for i in range(20)]
        await ws.close()
        assert ws.close_code == 1000


async def test_two_websockets_at_once_stay_separate(proxy, ctx):
    url = f"wss://localhost:{proxy.port}/ws/echo"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, ssl=ctx) as a, \
            session.ws_connect(url, ssl=ctx) as b:
        await a.receive_json(timeout=10)
        await b.receive_json(timeout=10)
        await asyncio.gather(a.send_str("to-a"), b.send_bytes(b"to-b"))
        assert (await a.receive(timeout=10)).data == "to-a"
        assert (await b.receive(timeout=10)).data == b"to-b"


async def test_websocket_to_denied_path_gets_403(proxies, ctx):
    p = proxies.start(policy={"rules": [
        {"name": "no-ws", "paths": ["/ws/"], "action": "deny"},
        {"name": "all", "paths": ["/"], "clients": "any"},
    ]})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"wss://localhost:{p.port}/ws/echo", ssl=ctx)
        assert info.value.status == 403
        # the same client, same proxy: plain HTTP elsewhere is allowed, so the 403 is the rule's
        async with session.get(f"https://localhost:{p.port}/api/echo", ssl=ctx) as resp:
            assert resp.status == 200


def test_websocket_denial_is_the_json_refusal_and_closes(proxies, ctx):
    p = proxies.start(policy={"rules": [
        {"name": "no-ws", "paths": ["/ws/"], "action": "deny"},
        {"name": "all", "paths": ["/"], "clients": "any"},
    ]})
    with RawConn(p.port, ctx) as c:
        c.send(request_bytes("GET", "/ws/echo", WS_HEADERS))
        resp = c.read_response()
        assert resp.status == 403
        assert resp.json() == {"error": "forbidden", "reason": "denied_by_rule"}
        assert resp.header("upgrade") is None
        assert resp.header("connection") == "close"
        assert c.closed_by_peer(5)


def test_raw_websocket_handshake_switches_protocols(proxy, ctx):
    with RawConn(proxy.port, ctx) as c:
        c.send(request_bytes("GET", "/ws/echo", WS_HEADERS))
        resp = c.read_response()
        assert resp.status == 101
        assert resp.header("upgrade").lower() == "websocket"
        assert resp.header("connection").lower() == "upgrade"
        accept = base64.b64encode(hashlib.sha1(WS_KEY.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert resp.header("sec-websocket-accept") == accept.decode()  # Django's answer to our key, untouched
        # the first server frame is the hello text frame (FIN + opcode 1)
        first = c.read_exact(2)
        assert first[0] == 0x81
