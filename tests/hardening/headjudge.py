"""The proxy's request-head decisions without sockets: real parser, the real judge(), real state.

Bytes go through llhttp (httptools, strict mode, as the HTTP/1.1 frontend configures it); each
complete head becomes a :class:`~mtls_proxy.judging.RequestHead` by the frontend's own
``RequestHead.collect``, is judged by :func:`mtls_proxy.judging.judge` (what production calls
when the request's turn comes) against a real :class:`~mtls_proxy.state.RuntimeState` built
from a config file, with a real verified peer; an allowed head is turned into the bytes Django
would receive by :func:`mtls_proxy.exchange.forwarding.upstream_head`. Used by the hypothesis
properties and by the atheris harness (fuzz_request_head.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.config import TOP_LEVEL_KEYS
from mtls_proxy.exchange.forwarding import upstream_head
from mtls_proxy.judging import ConnectionFacts, RequestHead, judge
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


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


@dataclass
class JudgedRequest:
    method: bytes
    target: bytes
    refusal: Refusal | None
    upstream_head: bytes = b""


@dataclass
class Judged:
    exchanges: list[JudgedRequest] = field(default_factory=list)
    broken: bool = False  # llhttp refused the stream (the frontend answers 400 and closes)


class _Collector:
    """llhttp callbacks collecting heads, as the HTTP/1.1 frontend's do (bodies are skipped)."""

    def __init__(self, max_head: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.max_head = max_head
        self.heads: list[RequestHead] = []
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._in_body = False

    def on_message_begin(self) -> None:
        self._target, self._headers, self._size, self._in_body = b"", [], 0, False

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._size += len(url)
        if self._size > self.max_head:
            raise ValueError("head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > self.max_head:
            raise ValueError("head too large")
        if not self._in_body:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        self._in_body = True
        self.heads.append(RequestHead.collect(
            p.get_method(), self._target, p.get_http_version(), self._headers,
            keep_alive=p.should_keep_alive(), upgrade_requested=p.should_upgrade(), head_size=self._size,
        ))


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
        self.facts = ConnectionFacts(self.peer, sni, b"127.0.0.1")

    def judge(self, data: bytes | list[bytes]) -> Judged:
        collector = _Collector(self.state.settings.limits.max_head_size)
        out = Judged()
        try:
            for piece in data if isinstance(data, list) else [data]:
                collector.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            pass  # what follows an upgrade request is tunnel bytes, not requests
        except (httptools.HttpParserError, ValueError):
            out.broken = True
        identity = self.state.identity.connection_headers(self.peer)
        for head in collector.heads:
            verdict = judge(head, self.facts, self.state, time.time())
            if not verdict.allowed:
                out.exchanges.append(JudgedRequest(head.method, head.target, Refusal(verdict.status, verdict.reason)))
                if verdict.status == 400:
                    break  # the frontend closes after a 400: nothing behind it is read
                continue
            signed = self.state.identity.request_headers(
                identity, method=head.method, target=head.target, host=head.host,
                content_length=head.content_length, chunked=head.chunked,
            )
            out.exchanges.append(JudgedRequest(head.method, head.target, None,
                                               upstream_head(head, self.facts, signed)))
        return out

    def close(self) -> None:
        pass
