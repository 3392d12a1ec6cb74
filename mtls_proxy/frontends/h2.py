"""The HTTP/2 frontend: one client TLS connection that negotiated ``h2``, on python-hyper's sans-IO ``h2``.

Each stream is one :class:`~mtls_proxy.exchange.exchange.Exchange`, judged by the same
``judge()`` as an HTTP/1.1 request when its head arrives, and forwarded to the same HTTP/1.1
upstream pool. The exchange talks to a :class:`_Stream` (its :class:`Frontend`): flow
control is per stream, so pausing is too.

Flow control, both ways, per stream:
- request bodies: DATA is acknowledged (WINDOW_UPDATE) only once the exchange has written
  it to its upstream connection; while that connection cannot take more (or has not been
  connected yet), the stream's bytes stay unacknowledged, so the client can have at most one
  window in flight per stream and a slow upstream stalls only its own stream;
- responses: upstream bytes are sent as the stream's and the connection's send windows
  allow; the rest waits on the stream, and that stream's upstream read is paused until the
  client opens its window again. A stream (or the connection) stuck on a zero window for
  ``http2.zero_window_timeout`` is reset (or ended with GOAWAY).

Limits (``http2.*``, each exceeded: GOAWAY, a log line ``http2 limit exceeded: <limit>``
and ``mtls_proxy_http2_limit_exceeded_total{limit}``): concurrent streams (h2 enforces
SETTINGS_MAX_CONCURRENT_STREAMS), decoded header list size and HPACK table size (the
decoder enforces them while decoding: HPACK bombs), CONTINUATION frames per header block,
and per-second caps on resets (Rapid Reset), SETTINGS, PING and empty frames.

Malformed requests (RFC 9113 8.1.1) are stream errors: RST_STREAM PROTOCOL_ERROR, see
:mod:`.h2_head`. What h2 itself refuses at the frame level is a connection error.

GOAWAY on drain or when the peer is refused on re-judging is written as a raw frame, not
through ``H2Connection.close_connection``: h2 would then refuse to send or receive anything
more, and open streams must be allowed to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter

from h2.config import H2Configuration
from h2.connection import H2Connection as _Sansio
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, ProtocolError, TooManyStreamsError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hpack.exceptions import InvalidTableSizeError, OversizedHeaderListError
from hyperframe.frame import Frame, GoAwayFrame

from mtls_proxy import metrics
from mtls_proxy.context import ServerContext
from mtls_proxy.errors import ProxyError, UpstreamError
from mtls_proxy.exchange.exchange import BODY_NONE, BODY_STREAM, Exchange
from mtls_proxy.exchange.forwarding import identity_of
from mtls_proxy.exchange.record import record_exchange
from mtls_proxy.frontends.h2_head import Malformed, renew_field, request_head, response_headers
from mtls_proxy.frontends.peer import connection_facts
from mtls_proxy.http1 import error_body
from mtls_proxy.judging import ConnectionFacts, judge_peer, outcome
from mtls_proxy.state import RuntimeState

log = logging.getLogger("mtls_proxy")

PROTOCOL = "h2"
#: the smallest DATA frame sent unless it ends the data at hand (data dribble, CVE-2019-9511)
_MIN_DATA_FRAME = 1024
_TICK = 1.0  # seconds between checks of body and zero-window timeouts while streams are open
# why a stream's upstream read is paused (a bit mask)
_PAUSE_WINDOW = 1
_PAUSE_TRANSPORT = 2
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


class _Limit(DenialOfServiceError):
    """A limit of ours, raised from inside ``h2.receive_data`` (h2 answers it with GOAWAY ENHANCE_YOUR_CALM)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class _CappedFrameBuffer(FrameBuffer):
    """h2's frame buffer with our cap on CONTINUATION frames per header block (h2's own is 64)."""

    def __init__(self, max_continuations: int) -> None:
        super().__init__(server=True)
        self.max_continuations = max_continuations

    @property
    def in_header_block(self) -> bool:
        """A HEADERS frame arrived and its block is not complete yet (CONTINUATION frames owed)."""
        return bool(self._headers_buffer)

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if self._headers_buffer and len(self._headers_buffer) > self.max_continuations:
            raise _Limit("continuation_frames", f"more than {self.max_continuations} CONTINUATION frames")
        return super()._update_header_buffer(f)


def limit_of(exc: ProtocolError) -> str | None:
    """Which of our limits a connection error from h2 means, or None for a plain protocol violation."""
    if isinstance(exc, _Limit):
        return exc.limit
    if isinstance(exc, TooManyStreamsError):
        return "concurrent_streams"
    cause = exc.__cause__
    if isinstance(cause, OversizedHeaderListError):
        return "header_list_size"
    if isinstance(cause, InvalidTableSizeError):
        return "header_table_size"
    return None


class _Stream:
    """One stream: the exchange's frontend. Output waits here while the send window is closed."""

    __slots__ = ("blocked_since", "body_activity", "body_done", "body_paused", "conn", "end_pending", "ended", "ex",
                 "facts", "out", "pause_mask", "sid", "unacked")

    def __init__(self, conn: H2Connection, sid: int, body_done: bool) -> None:
        self.conn = conn
        self.sid = sid
        self.facts: ConnectionFacts = conn.facts
        self.ex: Exchange = None  # type: ignore[assignment]  # set right after
        self.out: list[bytes] = []  # response bytes the send window did not let through yet
        self.end_pending = False
        self.ended = False  # END_STREAM sent
        self.body_done = body_done  # END_STREAM received
        self.body_paused = False
        self.unacked = 0  # flow-controlled bytes received while paused: acknowledged on resume
        self.body_activity = conn.loop.time()
        self.blocked_since = 0.0
        self.pause_mask = 0

    # --- Frontend, for the exchange --------------------------------------------------------------------------
    def identity_for(self, state: RuntimeState) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
        return self.conn.identity_for(state)

    def send_head(self, ex: Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  body: int) -> None:
        self.conn.send_head(self, status, headers, body)

    def send_data(self, ex: Exchange, data: bytes) -> None:
        ex.bytes_out += len(data)
        self.out.append(data)
        self.conn.push(self)

    def send_end(self, ex: Exchange) -> None:
        self.end_pending = True
        self.conn.push(self)

    def send_error(self, ex: Exchange, error: ProxyError) -> None:
        self.conn.send_error(self, error)

    def send_continue(self, ex: Exchange) -> None:
        self.conn.send_continue(self)

    def is_write_blocked(self) -> bool:
        return bool(self.out) or self.conn.is_write_blocked()

    def reset(self, ex: Exchange, reason: str) -> None:
        self.conn.reset(self, reason, ErrorCodes.INTERNAL_ERROR)

    def pause_request_body(self) -> None:
        self.body_paused = True

    def resume_request_body(self) -> None:
        self.body_paused = False
        if self.unacked:
            size, self.unacked = self.unacked, 0
            self.conn.acknowledge(self.sid, size)

    def tunnel_opened(self, ex: Exchange, tail: bytes) -> None:
        self.conn.reset(self, "h2_no_tunnel", ErrorCodes.INTERNAL_ERROR)  # unreachable: no upgrade over h2

    def tunnel_data(self, data: bytes) -> None:
        return None

    def tunnel_closed(self, ex: Exchange, cause: str) -> None:
        return None

    def begin_batch(self) -> None:
        self.conn.begin_batch()

    def end_batch(self) -> None:
        self.conn.end_batch()

    # --- the connection's side ----------------------------------------------------------------------------------
    def pause(self, reason: int) -> None:
        if self.pause_mask == 0:
            self.ex.pause_response()
        self.pause_mask |= reason

    def resume(self, reason: int) -> None:
        if self.pause_mask == 0:
            return
        self.pause_mask &= ~reason
        if self.pause_mask == 0:
            self.ex.resume_response()


class H2Connection(asyncio.Protocol):
    """One client connection speaking HTTP/2: its streams, its limits, its GOAWAY."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self.facts: ConnectionFacts = None  # type: ignore[assignment]  # set in connection_made
        self.limits = ctx.state.settings.http2
        self.h2 = _Sansio(config=H2Configuration(
            client_side=False, header_encoding=None,
            validate_inbound_headers=False, normalize_inbound_headers=False,  # h2_head.request_head does it
        ))
        s = self.limits
        # Initial values (in force at once, as h2's own defaults are): the client learns them from our SETTINGS.
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: s.initial_window_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
            SettingCodes.HEADER_TABLE_SIZE: s.header_table_size,
        })
        self.h2.decoder.max_header_list_size = s.max_header_list_size
        self.h2.decoder.max_allowed_table_size = s.header_table_size
        self.frames = _CappedFrameBuffer(s.max_continuation_frames)
        self.h2.incoming_buffer = self.frames
        self._block_since = 0.0  # when the header block still being received began (0: none)
        self.streams: dict[int, _Stream] = {}
        self._to_start: list[_Stream] = []
        self._last_priority: PriorityUpdated | None = None
        self._batch = 0
        self._closed = False
        self._dead = False  # a connection error or a close: nothing more is read
        self._goaway = ""  # why a GOAWAY was sent ("" none yet): "drain", "refused"
        self._send_timer: asyncio.TimerHandle | None = None
        self._write_paused = False  # the transport asked us to stop writing (the client's TCP window is full)
        self._tick_handle: asyncio.TimerHandle | None = None
        self._last_activity = self.loop.time()
        self._window_start = 0.0
        self._counts: dict[str, int] = {}
        self._id_generation = -1
        self._id_headers: tuple[tuple[bytes, bytes], ...] = ()
        self._renew = b""
        self._renew_fields: tuple[tuple[bytes, bytes], ...] = ()

    # --- connection lifecycle -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        client_ip = str(peername[0]).encode() if isinstance(peername, tuple) else b"-"
        facts = connection_facts(transport, client_ip, self.ctx.state)
        if facts is None:  # CERT_REQUIRED makes this unreachable; fail closed all the same
            self._dead = True
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.facts = facts
        now = time.time()
        if facts.peer is not None:
            metrics.client_cert_seen(facts.peer.not_after, now)
        metrics.CONNECTIONS.inc()
        self.h2.initiate_connection()
        extra = self.limits.connection_window_size - self.h2.inbound_flow_control_window
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self._flush()
        self._arm_tick()
        peer = facts.peer  # None: a client_auth: optional listener, nothing about it changes with time
        self.ctx.opened(self, judge_peer(peer, self.ctx.state, now).valid_until if peer is not None else float("inf"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._dead = True
        for handle in (self._send_timer, self._tick_handle):
            if handle is not None:
                handle.cancel()
        self._send_timer = self._tick_handle = None
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            ex = st.ex
            if not ex.resp_done:
                ex.client_gone()
                if not ex.resp_started:
                    ex.resp_status = 499
                ex.resp_done = True
                self._record(ex, "client_closed")
        if self.facts is not None:
            metrics.CONNECTIONS.dec()
            self.ctx.closed(self)

    def pause_writing(self) -> None:
        """The client is not taking our bytes: pause every stream's upstream, cut it off after send_timeout."""
        self._write_paused = True
        for st in self.streams.values():
            st.pause(_PAUSE_TRANSPORT)
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.ctx.state.settings.limits.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        for st in list(self.streams.values()):
            st.resume(_PAUSE_TRANSPORT)
            if st.out:
                self.push(st)

    def _on_send_timeout(self) -> None:
        self._send_timer = None
        if self._closed:
            return
        log.info("send timeout: client %s took no bytes for %.0fs", self.facts.client_ip.decode(),
                 self.ctx.state.settings.limits.send_timeout)
        metrics.denied("send_timeout")
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            st.ex.client_gone()  # the upstream side is closed, never returned to the pool
            st.ex.resp_done = True
            self._record(st.ex, "send_timeout")
        self.abort()

    # --- input ---------------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        self._last_activity = self.loop.time()
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            self._connection_error(exc)
            return
        self._batch += 1
        try:
            for event in events:
                if self._dead:
                    break
                self._dispatch(event)
            # Streams start after the whole read is processed: one reset in the same read (Rapid Reset's
            # HEADERS + RST_STREAM) never reaches the upstream at all.
            starting, self._to_start = self._to_start, []
            for st in starting:
                if not self._dead and self.streams.get(st.sid) is st:
                    st.ex.start()
        finally:
            self._batch -= 1
        self._flush()
        if not self.frames.in_header_block:
            self._block_since = 0.0
        elif not self._block_since:
            self._block_since = self._last_activity  # a slow header block: limits.head_timeout applies
            self._arm_tick()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._on_data(event.stream_id, event.data, event.flow_controlled_length, event.stream_ended is not None)
        elif isinstance(event, RequestReceived):
            self._on_request(event.stream_id, event.headers, event.stream_ended is not None)
            self._last_priority = event.priority_updated
        elif isinstance(event, StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None and not st.body_done:
                st.body_done = True
                st.ex.client_body_end()
        elif isinstance(event, WindowUpdated):
            targets = list(self.streams.values()) if event.stream_id == 0 else [self.streams.get(event.stream_id)]
            for st in targets:
                if st is not None and st.out:
                    self.push(st)
        elif isinstance(event, StreamReset):
            if event.remote_reset:
                self._on_client_reset(event.stream_id)
        elif isinstance(event, RemoteSettingsChanged):
            if not self._count("settings", self.limits.max_settings_per_second) and (
                    SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings):
                for st in list(self.streams.values()):
                    if st.out:
                        self.push(st)
        elif isinstance(event, PingReceived):
            self._count("pings", self.limits.max_pings_per_second)
        elif isinstance(event, PriorityUpdated):
            if event is not self._last_priority:  # not the one a HEADERS frame carried
                self._count("empty_frames", self.limits.max_empty_frames_per_second)
        elif isinstance(event, ConnectionTerminated):
            # The client said GOAWAY: h2 then sends nothing more, so open streams cannot be answered.
            log.info("http2 GOAWAY from client=%s cn=%s code=%s open_streams=%d", self.facts.client_ip.decode(),
                     self.facts.cn, event.error_code, len(self.streams))
            self._dead = True
            self._close()
        # TrailersReceived: dropped, as HTTP/1.1 trailers are (its END_STREAM comes as StreamEnded)

    def _on_request(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self._goaway == "drain":
            self._rst(sid, ErrorCodes.REFUSED_STREAM)  # after our GOAWAY: retry elsewhere
            return
        try:
            head = request_head(headers, end_stream)
        except Malformed as exc:
            self._malformed(sid, exc.reason)
            return
        st = _Stream(self, sid, end_stream)
        ex = Exchange(st, self.ctx, head)
        st.ex = ex
        self.streams[sid] = st
        if end_stream:
            ex.client_body_end()
        self._to_start.append(st)
        self._arm_tick()

    def _on_data(self, sid: int, data: bytes, flow_len: int, ended: bool) -> None:
        st = self.streams.get(sid)
        if not data and not ended and self._count("empty_frames", self.limits.max_empty_frames_per_second):
            return
        if st is None or st.body_done:
            self.acknowledge(sid, flow_len)  # a stream we already finished: keep the connection window open
            return
        st.body_activity = self.loop.time()
        if data:
            st.ex.client_body(data)
        if self.streams.get(sid) is st and st.body_paused:
            st.unacked += flow_len  # acknowledged once the upstream takes more
        else:
            self.acknowledge(sid, flow_len)

    def _on_client_reset(self, sid: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None and not st.ex.resp_done:
            ex = st.ex
            ex.client_gone()
            if not ex.resp_started:
                ex.resp_status = 499
            ex.resp_done = True
            self._record(ex, "client_reset")
        self._count("resets", self.limits.max_resets_per_second)
        self._maybe_close()

    def _malformed(self, sid: int, reason: str) -> None:
        self._rst(sid, ErrorCodes.PROTOCOL_ERROR)
        metrics.denied(reason)
        log.info("http2 stream reset: client=%s cn=%s stream=%d reason=%s", self.facts.client_ip.decode(),
                 self.facts.cn, sid, reason)
        self._count("resets", self.limits.max_resets_per_second)

    def acknowledge(self, sid: int, size: int) -> None:
        if size > 0 and not self._dead:
            self.h2.acknowledge_received_data(size, sid)
            if not self._batch:
                self._flush()

    # --- limits ----------------------------------------------------------------------------------------------
    def _count(self, what: str, cap: int) -> bool:
        """Count one ``what`` in the current one-second window; past ``cap``: GOAWAY. True when exceeded."""
        now = self.loop.time()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._counts = {}
        n = self._counts.get(what, 0) + 1
        self._counts[what] = n
        if n > cap:
            self._exceeded(f"{what}_per_second", ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        return False

    def _exceeded(self, limit: str, code: ErrorCodes) -> None:
        """One of our limits: GOAWAY with ``code``, log, count, close."""
        if self._dead:
            return
        self._log_limit(limit)
        self.h2.close_connection(code, additional_data=limit.encode())
        self._dead = True
        self._flush()
        self._close()

    def _log_limit(self, limit: str) -> None:
        metrics.http2_limit_exceeded(limit)
        log.warning("http2 limit exceeded: %s client=%s cn=%s", limit, self.facts.client_ip.decode(),
                    self.facts.cn)

    def _connection_error(self, exc: ProtocolError) -> None:
        """h2 refused a frame: it has queued its GOAWAY; send it and close."""
        self._dead = True
        limit = limit_of(exc)
        if limit is not None:
            self._log_limit(limit)
        else:
            metrics.denied("h2_protocol_error")
            log.info("http2 connection error: client=%s cn=%s code=%s detail=%s", self.facts.client_ip.decode(),
                     self.facts.cn, getattr(exc, "error_code", "?"), exc)
        self._flush()
        self._close()

    # --- output, for the streams --------------------------------------------------------------------------------
    def identity_for(self, state: RuntimeState) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
        if self._id_generation != state.generation:
            self._id_headers, self._renew = identity_of(self.facts.peer, state)
            self._renew_fields = renew_field(self._renew)
            self._id_generation = state.generation
        return self._id_headers, self._renew

    def send_head(self, st: _Stream, status: int, headers: list[tuple[bytes, bytes]], body: int) -> None:
        if self._dead or self.streams.get(st.sid) is not st:
            return
        fields = response_headers(status, headers, keep_length=body != BODY_STREAM, extra=self._renew_fields)
        end = body == BODY_NONE
        try:
            self.h2.send_headers(st.sid, fields, end_stream=end)
        except ProtocolError:  # StreamClosedError: the client reset it in a read not yet dispatched
            self._gone(st)
            return
        st.ended = end
        st.ex.bytes_out += sum(len(n) + len(v) for n, v in fields)
        if not self._batch:
            self._flush()

    def send_continue(self, st: _Stream) -> None:
        if not self._dead and self.streams.get(st.sid) is st:
            try:
                self.h2.send_headers(st.sid, [(b":status", b"100")])
            except ProtocolError:
                self._gone(st)
                return
            if not self._batch:
                self._flush()

    def send_error(self, st: _Stream, error: ProxyError) -> None:
        ex = st.ex
        result = outcome(error)
        ex.resp_status = result.status
        ex.decision_reason = error.reason
        ex.resp_started = True
        if isinstance(error, UpstreamError):
            metrics.upstream_error(error.reason)
        else:
            metrics.denied(error.reason)
        if result.status == 403:
            head = ex.head
            log.info(
                "denied: cn=%s fp=%s %s %s rule=%s reason=%s",
                self.facts.cn, self.facts.fp16, head.method.decode("ascii", "replace"),
                head.target.decode("ascii", "replace")[:200], ex.rule, error.reason,
            )
        if self._dead or self.streams.get(st.sid) is not st:
            return
        body = error_body(result.status, error.reason)
        fields = [(b":status", b"%d" % result.status), _JSON, (b"content-length", b"%d" % len(body)), _NO_STORE]
        if ex.head.is_head:
            body = b""
        try:
            self.h2.send_headers(st.sid, fields, end_stream=not body)
        except ProtocolError:  # StreamClosedError: the client reset it in a read not yet dispatched
            self._gone(st)
            return
        st.ended = not body
        ex.bytes_out = sum(len(n) + len(v) for n, v in fields) + len(body)
        if body:
            st.out.append(body)
        st.end_pending = True
        self.push(st)

    def push(self, st: _Stream) -> None:
        """Send what the windows allow of ``st``'s output; end the stream when all is sent and it ended."""
        if self._dead or self.streams.get(st.sid) is not st:
            return
        h2 = self.h2
        out = st.out
        try:
            while out and not self._write_paused:  # nothing more while the client is not taking our bytes
                room = min(h2.local_flow_control_window(st.sid), h2.max_outbound_frame_size)
                chunk = out[0]
                if room < min(len(chunk), _MIN_DATA_FRAME):
                    break  # no frames of a few bytes for a client that opens its window a few bytes at a time
                if len(chunk) <= room:
                    out.pop(0)
                    h2.send_data(st.sid, chunk, end_stream=not out and st.end_pending)
                    if not out and st.end_pending:
                        st.ended = True
                else:
                    h2.send_data(st.sid, chunk[:room])
                    out[0] = chunk[room:]
            if not out and st.end_pending and not st.ended:
                h2.end_stream(st.sid)
                st.ended = True
        except ProtocolError:  # StreamClosedError: the client reset it in a read not yet dispatched
            self._gone(st)
            return
        if out:
            if self._write_paused:
                st.pause(_PAUSE_TRANSPORT)  # resume_writing pushes it on
            else:
                if not st.blocked_since:
                    st.blocked_since = self.loop.time()
                st.pause(_PAUSE_WINDOW)
        else:
            st.blocked_since = 0.0
            if st.end_pending:
                self._finish(st)
            else:
                st.resume(_PAUSE_WINDOW)
        if not self._batch:
            self._flush()

    def _finish(self, st: _Stream) -> None:
        """The response is complete on the wire; a request body still coming is stopped (RFC 9113 8.1)."""
        self.streams.pop(st.sid, None)
        ex = st.ex
        ex.resp_done = True
        self._record(ex, "-")
        if not st.body_done:
            self._rst(st.sid, ErrorCodes.NO_ERROR)
        self._maybe_close()

    def _gone(self, st: _Stream) -> None:
        """h2 refused to send on the stream (the client reset it in a read not yet dispatched): abandon it."""
        if self.streams.get(st.sid) is st:
            self._on_client_reset(st.sid)

    def _rst(self, sid: int, code: ErrorCodes) -> None:
        if self._dead:
            return
        try:
            self.h2.reset_stream(sid, code)
        except ProtocolError:
            return  # closed meanwhile by the client: nothing to reset
        if not self._batch:
            self._flush()

    def reset(self, st: _Stream, reason: str, code: ErrorCodes) -> None:
        """The response cannot be completed: RST_STREAM, so a short body is never taken as whole."""
        ex = st.ex
        ex.decision_reason = reason
        ex.resp_done = True
        self._record(ex, reason)
        if self.streams.pop(st.sid, None) is not None:
            st.out.clear()
            self._rst(st.sid, code)
        self._maybe_close()

    def is_write_blocked(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def begin_batch(self) -> None:
        self._batch += 1

    def end_batch(self) -> None:
        self._batch -= 1
        if not self._batch:
            self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)

    def _record(self, ex: Exchange, reason: str) -> None:
        record_exchange(self.facts, ex, reason, perf_counter() - ex.started, PROTOCOL)

    # --- timers: request body silence, zero windows, idle -------------------------------------------------------
    def _arm_tick(self) -> None:
        if self._closed:
            return
        handle = self._tick_handle
        busy = bool(self.streams) or bool(self._block_since)
        if handle is not None and busy and handle.when() > self.loop.time() + _TICK:
            handle.cancel()  # the idle check was armed: streams need the short tick
            handle = self._tick_handle = None
        if handle is None:
            delay = _TICK if busy else self.ctx.state.settings.limits.idle_timeout
            self._tick_handle = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        if self._closed:
            return
        now = self.loop.time()
        limits = self.ctx.state.settings.limits
        if self._block_since and now - self._block_since >= limits.head_timeout:
            log.info("request head timeout from %s (an HTTP/2 header block left unfinished)",
                     self.facts.client_ip.decode())
            self._dead = True
            self._close()
            return
        if not self.streams:
            if self._block_since:
                self._tick_handle = self.loop.call_later(_TICK, self._tick)
                return
            idle = now - self._last_activity
            if idle >= limits.idle_timeout:
                self._send_goaway("idle")
                self._close()
                return
            self._tick_handle = self.loop.call_later(limits.idle_timeout - idle, self._tick)
            return
        for st in list(self.streams.values()):
            if self.streams.get(st.sid) is not st:
                continue
            if st.blocked_since and now - st.blocked_since >= self.limits.zero_window_timeout:
                if self.h2.outbound_flow_control_window <= 0:
                    self._exceeded("zero_window", ErrorCodes.ENHANCE_YOUR_CALM)  # the whole connection is stuck
                    return
                self._log_limit("zero_window")
                st.ex.client_gone()  # the upstream response is abandoned with the stream
                self.reset(st, "zero_window_timeout", ErrorCodes.CANCEL)
            elif (not st.body_done and not st.body_paused and not st.ex.refused
                  and now - st.body_activity >= limits.body_timeout):
                log.info("client body timeout from %s (stream %d)", self.facts.client_ip.decode(), st.sid)
                st.ex.refuse_body(ProxyError("client body timeout", "client_body_timeout"))
        self._last_activity = now
        self._arm_tick()

    # --- GOAWAY, drain and re-judging (the registry asks) -------------------------------------------------------
    def _send_goaway(self, why: str) -> None:
        """A raw GOAWAY(NO_ERROR): the client opens no more streams here, the open ones go on."""
        if self._goaway or self._dead or self.transport is None:
            return
        self._goaway = why
        self._flush()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.h2.highest_inbound_stream_id,
                            error_code=ErrorCodes.NO_ERROR)
        self.transport.write(frame.serialize())

    def _maybe_close(self) -> None:
        if self._goaway and not self.streams and not self._closed:
            self._flush()
            self._close()

    def rejudge(self, now: float) -> float:
        if self.facts.peer is None:
            return float("inf")  # no certificate: every stream is judged anyway
        verdict = judge_peer(self.facts.peer, self.ctx.state, now)
        if verdict.reason is None:
            return verdict.valid_until
        metrics.rejudged_refused(verdict.reason)
        # GOAWAY; streams already open finish, streams that still arrive are judged (and refused: 403)
        self._send_goaway("refused")
        self._maybe_close()
        return float("inf")

    def start_drain(self) -> None:
        """Shutdown: GOAWAY; the open streams finish, new ones are refused (REFUSED_STREAM); then close."""
        if self._goaway == "refused":
            self._goaway = "drain"
        self._send_goaway("drain")
        self._maybe_close()

    def drained(self) -> bool:
        if self._closed:
            return True
        if self.streams:
            return False
        return self.transport is None or self.transport.get_write_buffer_size() == 0

    def _close(self) -> None:
        self._dead = True
        if self.transport is not None and not self._closed:
            self.transport.close()

    def abort(self) -> None:
        self._dead = True
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<H2Connection streams={len(self.streams)} goaway={self._goaway!r}>"
