"""The per-connection request path: parse, judge, forward, stream back.

One :class:`ClientConnection` per accepted TLS connection. Requests are parsed
with llhttp (httptools, strict mode: CL+TE, duplicate Content-Length, bare LF,
obs-fold and bad chunk framing are parse errors -> 400 and close). Each request
is judged on the current :class:`~mtls_proxy.state.RuntimeState` (so a reload
applies to keep-alive connections at their next request), its identity headers
are stripped and re-set, and its body and the response body are streamed with
backpressure in both directions: a paused writer pauses the reader on the other
side, nothing is read whole.

Framing rules that keep "nothing lost" true:
- the upstream request body is re-framed from what llhttp decoded; if the client
  goes away or breaks framing mid-body, the upstream connection is reset, so Django
  never sees a cut-short body as complete;
- if the upstream dies mid-response, the client connection is reset, never ended
  with a final chunk or a short Content-Length.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from time import perf_counter, time
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from mtls_proxy import metrics
from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.errors import (
    BadRequest,
    BodyTooLarge,
    ExpectationFailed,
    HeadTooLarge,
    MisdirectedRequest,
    PolicyDenied,
    ProxyError,
    TransferCodingNotImplemented,
    UpstreamError,
    UpstreamTimeout,
    VersionNotSupported,
)
from mtls_proxy.http1 import (
    CHUNKED_END,
    CONTINUE_100,
    EOL,
    HOP_BY_HOP,
    REQUEST_OWNED,
    chunk_header,
    connection_tokens,
    error_response,
)
from mtls_proxy.identity import PROXY_SET_HEADER_KEYS
from mtls_proxy.paths import AmbiguousPath, normalize_path, split_target
from mtls_proxy.policy import Decision
from mtls_proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from mtls_proxy.server import ProxyServer
    from mtls_proxy.state import RuntimeState

log = logging.getLogger("mtls_proxy")

_STRIP_KEYS = frozenset(k.encode() for k in PROXY_SET_HEADER_KEYS)
_BODYLESS_STATUS = frozenset({204, 304})
_RETRYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# reasons for pausing the client's reads (a bit mask)
_PAUSE_PIPELINE = 1
_PAUSE_BUFFER = 2
_PAUSE_UPSTREAM = 4
_PAUSE_UPGRADE = 8

_BUFFER_LIMIT = 256 * 1024


class _StopParsing(Exception):
    """Raised from a parser callback to stop parsing a connection that is closing."""


class Exchange:
    """One request/response pair on a client connection."""

    __slots__ = (
        "body_buffer",
        "body_buffered",
        "body_done",
        "body_received",
        "bytes_out",
        "chunked",
        "content_length",
        "decision_reason",
        "early_tunnel",
        "expect_continue",
        "head_size",
        "headers",
        "headers_done",
        "host",
        "is_head",
        "keep_alive",
        "max_body",
        "method",
        "refusal",
        "resp_chunked",
        "resp_close_delimited",
        "resp_done",
        "resp_headers",
        "resp_reason",
        "resp_started",
        "resp_status",
        "rule",
        "started",
        "target",
        "upgrade",
        "upstream",
        "upstream_activity",
        "upstream_head",
        "upstream_keep_alive",
        "upstream_started",
        "upstream_time",
        "version",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.headers_done = False
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.content_length: int | None = None
        self.host = b""
        self.is_head = False
        self.expect_continue = False
        self.max_body = 0
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.body_received = 0
        self.body_done = False
        self.early_tunnel = b""
        self.refusal: ProxyError | None = None
        self.rule = "-"
        self.decision_reason = "-"
        self.upstream: UpstreamConnection | None = None
        self.upstream_head = b""
        self.upstream_started = 0.0
        self.upstream_time = 0.0
        self.upstream_activity = 0.0
        self.upstream_keep_alive = False
        self.resp_status = 0
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_started = False
        self.resp_done = False
        self.resp_chunked = False
        self.resp_close_delimited = False
        self.bytes_out = 0

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ClientConnection(asyncio.Protocol):
    """One client TLS connection: a sequence of exchanges, or a tunnel after a WebSocket upgrade."""

    # Slots: thousands of idle phone connections each pay for this object; a __dict__ would double it.
    __slots__ = (
        "_active", "_body_activity", "_broken", "_client_denial", "_closed", "_closing", "_deadline",
        "_head_fed", "_id_generation", "_id_headers", "_judged_generation", "_out", "_parse_error", "_parser",
        "_parsing", "_pause_mask", "_queue", "_renew_header", "_timer", "_timer_at", "_timer_kind", "_tunnel",
        "_upgrade_pending", "_upstream_timer", "_upstream_watch", "client_ip", "loop", "peer", "server", "sni",
        "transport",
    )

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer: PeerIdentity | None = None
        self.sni: str | None = None
        self.client_ip = b"-"
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._pause_mask = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._body_activity = 0.0
        self._upstream_timer: asyncio.TimerHandle | None = None
        self._upstream_watch = False
        self._parse_error: ProxyError | None = None
        self._broken = False  # the request stream can no longer be trusted: no more parsing
        self._closing = False  # close once the active exchange is done
        self._closed = False
        self._tunnel: UpstreamConnection | None = None
        self._upgrade_pending = False
        self._id_generation = -1
        self._id_headers: tuple[tuple[bytes, bytes], ...] = ()
        self._head_fed = 0  # bytes fed while one request head was still unfinished
        self._renew_header = b""
        self._out: list[bytes] | None = None  # writes collected while one upstream read is parsed
        self._timer_at = 0.0  # when self._timer fires; the deadline may be later (lazy re-arming)
        self._deadline = 0.0
        self._judged_generation = -1
        self._client_denial: Decision | None = None

    # --- connection lifecycle -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            self.client_ip = str(peername[0]).encode()
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:  # CERT_REQUIRED makes this unreachable; fail closed all the same
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.sni = getattr(ssl_object, "mtls_sni", None)
        chain: tuple[bytes, ...] = ()
        get_chain = getattr(ssl_object, "get_verified_chain", None) or getattr(
            getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
        )
        if get_chain is not None:
            try:
                chain = tuple(_cert_der(c) for c in get_chain()[1:])
            except Exception:
                chain = ()
        if not chain:  # a resumed session carries no verified chain: rebuild it from the trusted CAs
            chain = self.server.state.rebuilt_chain(der)
        self.peer = parse_peer(der, chain)
        metrics.client_cert_seen(self.peer.not_after, time())
        self.server.connection_opened(self)
        self._arm("head", self.server.state.settings.limits.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for handle in (self._timer, self._upstream_timer):  # for real: a closed connection is not kept alive
            if handle is not None:
                handle.cancel()
        self._timer = self._upstream_timer = None
        ex = self._active
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        elif ex is not None and ex.upstream is not None and not ex.resp_done:
            # Client went away mid-exchange: reset upstream so a partial body is never taken as whole.
            ex.upstream.abort()
            ex.upstream = None
            if not ex.resp_started:
                ex.resp_status = 499
            self._log_access(ex, "client_closed")
        self._active = None
        self._queue.clear()
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        ex = self._active
        if self._tunnel is not None:
            self._tunnel.pause_reading()
        elif ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        ex = self._active
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        elif ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._broken or self._closed:
            return
        if self._upgrade_pending:
            # Bytes after an upgrade request, before the upstream answered: hold them for the tunnel.
            ex = self._active or (self._queue[-1] if self._queue else None)
            if ex is not None:
                ex.early_tunnel += data
                self._pause(_PAUSE_UPGRADE)
            return
        if self._timer_kind == "idle":
            self._arm("head", self.server.state.settings.limits.head_timeout)
        head_ex = self._parsing if self._parsing is not None and not self._parsing.headers_done else None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex = self._parsing_done_exchange()
            if ex is not None and ex.upgrade and ex.refusal is None:
                ex.early_tunnel = data[exc.args[0]:]
                self._upgrade_pending = True
            else:
                self._broken = True
        except httptools.HttpParserError as exc:
            if self._broken and self._parse_error is None:
                return  # we stopped the parser ourselves (the connection is closing)
            error = self._parse_error or BadRequest(str(exc), _parser_reason(exc))
            self._parse_error = None
            self._on_parse_failure(error)
        else:
            ex = self._parsing
            if ex is not None and ex is head_ex and not ex.headers_done:
                # llhttp hands a header over only once its line ends (httptools buffers it until then):
                # count whole reads spent inside one unfinished head, so an endless line is cut off too.
                self._head_fed += len(data)
                if self._head_fed > self.server.state.settings.limits.max_head_size:
                    self._on_parse_failure(HeadTooLarge())
            else:
                self._head_fed = 0

    def eof_received(self) -> bool | None:
        return None

    # --- request parsing (httptools callbacks) -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._broken:
            raise _StopParsing
        ex = Exchange(perf_counter())
        self._parsing = ex
        if self._active is not None or self._queue:
            self._pause(_PAUSE_PIPELINE)

    def on_url(self, url: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.target += url
        ex.head_size += len(url)
        if ex.head_size > self.server.state.settings.limits.max_head_size:
            self._parse_error = HeadTooLarge()
            raise self._parse_error

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.head_size += len(name) + len(value) + 4
        if ex.head_size > self.server.state.settings.limits.max_head_size:
            self._parse_error = HeadTooLarge()
            raise self._parse_error
        if not ex.headers_done:  # headers after the body are chunked trailers: dropped
            ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        p = self._parser
        ex.headers_done = True
        ex.method = p.get_method()
        ex.version = p.get_http_version()
        ex.keep_alive = p.should_keep_alive()
        self._judge(ex)
        if ex.has_body and ex.refusal is None:
            self._body_activity = self.loop.time()
            self._arm("body", self.server.state.settings.limits.body_timeout)
        else:
            self._cancel_timer()
        self._queue.append(ex)
        if self._active is None:
            self._start_next()

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        n = len(body)
        ex.body_received += n
        self._body_activity = self.loop.time()
        if ex.refusal is not None:
            return  # discarded; the connection closes after the refusal
        if ex.body_received > ex.max_body:
            self._refuse_mid_body(ex, BodyTooLarge(f"body over {ex.max_body} bytes"))
            return
        up = ex.upstream
        if up is not None and self._active is ex:
            if ex.chunked:
                up.transport.writelines((chunk_header(n), body, EOL))  # type: ignore[union-attr]
            else:
                up.write(body)
        else:
            ex.body_buffer.append(body)
            ex.body_buffered += n
            if ex.body_buffered > _BUFFER_LIMIT:
                self._pause(_PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        self._parsing = None
        ex.body_done = True
        if self._timer_kind == "body":
            self._cancel_timer()
        up = ex.upstream
        if up is not None and self._active is ex and ex.chunked:
            up.write(CHUNKED_END)

    def _parsing_done_exchange(self) -> Exchange | None:
        return self._queue[-1] if self._queue else self._active

    # --- judging ---------------------------------------------------------------------------------------------
    def _judge(self, ex: Exchange) -> None:
        """Decide on the request head: framing, target, Host/SNI, policy, size. Sets ex.refusal on refusal."""
        state = self.server.state
        limits = state.settings.limits
        ex.is_head = ex.method == b"HEAD"
        hosts = 0
        for name, value in ex.headers:
            lname = name.lower()
            if lname == b"host":
                hosts += 1
                ex.host = value
            elif lname == b"content-length":
                ex.content_length = int(value)
            elif lname == b"transfer-encoding":
                ex.chunked = True
                if value.strip().lower() != b"chunked" and ex.refusal is None:
                    # llhttp accepts "gzip, chunked"; the body is re-framed as plain chunked, so Django
                    # would get gzip bytes with no coding left to say so: refuse instead.
                    ex.refusal = TransferCodingNotImplemented(f"Transfer-Encoding {value!r}")
            elif lname == b"expect":
                if value.strip().lower() == b"100-continue":
                    ex.expect_continue = True
                else:
                    ex.refusal = ExpectationFailed()
            elif lname == b"upgrade":
                ex.upgrade = value.strip().lower() == b"websocket"
        if ex.refusal is not None:
            return
        if hosts > 1:
            ex.refusal = BadRequest("multiple Host headers", "multiple_host")
            return
        if ex.version not in ("1.1", "1.0"):
            ex.refusal = VersionNotSupported(f"HTTP/{ex.version}")
            return
        if ex.chunked and ex.version == "1.0":
            ex.refusal = BadRequest("Transfer-Encoding in an HTTP/1.0 request", "te_in_http10")
            return
        if hosts == 0 or not ex.host.strip():  # HTTP/1.0 too: Django routes and checks ALLOWED_HOSTS on it
            ex.refusal = BadRequest("missing Host header", "missing_host")
            return
        if not self._parser.should_upgrade():
            ex.upgrade = False
        elif not ex.upgrade or ex.has_body:
            ex.refusal = BadRequest("only WebSocket upgrades without a body are proxied", "bad_upgrade")
            return
        raw_path, _ = split_target(ex.target)
        try:
            path = normalize_path(raw_path)
        except AmbiguousPath as exc:
            ex.refusal = BadRequest(f"ambiguous path: {exc.reason}", exc.reason)
            return
        host_name = _host_without_port(ex.host)
        server_names = state.settings.tls.server_names
        if (self.sni is not None and host_name and host_name != self.sni) or (
            server_names and host_name not in server_names
        ):
            ex.refusal = MisdirectedRequest(f"Host {host_name!r} does not match SNI {self.sni!r}")
            return
        assert self.peer is not None
        if self._judged_generation != state.generation:  # the certificate-only checks, once per state
            self._client_denial = state.policy.judge_client(self.peer)
            self._judged_generation = state.generation
        decision = self._client_denial or state.policy.evaluate_rules(self.peer, ex.method.decode("ascii"), path)
        # what the upstream routes: decoded, dot-segments kept
        routed = unquote(raw_path.decode("ascii")) if b"%" in raw_path else raw_path.decode("ascii")
        if decision.allowed and routed != path:
            # The target is forwarded as sent and Django does not remove dot-segments: "/admin/../api"
            # is judged as /api but routed under /admin. Both readings must be allowed.
            routed_decision = state.policy.evaluate_rules(self.peer, ex.method.decode("ascii"), routed)
            if not routed_decision.allowed:
                decision = routed_decision
        ex.rule = decision.rule
        ex.decision_reason = decision.reason
        if not decision.allowed:
            ex.refusal = PolicyDenied(decision.reason, decision.reason)
            return
        ex.max_body = decision.max_body_size if decision.max_body_size is not None else limits.max_body_size
        if ex.content_length is not None and ex.content_length > ex.max_body:
            ex.refusal = BodyTooLarge(f"Content-Length {ex.content_length} over {ex.max_body}")
            return
        ex.upstream_head = self._upstream_head(ex, state)

    def _upstream_head(self, ex: Exchange, state: RuntimeState) -> bytes:
        """Strip, then set: hop-by-hop and every proxy-owned header go, ours are added."""
        dropped = connection_tokens(ex.headers)
        parts = [ex.method, b" ", ex.target, b" HTTP/1.1\r\n"]
        for name, value in ex.headers:
            key = name.lower()
            if key in REQUEST_OWNED or key in dropped or key.replace(b"_", b"-") in _STRIP_KEYS:
                continue
            parts += (name, b": ", value, EOL)
        if ex.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif ex.content_length is not None:
            parts.append(b"Content-Length: %d\r\n" % ex.content_length)
        if ex.upgrade:
            parts.append(b"Connection: upgrade\r\nUpgrade: websocket\r\n")
        parts += (b"X-Forwarded-For: ", self.client_ip, b"\r\nX-Forwarded-Proto: https\r\n")
        if ex.host:
            parts += (b"X-Forwarded-Host: ", ex.host, EOL)
        if self._id_generation != state.generation:
            assert self.peer is not None
            self._id_headers = state.identity.connection_headers(self.peer)
            self._renew_header = _renew_header(self.peer, state.settings.identity.renew_window)
            self._id_generation = state.generation
        signed = state.identity.request_headers(
            self._id_headers, method=ex.method, target=ex.target, host=ex.host,
            content_length=ex.content_length, chunked=ex.chunked,
        )
        for name, value in signed:
            parts += (name, b": ", value, EOL)
        parts.append(EOL)
        return b"".join(parts)

    # --- exchange sequencing --------------------------------------------------------------------------------
    def _start_next(self) -> None:
        if not self._queue or self._closed:
            return
        ex = self._queue.popleft()
        self._active = ex
        if not self._queue:
            self._resume(_PAUSE_PIPELINE)
        if ex.refusal is not None:
            self._respond_error(ex, ex.refusal)
            return
        if self.server.draining:
            self._closing = True
        up = self.server.pool.acquire_idle()
        if up is not None:
            self._send_upstream(ex, up)  # the common keep-alive case: no task, no await
        else:
            self.loop.create_task(self._forward(ex))

    async def _forward(self, ex: Exchange, fresh: bool = False) -> None:
        """Open (or wait for) an upstream connection, then send the request on it."""
        pool = self.server.pool
        try:
            up = await (pool.connect() if fresh else pool.acquire())
        except UpstreamError as exc:
            if self._active is ex and not self._closed:
                self._respond_error(ex, exc)
            return
        if self._active is not ex or self._closed:
            pool.release(up)
            return
        self._send_upstream(ex, up)

    def _send_upstream(self, ex: Exchange, up: UpstreamConnection) -> None:
        """Send the head and whatever body arrived meanwhile; the response comes back through callbacks."""
        ex.upstream = up
        ex.upstream_started = perf_counter()
        ex.upstream_activity = self.loop.time()
        up.attach(self)
        up.write(ex.upstream_head)
        if ex.body_buffer:
            self._flush_body_buffer(ex, up)
        elif ex.body_done and ex.chunked:
            up.write(CHUNKED_END)
        if ex.expect_continue and not ex.body_done and ex.body_received == 0:
            self._write(CONTINUE_100)
        self._arm_upstream(self.server.state.settings.limits.upstream_read_timeout)

    def _flush_body_buffer(self, ex: Exchange, up: UpstreamConnection) -> None:
        chunks = ex.body_buffer
        ex.body_buffer = []
        ex.body_buffered = 0
        if ex.chunked:
            framed: list[bytes] = []
            for c in chunks:
                framed += (chunk_header(len(c)), c, EOL)
            if ex.body_done:
                framed.append(CHUNKED_END)
            up.transport.writelines(framed)  # type: ignore[union-attr]
        else:
            up.transport.writelines(chunks)  # type: ignore[union-attr]
        self._resume(_PAUSE_BUFFER)

    def _finish(self, ex: Exchange, reason: str = "-") -> None:
        """The response is complete on the wire; log it and move on to the next request or close."""
        ex.resp_done = True
        self._cancel_upstream_timer()
        self._log_access(ex, reason)
        self._active = None
        if self._closed:
            return
        # A bodyless request refused from on_headers_complete is still "being parsed": llhttp calls
        # on_message_complete right after, so it is complete and the connection stays reusable.
        refused_head_only = self._parsing is ex and not ex.has_body
        if self._closing or not ex.keep_alive or not (ex.body_done or refused_head_only) or self._broken:
            self._close()
            return
        if self._queue:
            self._start_next()
        elif self._parsing is None or refused_head_only:
            self._arm("idle", self.server.state.settings.limits.idle_timeout)

    def _respond_error(self, ex: Exchange, error: ProxyError) -> None:
        """Send a JSON error response for ``ex`` (nothing sent yet) and finish it."""
        close = (
            error.status == 400
            or error.status == 431
            or self._closing
            or not ex.keep_alive
            or (ex.has_body and not ex.body_done)
            or isinstance(error, (BodyTooLarge,))
            or ex.upgrade
        )
        if close:
            self._closing = True
        ex.resp_status = error.status
        ex.decision_reason = error.reason
        if isinstance(error, UpstreamError):
            metrics.upstream_error(error.reason)
        else:
            metrics.denied(error.reason)
        data = error_response(error.status, error.reason, close=close, head_only=ex.is_head)
        ex.bytes_out = len(data)
        ex.resp_started = True
        self._write(data)
        if isinstance(error, PolicyDenied):
            log.info(
                "denied: cn=%s fp=%s %s %s rule=%s reason=%s",
                self.peer.common_name if self.peer else "-",
                self.peer.fingerprint_sha256[:16] if self.peer else "-",
                ex.method.decode("ascii", "replace"),
                ex.target.decode("ascii", "replace")[:200],
                ex.rule,
                error.reason,
            )
        self._finish(ex, error.reason)

    def _refuse_mid_body(self, ex: Exchange, error: ProxyError) -> None:
        """The body broke a limit while streaming: reset upstream, answer if we still can, close."""
        ex.refusal = error
        self._broken = True
        if ex.upstream is not None:
            ex.upstream.abort()
            ex.upstream = None
        if self._active is ex and not ex.resp_started:
            self._closing = True
            self._respond_error(ex, error)
        else:
            self._abort()

    def _on_parse_failure(self, error: ProxyError) -> None:
        self._broken = True
        ex = self._parsing
        self._parsing = None
        if ex is not None and ex is self._active:
            # framing broke inside the body being forwarded: the upstream must not take it as complete
            if ex.upstream is not None:
                ex.upstream.abort()
                ex.upstream = None
            if not ex.resp_started:
                self._closing = True
                self._respond_error(ex, error)
            else:
                self._abort()
            return
        if self._active is not None:
            self._closing = True  # answer the active request, then close; nothing after it is trusted
            return
        bad = ex or Exchange(perf_counter())
        bad.keep_alive = False
        self._active = bad
        self._respond_error(bad, error)

    # --- upstream events (ResponseSink) ---------------------------------------------------------------------
    def on_upstream_status(self, reason: bytes) -> None:
        assert self._active is not None
        self._active.resp_reason = reason

    def on_upstream_header(self, name: bytes, value: bytes) -> None:
        assert self._active is not None
        self._active.resp_headers.append((name, value))

    def on_upstream_headers_complete(self, status: int, keep_alive: bool) -> None:
        ex = self._active
        assert ex is not None
        ex.upstream_activity = self.loop.time()
        if 100 <= status < 200 and status != 101:
            ex.resp_headers = []  # interim response (the proxy answers Expect itself): dropped
            return
        ex.resp_status = status
        ex.upstream_keep_alive = keep_alive
        ex.upstream_time = perf_counter() - ex.upstream_started
        dropped = connection_tokens(ex.resp_headers)
        has_length = False
        upstream_chunked = False
        parts = [b"HTTP/1.1 %d " % status, ex.resp_reason, EOL]
        for name, value in ex.resp_headers:
            key = name.lower()
            if key == b"transfer-encoding":
                upstream_chunked = True
                continue
            if key in HOP_BY_HOP or key in dropped:
                continue
            if key == b"content-length":
                has_length = True
            parts += (name, b": ", value, EOL)
        if status == 101:
            if not ex.upgrade:
                self._upstream_failed(UpstreamError("unexpected 101 from upstream", "upstream_bad_response"))
                return
            parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        elif not (ex.is_head or status in _BODYLESS_STATUS or (has_length and not upstream_chunked)):
            if ex.version == "1.1":
                ex.resp_chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self._closing = True  # HTTP/1.0 client: the body ends when the connection closes
            ex.resp_close_delimited = not upstream_chunked
        if self._renew_header:
            parts.append(self._renew_header)
        if ex.upgrade and status != 101:
            self._closing = True  # the request parser is in upgrade mode: nothing more can be read
        if self._closing or not ex.keep_alive or not ex.body_done:
            self._closing = True
            parts.append(b"Connection: close\r\n")
        elif ex.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(EOL)
        head = b"".join(parts)
        ex.bytes_out += len(head)
        ex.resp_started = True
        self._write(head)
        if ex.is_head and status != 101:
            # The response parser cannot know this answers a HEAD: it would wait for the body that its
            # Content-Length/Transfer-Encoding announce, which never comes. The response ends here
            # (and _complete_response closes that upstream connection, whose parser is now out of step).
            self._complete_response(ex)

    def on_upstream_body(self, data: bytes) -> None:
        ex = self._active
        assert ex is not None
        ex.upstream_activity = self.loop.time()
        ex.bytes_out += len(data)
        if ex.resp_chunked:
            self._write(chunk_header(len(data)))
            self._write(data)
            self._write(EOL)
        else:
            self._write(data)

    def begin_batch(self) -> None:
        """Upstream bytes are being parsed: collect what they produce into one write (one TLS record)."""
        self._out = []

    def end_batch(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self._closed:
            if len(out) == 1:
                self.transport.write(out[0])
            elif sum(map(len, out)) <= 16384:
                self.transport.write(b"".join(out))
            else:
                self.transport.writelines(out)

    def on_upstream_message_complete(self) -> None:
        ex = self._active
        assert ex is not None
        if not ex.resp_started:
            return  # end of an interim 1xx response
        if ex.resp_status == 101:
            return  # the tunnel starts in on_upstream_upgraded
        self._complete_response(ex)

    def _complete_response(self, ex: Exchange) -> None:
        if ex.resp_chunked:
            self._write(CHUNKED_END)
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            if ex.upstream_keep_alive and ex.body_done and not ex.is_head and not ex.resp_close_delimited:
                self.server.pool.release(up)
            else:
                up.owner = None
                up.close()
        self._finish(ex)

    def on_upstream_upgraded(self, tail: bytes) -> None:
        ex = self._active
        assert ex is not None and self.transport is not None
        up = ex.upstream
        assert up is not None
        self._cancel_upstream_timer()
        self._cancel_timer()
        self._tunnel = up
        ex.upstream = None
        self._upgrade_pending = False
        self._log_access(ex, "upgraded")
        if tail:
            self._write(tail)
        if ex.early_tunnel:
            up.write(ex.early_tunnel)
            ex.early_tunnel = b""
        self._resume(_PAUSE_UPGRADE | _PAUSE_PIPELINE | _PAUSE_BUFFER)

    def on_upstream_tunnel_data(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        if self._tunnel is not None:
            self._tunnel = None
            self._close()
            return
        ex = self._active
        if ex is None or self._closed:
            return
        if ex.resp_started and ex.resp_close_delimited and exc is None:
            ex.upstream = None
            self._complete_response(ex)  # a close-delimited body ends at a clean EOF
            return
        up = ex.upstream
        if (
            up is not None
            and not ex.resp_started
            and up.reused
            and up.received == 0
            and not ex.has_body
            and not ex.upgrade
            and ex.method in _RETRYABLE_METHODS
        ):
            # The pooled connection was closed under us before any answer: retry once on a fresh one.
            # Only idempotent methods (RFC 9110 9.2.2): the upstream may have run the request and died
            # before answering, and a POST must not run twice (another worker would take the retry).
            ex.upstream = None
            self._cancel_upstream_timer()
            self.loop.create_task(self._forward(ex, fresh=True))
            return
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(
            f"upstream closed the connection: {exc}" if exc else "upstream closed the connection",
            "upstream_reset",
        )
        self._upstream_failed(error)

    def _upstream_failed(self, error: UpstreamError) -> None:
        ex = self._active
        assert ex is not None
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        if ex.resp_started:
            # Never present a short body as complete: reset the client connection.
            metrics.upstream_error(error.reason)
            ex.decision_reason = error.reason
            self._log_access(ex, error.reason)
            self._active = None
            self._abort()
        else:
            self._closing = self._closing or not ex.body_done
            self._respond_error(ex, error)

    def on_upstream_pause_writing(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def on_upstream_resume_writing(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    # --- timers ----------------------------------------------------------------------------------------------
    # Timers are re-armed lazily: a request usually arms a later deadline than the pending handle's,
    # so the handle stays and re-schedules itself when it fires early, instead of a cancel and a new
    # handle per request.
    def _arm(self, kind: str, seconds: float) -> None:
        deadline = self.loop.time() + seconds
        self._timer_kind = kind
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        self._timer_kind = ""  # the handle fires later and finds nothing to do

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if not kind or self._closed:
            return
        if self._deadline > self.loop.time():
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        self._timer_kind = ""
        limits = self.server.state.settings.limits
        if kind == "body":
            idle = self.loop.time() - self._body_activity
            if idle < limits.body_timeout:
                self._arm("body", limits.body_timeout - idle)
                return
            ex = self._parsing
            log.info("client body timeout from %s", self.client_ip.decode())
            if ex is not None and ex is self._active:
                self._refuse_mid_body(ex, ProxyError("client body timeout", "client_body_timeout"))
                return
        elif kind == "head":
            log.info("request head timeout from %s", self.client_ip.decode())
        self._close() if self._active is None else self._abort()

    def _arm_upstream(self, seconds: float) -> None:
        self._upstream_watch = True
        if self._upstream_timer is None:
            self._upstream_timer = self.loop.call_later(seconds, self._on_upstream_timer)

    def _cancel_upstream_timer(self) -> None:
        self._upstream_watch = False  # lazily: the pending handle finds nothing to watch

    def _on_upstream_timer(self) -> None:
        self._upstream_timer = None
        ex = self._active
        if not self._upstream_watch or ex is None or ex.upstream is None or self._closed:
            return
        timeout = self.server.state.settings.limits.upstream_read_timeout
        idle = self.loop.time() - ex.upstream_activity
        if idle < timeout or (self.transport is not None and self.transport.get_write_buffer_size() > 0):
            # still active, or we are the slow side (client backpressure): check again later
            self._arm_upstream(max(timeout - idle, 0.05))
            return
        self._upstream_failed(UpstreamTimeout("upstream read timed out", "upstream_timeout"))

    # --- flow control and output ---------------------------------------------------------------------------
    def _pause(self, reason: int) -> None:
        if self._pause_mask == 0 and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._pause_mask |= reason

    def _resume(self, reason: int) -> None:
        if self._pause_mask == 0:
            return
        self._pause_mask &= ~reason
        if self._pause_mask == 0 and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        if self._out is not None:
            self._out.append(data)
        elif self.transport is not None and not self._closed:
            self.transport.write(data)

    def _close(self) -> None:
        self._broken = True  # nothing more is parsed from a connection we are closing
        if self._out:
            self.end_batch()
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _abort(self) -> None:
        self._broken = True
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def start_drain(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its current response."""
        self._closing = True
        if self._active is None and self._parsing is None and self._tunnel is None:
            self._close()

    def drained(self) -> bool:
        """Shutdown: nothing in progress and every byte handed to TLS is encrypted and passed on.

        What may remain is the TLS close: the event loop waits (up to 30 s) for the peer's own
        close_notify, which an idle client never sends; the drain must not wait for that.
        """
        if self._closed:
            return True
        if self._active is not None or self._parsing is not None or self._tunnel is not None or self._queue:
            return False
        return self.transport is None or self.transport.get_write_buffer_size() == 0

    # --- logging ---------------------------------------------------------------------------------------------
    def _log_access(self, ex: Exchange, reason: str) -> None:
        self.server.record_request(self, ex, reason, perf_counter() - ex.started)


def _renew_header(peer: PeerIdentity, window: float) -> bytes:
    """``Client-Cert-Renew-By`` when the certificate expires within ``window`` seconds, so the app renews early."""
    if window <= 0 or peer.not_after.timestamp() - time() > window:
        return b""
    return b"Client-Cert-Renew-By: " + peer.not_after.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + EOL


def _host_without_port(host: bytes) -> str:
    h = host.decode("ascii", "replace").strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _parser_reason(exc: Exception) -> str:
    msg = str(exc).lower()
    if "content-length" in msg and "transfer-encoding" in msg:
        return "cl_and_te"
    if "duplicate content-length" in msg:
        return "duplicate_content_length"
    if "transfer-encoding" in msg:
        return "bad_transfer_encoding"
    if "content-length" in msg:
        return "bad_content_length"
    if "chunk" in msg:
        return "bad_chunk"
    if "cr" in msg or "lf" in msg:
        return "bad_line_ending"
    if "header" in msg:
        return "bad_header"
    if "url" in msg:
        return "bad_target"
    if "method" in msg:
        return "bad_method"
    return "bad_request"


def _cert_der(cert: object) -> bytes:
    public_bytes = getattr(cert, "public_bytes", None)
    if public_bytes is None:
        raise TypeError("not a certificate")
    return bytes(public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]

