"""The proxy's request-head handling without sockets: real parser, real judging, real state.

A :class:`~mtls_proxy.proxy.ClientConnection` is fed bytes through ``data_received`` exactly
as the event loop would feed it, with a real :class:`~mtls_proxy.state.RuntimeState` built from
a config file (real certificates, the guard policy) and a real verified peer. One trick keeps it
off the network: a placeholder exchange is marked active, so every request parsed is judged and
queued but never forwarded (pipelined requests wait the same way on a live connection). What
comes out is each queued exchange: its refusal (status, reason) or the head the proxy would send
upstream. Used by the hypothesis properties and by the atheris harness (fuzz_request_head.py).

It relies on ClientConnection internals (``_active``, ``_queue``, ``_broken``): if those are
renamed this module is the one place to follow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.config import TOP_LEVEL_KEYS
from mtls_proxy.proxy import ClientConnection, Exchange
from mtls_proxy.state import RuntimeState, load_state
from tests.support.pki import TestPki
from tests.support.proxy import base_config

GUARD_POLICY: dict[str, Any] = {
    "rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "api", "paths": ["/api/"], "clients": "any"},
        {"name": "ws", "paths": ["/ws/"], "clients": "any"},
    ]
}


@dataclass
class Judged:
    exchanges: list[Exchange]
    broken: bool  # the proxy stopped trusting the stream (parse error or refusal that closes)
    closing: bool
    upgrade_pending: bool


class HeadJudge:
    def __init__(self, root: Path, policy: dict[str, Any] | None = None, sni: str | None = "localhost",
                 pki: TestPki | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.pki = pki or TestPki(root / "pki")
        cfg = base_config(self.pki, "unix:/nonexistent/upstream.sock", 8443)
        cfg["policy"] = policy or GUARD_POLICY
        if "admin" in TOP_LEVEL_KEYS:
            cfg["admin"] = False
        path = root / "judge.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.state: RuntimeState = load_state(path, time.time())
        client = self.pki.client("head-judge")
        # as the handshake hands it over: the leaf, and the verified chain up to the trust anchor
        self.peer: PeerIdentity = parse_peer(client.issued.cert.public_bytes(Encoding.DER),
                                             (self.pki.ca.cert.public_bytes(Encoding.DER),))
        self.sni = sni
        self.loop = asyncio.new_event_loop()  # never run: timers are armed and cancelled, nothing awaits
        self.server = SimpleNamespace(state=self.state, loop=self.loop, draining=False, pool=None)
        self._judged = 0

    def judge(self, data: bytes | list[bytes]) -> Judged:
        conn = ClientConnection(self.server)  # type: ignore[arg-type]
        conn.peer = self.peer
        conn.sni = self.sni
        conn.client_ip = b"127.0.0.1"
        conn._active = Exchange(0.0)  # a request in progress: what follows is judged and queued
        try:
            for piece in data if isinstance(data, list) else [data]:
                conn.data_received(piece)
        finally:
            conn._cancel_timer()
        self._judged += 1
        if self._judged % 5000 == 0:  # cancelled timers stay in a loop that never runs: start afresh
            self.loop.close()
            self.loop = self.server.loop = asyncio.new_event_loop()
        return Judged(list(conn._queue), conn._broken, conn._closing, conn._upgrade_pending)

    def close(self) -> None:
        self.loop.close()
