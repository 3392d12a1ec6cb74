"""One request/response between a client frontend and Django, and the tunnel it may become.

An :class:`Exchange` is created by its frontend when a request head has been parsed and
is *started* when its turn comes: only then is it judged (:func:`mtls_proxy.judging.judge`,
with the state and time current then) and, if allowed, sent upstream. It owns what belongs
to one request: its body (forwarded as it arrives, or held up to a bound while the
exchange waits for its turn or for an upstream connection), its upstream connection and
read timer, the single retry of an idempotent request on a pooled connection that died,
and, after a ``101``, the WebSocket tunnel with its idle and lifetime timers.

It talks to its frontend only through :class:`Frontend` (send a head, data, the end, an
error; reset; pause or resume the request body), so the same exchange serves any client
protocol. The upstream side is always HTTP/1.1.

Framing rules that keep "nothing lost" true:
- the upstream request body is re-framed from what the frontend decoded; if the client
  goes away or breaks framing mid-body, the upstream connection is reset, so Django never
  sees a cut-short body as complete;
- if the upstream dies mid-response, the frontend resets the client's stream, never ends it
  with a final chunk or a short Content-Length.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from mtls_proxy import metrics
from mtls_proxy.errors import ProxyError, Refused, UpstreamError, UpstreamTimeout
from mtls_proxy.exchange.forwarding import upstream_head
from mtls_proxy.http1 import CHUNKED_END, EOL, chunk_header
from mtls_proxy.judging import ConnectionFacts, RequestHead, judge

if TYPE_CHECKING:
    from mtls_proxy.context import ServerContext
    from mtls_proxy.state import RuntimeState
    from mtls_proxy.upstream import UpstreamConnection

log = logging.getLogger("mtls_proxy")

_RETRYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_BODYLESS_STATUS = frozenset({204, 304})
#: request body bytes held while the exchange waits (its turn, an upstream connection); then reading pauses
BODY_BUFFER_LIMIT = 256 * 1024

# how the upstream delimits the response body (the frontend re-frames it for its client)
BODY_NONE = 0  # no body: HEAD, 1xx, 204, 304
BODY_LENGTH = 1  # Content-Length, passed on as is
BODY_STREAM = 2  # chunked upstream, or until the upstream closes: the frontend frames it


class Frontend(Protocol):
    """What an exchange needs of the client side (HTTP/1.1 today, HTTP/2 later)."""

    facts: ConnectionFacts

    def identity_for(self, state: RuntimeState) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
        """The identity headers (without signature) and the response's renew header, cached per state."""
        ...

    def send_head(self, ex: Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  body: int) -> None: ...
    def send_data(self, ex: Exchange, data: bytes) -> None: ...
    def send_end(self, ex: Exchange) -> None:
        """The response is complete: finish the exchange (log it, go on with the next)."""
        ...

    def send_error(self, ex: Exchange, error: ProxyError) -> None:
        """Answer ``ex`` (nothing sent yet) with ``error`` and finish it."""
        ...

    def send_continue(self, ex: Exchange) -> None: ...
    def is_write_blocked(self) -> bool:
        """The client has not taken all we sent (so a quiet upstream is not the slow side)."""
        ...

    def reset(self, ex: Exchange, reason: str) -> None:
        """The response cannot be completed: cut the client's stream so a short body is never taken as whole."""
        ...

    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...
    def tunnel_opened(self, ex: Exchange, tail: bytes) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_closed(self, ex: Exchange, cause: str) -> None: ...
    def begin_batch(self) -> None: ...
    def end_batch(self) -> None: ...


class Exchange:
    """One request/response; the upstream connection's owner while it serves this request."""

    __slots__ = (
        "_timer",
        "body_buffer",
        "body_buffered",
        "body_done",
        "body_received",
        "bytes_out",
        "ctx",
        "decision_reason",
        "early_tunnel",
        "front",
        "head",
        "max_body",
        "refused",
        "resp_chunked",
        "resp_close_delimited",
        "resp_done",
        "resp_headers",
        "resp_reason",
        "resp_started",
        "resp_status",
        "rule",
        "started",
        "tunnel",
        "tunnel_activity",
        "tunnel_opened_at",
        "upstream",
        "upstream_activity",
        "upstream_keep_alive",
        "upstream_request",
        "upstream_started",
        "upstream_time",
    )

    def __init__(self, front: Frontend, ctx: ServerContext, head: RequestHead) -> None:
        self.front = front
        self.ctx = ctx
        self.head = head
        self.started = perf_counter()
        self.rule = "-"
        self.decision_reason = "-"
        self.max_body = -1  # -1: not judged yet
        self.refused = False
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.body_received = 0
        self.body_done = False
        self.early_tunnel = b""
        self.upstream: UpstreamConnection | None = None
        self.upstream_request = b""
        self.upstream_started = 0.0
        self.upstream_time = 0.0
        self.upstream_activity = 0.0
        self.upstream_keep_alive = False
        self.resp_status = 0
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_started = False
        self.resp_done = False
        self.resp_close_delimited = False
        self.resp_chunked = False  # set by an HTTP/1.1 frontend that chunk-frames the response
        self.bytes_out = 0
        self.tunnel = False
        self.tunnel_opened_at = 0.0
        self.tunnel_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None  # the tunnel's (idle, lifetime)

    # --- its turn: judge, then forward ------------------------------------------------------------------------
    def start(self) -> None:
        """Judge by the current state and time; answer the refusal or send the request upstream."""
        state = self.ctx.state
        head = self.head
        front = self.front
        verdict = judge(head, front.facts, state, time.time())
        self.rule = verdict.rule
        self.decision_reason = verdict.reason
        if not verdict.allowed:
            self.refused = True
            self.body_buffer = []
            self.body_buffered = 0
            front.resume_request_body()
            front.send_error(self, Refused(verdict.reason, verdict.status))
            return
        if front.facts.peer is None and not self.ctx.anonymous_limiter.allow(front.facts.client_ip, time.time()):
            self.refused = True
            front.send_error(self, Refused("rate_limited", 429))  # admission: no identity, so per address
            return
        self.max_body = verdict.max_body
        if self.body_received > self.max_body:
            self.refuse_body(Refused("body_too_large", 413, f"body over {self.max_body} bytes"))
            return
        conn_headers, _ = front.identity_for(state)
        identity = state.identity.request_headers(
            conn_headers, method=head.method, target=head.target, host=head.host,
            content_length=head.content_length, chunked=head.chunked, anonymous=front.facts.peer is None,
        )
        self.upstream_request = upstream_head(head, front.facts, identity)
        up = self.ctx.pool.acquire_idle()
        if up is not None:
            self._send_upstream(up)  # the common keep-alive case: no task, no await
        else:
            self.ctx.loop.create_task(self._forward())

    async def _forward(self, fresh: bool = False) -> None:
        """Open (or wait for) an upstream connection, then send the request on it."""
        pool = self.ctx.pool
        try:
            up = await (pool.connect() if fresh else pool.acquire())
        except UpstreamError as exc:
            if not self.resp_done and not self.refused:
                self.front.send_error(self, exc)
            return
        if self.resp_done or self.refused:
            pool.release(up)
            return
        self._send_upstream(up)

    def _send_upstream(self, up: UpstreamConnection) -> None:
        """Send the head and whatever body arrived meanwhile; the response comes back through callbacks."""
        self.upstream = up
        self.upstream_started = perf_counter()
        self.upstream_activity = self.ctx.loop.time()
        up.attach(self)
        up.write(self.upstream_request)
        if self.body_buffer:
            self._flush_body_buffer(up)
        elif self.body_done and self.head.chunked:
            up.write(CHUNKED_END)
        if self.head.expect_continue and not self.body_done and self.body_received == 0:
            self.front.send_continue(self)
        self._arm_upstream()

    def _flush_body_buffer(self, up: UpstreamConnection) -> None:
        chunks = self.body_buffer
        self.body_buffer = []
        self.body_buffered = 0
        if self.head.chunked:
            framed: list[bytes] = []
            for c in chunks:
                framed += (chunk_header(len(c)), c, EOL)
            if self.body_done:
                framed.append(CHUNKED_END)
            up.writelines(framed)
        else:
            up.writelines(chunks)
        self.front.resume_request_body()

    # --- the request body, as the frontend decodes it --------------------------------------------------------
    def client_body(self, data: bytes) -> None:
        n = len(data)
        self.body_received += n
        if self.refused:
            return  # discarded; the connection closes after the refusal
        if 0 <= self.max_body < self.body_received:
            self.refuse_body(Refused("body_too_large", 413, f"body over {self.max_body} bytes"))
            return
        up = self.upstream
        if up is not None:
            # the upstream read timer counts from the end of the request: while the body still flows the
            # upstream is not late (a slow phone upload must not get 504 upstream_timeout)
            self.upstream_activity = self.ctx.loop.time()
            if self.head.chunked:
                up.writelines((chunk_header(n), data, EOL))
            else:
                up.write(data)
        else:
            self.body_buffer.append(data)
            self.body_buffered += n
            if self.body_buffered > BODY_BUFFER_LIMIT:
                self.front.pause_request_body()

    def client_body_end(self) -> None:
        self.body_done = True
        self.upstream_activity = self.ctx.loop.time()
        up = self.upstream
        if up is not None and self.head.chunked and not self.refused:
            up.write(CHUNKED_END)

    def refuse_body(self, error: ProxyError) -> None:
        """The body broke a limit (size, time) or its framing: reset upstream, answer if still possible."""
        self.refused = True
        self.body_buffer = []
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        self.ctx.upstream_watch.discard(self)
        if not self.resp_started and not self.resp_done:
            self.front.send_error(self, error)
        elif not self.resp_done:
            self.front.reset(self, error.reason)

    def client_gone(self) -> None:
        """The client connection is lost: a partial request must never reach Django as complete."""
        self._cancel_timer()
        up = self.upstream
        self.upstream = None
        if up is not None:
            if self.tunnel:
                up.close()
            elif not self.resp_done:
                up.abort()
        if self.tunnel:
            self.tunnel = False
            metrics.tunnel_closed("client_closed")

    # --- upstream events (the pool connection's owner) -----------------------------------------------------
    def on_upstream_status(self, reason: bytes) -> None:
        self.resp_reason = reason

    def on_upstream_header(self, name: bytes, value: bytes) -> None:
        self.resp_headers.append((name, value))

    def on_upstream_headers_complete(self, status: int, keep_alive: bool) -> None:
        self.upstream_activity = self.ctx.loop.time()
        if 100 <= status < 200 and status != 101:
            self.resp_headers = []  # interim response (the proxy answers Expect itself): dropped
            return
        head = self.head
        self.resp_status = status
        self.upstream_keep_alive = keep_alive
        self.upstream_time = perf_counter() - self.upstream_started
        has_length = False
        codings: bytes | None = None
        for name, value in self.resp_headers:
            key = name.lower()
            if key == b"transfer-encoding":
                codings = value.strip().lower() if codings is None else codings + b"," + value.strip().lower()
            elif key == b"content-length":
                has_length = True
        if codings is not None and codings != b"chunked":
            # llhttp decodes only chunked: "gzip, chunked" would reach the client as bare gzip bytes with
            # its coding dropped, and "gzip" alone would be read to the close. Neither is forwarded.
            self._upstream_failed(UpstreamError(f"upstream Transfer-Encoding {codings!r}",
                                                "upstream_bad_transfer_coding"))
            return
        if status == 101:
            if not head.is_websocket:
                self._upstream_failed(UpstreamError("101 to a request that asked for no upgrade",
                                                    "upstream_bad_response"))
                return
            body = BODY_NONE
        elif head.is_head or status in _BODYLESS_STATUS:
            body = BODY_NONE
        elif has_length and codings is None:
            body = BODY_LENGTH
        else:
            body = BODY_STREAM
            self.resp_close_delimited = codings is None
        self.resp_started = True
        self.front.send_head(self, status, self.resp_reason, self.resp_headers, body)
        if head.is_head and status != 101:
            # The response parser cannot know this answers a HEAD: it would wait for the body that its
            # Content-Length/Transfer-Encoding announce, which never comes. The response ends here
            # (and the upstream connection, whose parser is now out of step, is closed).
            self._complete_response()

    def on_upstream_body(self, data: bytes) -> None:
        self.upstream_activity = self.ctx.loop.time()
        self.front.send_data(self, data)

    def begin_batch(self) -> None:
        self.front.begin_batch()

    def end_batch(self) -> None:
        self.front.end_batch()

    def on_upstream_message_complete(self) -> None:
        if not self.resp_started:
            return  # end of an interim 1xx response
        if self.resp_status == 101:
            return  # the tunnel starts in on_upstream_upgraded
        self._complete_response()

    def _complete_response(self) -> None:
        up = self.upstream
        self.upstream = None
        self.ctx.upstream_watch.discard(self)
        if up is not None:
            reusable = (self.upstream_keep_alive and self.body_done and not self.head.is_head
                        and not self.resp_close_delimited and not self.refused)
            up.finish(reusable)
        self.front.send_end(self)

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        if self.tunnel:
            self._close_tunnel("upstream_closed")
            return
        if self.resp_done:
            return
        if self.resp_started and self.resp_close_delimited and exc is None:
            self.upstream = None
            self._complete_response()  # a close-delimited body ends at a clean EOF
            return
        up = self.upstream
        head = self.head
        if (
            up is not None
            and not self.resp_started
            and up.reused
            and up.received == 0
            and not head.has_body
            and not head.is_websocket
            and head.method in _RETRYABLE_METHODS
        ):
            # The pooled connection was closed under us before any answer: retry once on a fresh one.
            # Only idempotent methods (RFC 9110 9.2.2): the upstream may have run the request and died
            # before answering, and a POST must not run twice (another worker would take the retry).
            self.upstream = None
            self.ctx.upstream_watch.discard(self)
            self.ctx.loop.create_task(self._forward(fresh=True))
            return
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(
            f"upstream closed the connection: {exc}" if exc else "upstream closed the connection",
            "upstream_reset",
        )
        self._upstream_failed(error)

    def _upstream_failed(self, error: UpstreamError) -> None:
        up = self.upstream
        self.upstream = None
        self.ctx.upstream_watch.discard(self)
        if up is not None:
            up.abort()
        if self.resp_started:
            metrics.upstream_error(error.reason)
            self.front.reset(self, error.reason)  # never present a short body as complete
        else:
            self.front.send_error(self, error)

    def on_upstream_pause_writing(self) -> None:
        self.front.pause_request_body()

    def on_upstream_resume_writing(self) -> None:
        self.front.resume_request_body()

    # --- client backpressure ---------------------------------------------------------------------------------
    def pause_response(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_response(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # --- the upstream read timeout: one shared watch (context.DeadlineWatch), no timer handle per request ------
    def _arm_upstream(self) -> None:
        self.ctx.upstream_watch.add(self)

    def _cancel_timer(self) -> None:
        self.ctx.upstream_watch.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def check_deadline(self, now: float) -> bool:
        """Called by the watch: True while the exchange still waits on the upstream."""
        if self.upstream is None or self.resp_done or self.tunnel:
            return False
        idle = now - self.upstream_activity
        if idle < self.ctx.state.settings.limits.upstream_read_timeout or self.front.is_write_blocked():
            return True  # still active, or we are the slow side (client backpressure)
        self._upstream_failed(UpstreamTimeout("upstream read timed out", "upstream_timeout"))
        return False

    def _on_timer(self) -> None:
        self._timer = None
        if self.tunnel:
            self._on_tunnel_timer()

    # --- the tunnel ---------------------------------------------------------------------------------------------
    def on_upstream_upgraded(self, tail: bytes) -> None:
        up = self.upstream
        if up is None:  # the 101 was refused already (502): nothing to tunnel
            return
        self.tunnel = True
        self.ctx.upstream_watch.discard(self)
        now = self.ctx.loop.time()
        self.tunnel_opened_at = self.tunnel_activity = now
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.ctx.loop.call_later(self._tunnel_deadline() - now, self._on_timer)
        self.front.tunnel_opened(self, tail)
        if self.early_tunnel:
            up.write(self.early_tunnel)
            self.early_tunnel = b""

    def _tunnel_deadline(self) -> float:
        limits = self.ctx.state.settings.limits
        return min(self.tunnel_activity + limits.tunnel_idle_timeout,
                   self.tunnel_opened_at + limits.tunnel_max_lifetime)

    def _on_tunnel_timer(self) -> None:
        if not self.tunnel:
            return
        limits = self.ctx.state.settings.limits
        now = self.ctx.loop.time()
        if now >= self.tunnel_opened_at + limits.tunnel_max_lifetime:
            self._close_tunnel("max_lifetime")
        elif now >= self.tunnel_activity + limits.tunnel_idle_timeout:
            self._close_tunnel("idle_timeout")
        else:
            self._timer = self.ctx.loop.call_later(self._tunnel_deadline() - now, self._on_timer)

    def tunnel_from_client(self, data: bytes) -> None:
        self.tunnel_activity = self.ctx.loop.time()
        if self.upstream is not None:
            self.upstream.write(data)

    def on_upstream_tunnel_data(self, data: bytes) -> None:
        self.tunnel_activity = self.ctx.loop.time()
        self.front.tunnel_data(data)

    def close_tunnel(self, cause: str) -> None:
        """Close the tunnel now (its client was refused on re-judging, or the server drains)."""
        if self.tunnel:
            self._close_tunnel(cause)

    def _close_tunnel(self, cause: str) -> None:
        self.tunnel = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.close()
        metrics.tunnel_closed(cause)
        log.info("tunnel closed: cn=%s cause=%s", self.front.facts.cn, cause)
        self.front.tunnel_closed(self, cause)
