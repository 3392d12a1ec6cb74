"""The HTTP/1.1 frontend: one client TLS connection, parsed with llhttp, answered in order.

llhttp (httptools, strict mode) refuses CL+TE, duplicate Content-Length, bare LF, obs-fold
and bad chunk framing: 400 and close. What this class owns is the connection: parser
callbacks, the pipelining queue, head/idle/body/send timers, response framing for an
HTTP/1.x client, and the switch to a tunnel after an upgrade. It never decides a request's
fate: each parsed head becomes an :class:`~mtls_proxy.exchange.exchange.Exchange`, which is
judged when its turn comes.

Pipelining is bounded: at most ``limits.max_pipelined`` parsed requests wait behind the one
being answered. Every request head ends with CRLFCRLF, so a slice of input holding at most
``room`` of those can complete at most ``room`` heads: input past that is kept unparsed (and
reading pauses) until the queue has room again. Exchanges are started by a loop, never by
recursion from the end of the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from time import perf_counter

import httptools

from mtls_proxy import metrics
from mtls_proxy.context import ServerContext
from mtls_proxy.errors import BadRequest, HeadTooLarge, ProxyError, UpstreamError
from mtls_proxy.exchange.exchange import BODY_LENGTH, BODY_NONE, Exchange
from mtls_proxy.exchange.forwarding import identity_of
from mtls_proxy.exchange.record import record_exchange
from mtls_proxy.frontends.peer import connection_facts
from mtls_proxy.http1 import CHUNKED_END, CONTINUE_100, EOL, HOP_BY_HOP, chunk_header, connection_tokens, error_response
from mtls_proxy.judging import ConnectionFacts, RequestHead, judge_peer, outcome
from mtls_proxy.state import RuntimeState

log = logging.getLogger("mtls_proxy")

# reasons for pausing the client's reads (a bit mask)
_PAUSE_PIPELINE = 1
_PAUSE_BUFFER = 2
_PAUSE_UPSTREAM = 4
_PAUSE_UPGRADE = 8

_HEAD_END = b"\r\n\r\n"
_PROTOCOL = "http/1.1"


class _StopParsing(Exception):
    """Raised from a parser callback to stop parsing a connection that is closing."""


class _Parsing:
    """The request being parsed: its head as it arrives, then its exchange."""

    __slots__ = ("exchange", "head_size", "headers", "target")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.exchange: Exchange | None = None


class Http1Connection(asyncio.Protocol):
    """One client connection: a sequence of exchanges, or a tunnel after a WebSocket upgrade."""

    # Slots: thousands of idle phone connections each pay for this object; a __dict__ would double it.
    __slots__ = (
        "_active", "_body_activity", "_broken", "_closed", "_closing", "_deadline", "_feeding", "_head_fed",
        "_id_generation", "_id_headers", "_out", "_parse_error", "_parser", "_parsing", "_pause_mask", "_pending",
        "_queue", "_renew", "_send_timer", "_starting", "_timer", "_timer_at", "_timer_kind", "_tunnel",
        "_upgrade_pending", "ctx", "facts", "loop", "transport",
    )

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self.facts: ConnectionFacts = None  # type: ignore[assignment]  # set in connection_made
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: _Parsing | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._pending = b""  # input not yet handed to the parser (the queue was full)
        self._feeding = False
        self._starting = False
        self._pause_mask = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._timer_at = 0.0  # when self._timer fires; the deadline may be later (lazy re-arming)
        self._deadline = 0.0
        self._send_timer: asyncio.TimerHandle | None = None
        self._body_activity = 0.0
        self._parse_error: ProxyError | None = None
        self._broken = False  # the request stream can no longer be trusted: no more parsing
        self._closing = False  # close once the active exchange is done
        self._closed = False
        self._tunnel: Exchange | None = None
        self._upgrade_pending = False
        self._id_generation = -1
        self._id_headers: tuple[tuple[bytes, bytes], ...] = ()
        self._renew = b""
        self._head_fed = 0  # bytes fed while one request head was still unfinished
        self._out: list[bytes] | None = None  # writes collected while one upstream read is parsed

    # --- connection lifecycle -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it
        peername = transport.get_extra_info("peername")
        client_ip = str(peername[0]).encode() if isinstance(peername, tuple) else b"-"
        facts = connection_facts(transport, client_ip, self.ctx.state)
        if facts is None:  # fail closed: no verified certificate where one is required
            self._broken = True
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.facts = facts
        peer = facts.peer
        now = time.time()
        metrics.CONNECTIONS.inc()
        if peer is None:  # a client_auth: optional listener: nothing about it can change with time
            self.ctx.opened(self, float("inf"))
        else:
            metrics.client_cert_seen(peer.not_after, now)
            self.ctx.opened(self, judge_peer(peer, self.ctx.state, now).valid_until)
        self._arm("head", self.ctx.state.settings.limits.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in (self._timer, self._send_timer):  # for real: a closed connection is not kept alive
            if handle is not None:
                handle.cancel()
        self._timer = self._send_timer = None
        if self._tunnel is not None:
            self._tunnel.client_gone()
            self._tunnel = None
        ex = self._active
        if ex is not None and not ex.resp_done:
            ex.client_gone()
            if not ex.resp_started:
                ex.resp_status = 499
            self._record(ex, "client_closed")
        self._active = None
        for queued in self._queue:
            queued.client_gone()
        self._queue.clear()
        if self.facts is not None:
            metrics.CONNECTIONS.dec()
        self.ctx.closed(self)

    def pause_writing(self) -> None:
        """The client is not taking our bytes: stop reading upstream, and cut it off after send_timeout."""
        target = self._tunnel or self._active
        if target is not None:
            target.pause_response()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.ctx.state.settings.limits.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        target = self._tunnel or self._active
        if target is not None:
            target.resume_response()

    def _on_send_timeout(self) -> None:
        self._send_timer = None
        if self._closed:
            return
        log.info("send timeout: client %s took no bytes for %.0fs", self.facts.client_ip.decode(),
                 self.ctx.state.settings.limits.send_timeout)
        metrics.denied("send_timeout")
        ex = self._active
        if ex is not None and not ex.resp_done:
            ex.decision_reason = "send_timeout"
        self.abort()  # connection_lost aborts the upstream side: never returned to the pool

    # --- input ---------------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.tunnel_from_client(data)
            return
        if self._broken or self._closed:
            return
        if self._upgrade_pending:
            # Bytes after an upgrade request, before the upstream answered: hold them for the tunnel.
            ex = self._queue[-1] if self._queue else self._active
            if ex is not None:
                ex.early_tunnel += data
                self._pause(_PAUSE_UPGRADE)
            return
        if self._timer_kind == "idle":
            self._arm("head", self.ctx.state.settings.limits.head_timeout)
        self._pending = self._pending + data if self._pending else data
        self._feed()

    def _room(self) -> int:
        return self.ctx.state.settings.limits.max_pipelined - len(self._queue)

    def _feed(self) -> None:
        """Hand pending input to the parser, no more than the queue has room for."""
        if self._feeding:
            return  # the outer loop goes on
        self._feeding = True
        try:
            while self._pending and not self._broken and not self._closed and not self._upgrade_pending:
                data = self._pending
                room = self._room()
                if room <= 0:
                    self._pause(_PAUSE_PIPELINE)
                    return
                cut = len(data)
                # the rest of a Content-Length body cannot hold a head: count terminators after it only
                # (scanning every uploaded byte cost more than forwarding it)
                skip = self._body_left()
                if skip < cut and data.count(_HEAD_END, skip) > room:
                    pos = skip - 1
                    for _ in range(room):
                        pos = data.find(_HEAD_END, pos + 1)
                    cut = pos + len(_HEAD_END)
                self._pending = data[cut:] if cut < len(data) else b""
                self._parse(data[:cut] if cut < len(data) else data)
            if not self._pending:
                self._resume(_PAUSE_PIPELINE)
        finally:
            self._feeding = False

    def _body_left(self) -> int:
        """Bytes of the Content-Length body being parsed still to come (0 when in a head or a chunked body)."""
        p = self._parsing
        ex = p.exchange if p is not None else None
        if ex is None or ex.head.content_length is None or ex.head.chunked:
            return 0
        return max(ex.head.content_length - ex.body_received, 0)

    def _parse(self, data: bytes) -> None:
        head_before = self._parsing if self._parsing is not None and self._parsing.exchange is None else None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex = self._queue[-1] if self._queue else self._active
            if ex is not None and ex.head.is_websocket and not ex.refused:
                ex.early_tunnel = data[exc.args[0]:] + self._pending
                self._pending = b""
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
            parsing = self._parsing
            if parsing is not None and parsing is head_before and parsing.exchange is None:
                # llhttp hands a header over only once its line ends (httptools buffers it until then):
                # count whole reads spent inside one unfinished head, so an endless line is cut off too.
                self._head_fed += len(data)
                if self._head_fed > self.ctx.state.settings.limits.max_head_size:
                    self._on_parse_failure(HeadTooLarge())
            else:
                self._head_fed = 0

    def eof_received(self) -> bool | None:
        return None

    # --- request parsing (httptools callbacks) -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._broken:
            raise _StopParsing
        self._parsing = _Parsing()

    def on_url(self, url: bytes) -> None:
        p = self._parsing
        assert p is not None
        p.target += url
        p.head_size += len(url)
        if p.head_size > self.ctx.state.settings.limits.max_head_size:
            self._parse_error = HeadTooLarge()
            raise self._parse_error

    def on_header(self, name: bytes, value: bytes) -> None:
        p = self._parsing
        assert p is not None
        p.head_size += len(name) + len(value) + 4
        if p.head_size > self.ctx.state.settings.limits.max_head_size:
            self._parse_error = HeadTooLarge()
            raise self._parse_error
        if p.exchange is None:  # headers after the body are chunked trailers: dropped
            p.headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parsing
        assert p is not None
        parser = self._parser
        try:
            head = RequestHead.collect(
                parser.get_method(), p.target, parser.get_http_version(), p.headers,
                keep_alive=parser.should_keep_alive(), upgrade_requested=parser.should_upgrade(),
                head_size=p.head_size,
            )
        except ValueError:  # llhttp validated Content-Length; fail closed all the same
            self._parse_error = BadRequest("bad Content-Length", "bad_content_length")
            raise self._parse_error from None
        ex = Exchange(self, self.ctx, head)
        p.exchange = ex
        if head.has_body:
            self._body_activity = self.loop.time()
            self._arm("body", self.ctx.state.settings.limits.body_timeout)
        else:
            self._cancel_timer()
        self._queue.append(ex)
        if self._active is None:
            self._start_next()

    def on_body(self, body: bytes) -> None:
        p = self._parsing
        assert p is not None and p.exchange is not None
        self._body_activity = self.loop.time()
        p.exchange.client_body(body)

    def on_message_complete(self) -> None:
        p = self._parsing
        assert p is not None and p.exchange is not None
        self._parsing = None
        if self._timer_kind == "body":
            self._cancel_timer()
        ex = p.exchange
        ex.client_body_end()
        if ex.resp_done and self._active is None and not self._queue and not self._broken:
            self._arm("idle", self.ctx.state.settings.limits.idle_timeout)  # answered before its end was read

    def _parsing_exchange(self) -> Exchange | None:
        return self._parsing.exchange if self._parsing is not None else None

    # --- sequencing -----------------------------------------------------------------------------------------
    def _start_next(self) -> None:
        """Start queued exchanges in order; a loop, so a run of refusals never recurses."""
        if self._starting:
            return
        self._starting = True
        try:
            while self._active is None and self._queue and not self._closed and not self._broken:
                ex = self._queue.popleft()
                self._active = ex
                if self.ctx.draining:
                    self._closing = True
                ex.start()
        finally:
            self._starting = False
        if self._active is None and not self._closed and not self._broken:
            if self._pending and not self._feeding:
                self._feed()
            elif self._parsing is None and not self._queue:
                self._arm("idle", self.ctx.state.settings.limits.idle_timeout)

    def _finish(self, ex: Exchange, reason: str = "-") -> None:
        """The response is complete on the wire; log it and move on to the next request or close."""
        ex.resp_done = True
        self._record(ex, reason)
        if self._active is ex:
            self._active = None
        if self._closed:
            return
        # A bodyless request refused as soon as it was parsed is still "being parsed": llhttp calls
        # on_message_complete right after, so it is complete and the connection stays reusable.
        parsing_it = self._parsing_exchange() is ex
        complete = ex.body_done or (parsing_it and not ex.head.has_body)
        if self._closing or not ex.head.keep_alive or not complete or self._broken:
            self._close()
            return
        if not self._starting:
            self._start_next()

    def _record(self, ex: Exchange, reason: str) -> None:
        record_exchange(self.facts, ex, reason, perf_counter() - ex.started, _PROTOCOL)

    # --- Frontend interface for the exchange ---------------------------------------------------------------------
    def identity_for(self, state: RuntimeState) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
        if self._id_generation != state.generation:
            self._id_headers, self._renew = identity_of(self.facts.peer, state)
            self._id_generation = state.generation
        return self._id_headers, self._renew

    def send_head(self, ex: Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  body: int) -> None:
        head = ex.head
        dropped = connection_tokens(headers)
        parts = [b"HTTP/1.1 %d " % status, reason, EOL]
        for name, value in headers:
            key = name.lower()
            if key in HOP_BY_HOP or key in dropped:
                continue
            parts += (name, b": ", value, EOL)
        if status == 101:
            parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        elif body != BODY_NONE and body != BODY_LENGTH:
            if head.version == "1.1":
                ex.resp_chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self._closing = True  # HTTP/1.0 client: the body ends when the connection closes
        if self._renew:
            parts.append(self._renew)
        if head.upgrade_requested and status != 101:
            self._closing = True  # the request parser is in upgrade mode: nothing more can be read
        if self._closing or not head.keep_alive or not ex.body_done:
            self._closing = True
            parts.append(b"Connection: close\r\n")
        elif head.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(EOL)
        data = b"".join(parts)
        ex.bytes_out += len(data)
        self._write(data)

    def send_data(self, ex: Exchange, data: bytes) -> None:
        ex.bytes_out += len(data)
        if ex.resp_chunked:
            self._write(chunk_header(len(data)))
            self._write(data)
            self._write(EOL)
        else:
            self._write(data)

    def send_end(self, ex: Exchange) -> None:
        if ex.resp_chunked:
            self._write(CHUNKED_END)
        self._finish(ex)

    def send_continue(self, ex: Exchange) -> None:
        self._write(CONTINUE_100)

    def send_error(self, ex: Exchange, error: ProxyError) -> None:
        result = outcome(error)
        head = ex.head
        close = (
            result.closes
            or self._closing
            or not head.keep_alive
            or (head.has_body and not ex.body_done)
            or head.upgrade_requested
        )
        if close:
            self._closing = True
        ex.resp_status = result.status
        ex.decision_reason = error.reason
        if isinstance(error, UpstreamError):
            metrics.upstream_error(error.reason)
        else:
            metrics.denied(error.reason)
        data = error_response(result.status, error.reason, close=close, head_only=head.is_head)
        ex.bytes_out = len(data)
        ex.resp_started = True
        self._write(data)
        if result.status == 403:
            log.info(
                "denied: cn=%s fp=%s %s %s rule=%s reason=%s",
                self.facts.cn, self.facts.fp16, head.method.decode("ascii", "replace"),
                head.target.decode("ascii", "replace")[:200], ex.rule, error.reason,
            )
        self._finish(ex, error.reason)

    def reset(self, ex: Exchange, reason: str) -> None:
        ex.decision_reason = reason
        ex.resp_done = True
        self._record(ex, reason)
        if self._active is ex:
            self._active = None
        self.abort()

    def is_write_blocked(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def pause_request_body(self) -> None:
        self._pause(_PAUSE_BUFFER)

    def resume_request_body(self) -> None:
        self._resume(_PAUSE_BUFFER)

    def tunnel_opened(self, ex: Exchange, tail: bytes) -> None:
        self._cancel_timer()
        self._tunnel = ex
        self._active = None
        self._upgrade_pending = False
        ex.resp_done = True
        self._record(ex, "upgraded")
        if tail:
            self._write(tail)
        self._resume(_PAUSE_UPGRADE | _PAUSE_PIPELINE | _PAUSE_BUFFER)

    def tunnel_data(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def tunnel_closed(self, ex: Exchange, cause: str) -> None:
        self._tunnel = None
        self._close()

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

    # --- failures of the request stream --------------------------------------------------------------------------
    def _on_parse_failure(self, error: ProxyError) -> None:
        self._broken = True
        self._pending = b""
        p = self._parsing
        self._parsing = None
        ex = p.exchange if p is not None else None
        if ex is not None and ex is self._active:
            # framing broke inside the body being forwarded: the upstream must not take it as complete
            ex.refuse_body(error)
            return
        if self._active is not None:
            self._closing = True  # answer the active request, then close; nothing after it is trusted
            return
        if ex is not None and ex.resp_done:
            self._close()
            return
        bad = Exchange(self, self.ctx, ex.head if ex is not None else _partial_head(p))
        bad.head.keep_alive = False
        bad.refused = True
        self._active = bad
        self.send_error(bad, error)

    # --- re-judging (the registry asks) ---------------------------------------------------------------------------
    def rejudge(self, now: float) -> float:
        if self.facts.peer is None:
            return float("inf")  # no certificate: nothing about it can change; every request is judged
        verdict = judge_peer(self.facts.peer, self.ctx.state, now)
        if verdict.reason is None:
            return verdict.valid_until
        metrics.rejudged_refused(verdict.reason)
        if self._tunnel is not None:
            self._tunnel.close_tunnel(f"refused:{verdict.reason}")
        # idle or busy: the next request (or the queued ones) is refused by judge() with this reason
        return float("inf")

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
        limits = self.ctx.state.settings.limits
        if kind == "body":
            idle = self.loop.time() - self._body_activity
            if idle < limits.body_timeout:
                self._arm("body", limits.body_timeout - idle)
                return
            log.info("client body timeout from %s", self.facts.client_ip.decode())
            ex = self._parsing_exchange()
            if ex is not None and ex is self._active:
                self._broken = True
                ex.refuse_body(ProxyError("client body timeout", "client_body_timeout"))
                return
        elif kind == "head":
            log.info("request head timeout from %s", self.facts.client_ip.decode())
        self._close() if self._active is None else self.abort()

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

    def abort(self) -> None:
        self._broken = True
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def start_drain(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its current response; tunnels close."""
        self._closing = True
        if self._tunnel is not None:
            self._tunnel.close_tunnel("shutdown")
        elif self._active is None and self._parsing is None:
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


def _partial_head(p: _Parsing | None) -> RequestHead:
    """What was read of a head that failed to parse (for the access line)."""
    return RequestHead(b"", p.target if p is not None else b"", "1.1", [], keep_alive=False)


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
