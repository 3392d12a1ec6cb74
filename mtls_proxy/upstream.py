"""The upstream side: one protocol per pooled HTTP/1.1 keep-alive connection to Django.

A connection parses responses with llhttp (httptools) and hands every event to the
client connection it is currently serving (its ``owner``); it never buffers a body.
The pool keeps idle connections LIFO with an idle timeout shorter than the
upstream server's keep-alive, so a reused connection is rarely one the server is
closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol

import httptools

from mtls_proxy.config import Limits, UpstreamSettings
from mtls_proxy.errors import UpstreamError, UpstreamTimeout


class ResponseSink(Protocol):
    """What a client connection implements to receive one upstream response."""

    def on_upstream_status(self, reason: bytes) -> None: ...
    def on_upstream_header(self, name: bytes, value: bytes) -> None: ...
    def on_upstream_headers_complete(self, status: int, keep_alive: bool) -> None: ...
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_message_complete(self) -> None: ...
    def on_upstream_upgraded(self, tail: bytes) -> None: ...
    def on_upstream_tunnel_data(self, data: bytes) -> None: ...
    def on_upstream_lost(self, exc: BaseException | None) -> None: ...
    def on_upstream_pause_writing(self) -> None: ...
    def begin_batch(self) -> None: ...
    def end_batch(self) -> None: ...
    def on_upstream_resume_writing(self) -> None: ...


class _SurplusBytes(Exception):
    """A second response began in bytes that followed a complete one: the upstream is out of step."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_finished", "_idle_handle", "_in_feed", "_parser", "closed", "owner", "pool", "received", "reused",
                 "transport", "tunnel")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.owner: ResponseSink | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._idle_handle: asyncio.TimerHandle | None = None
        self.closed = False
        self.tunnel = False
        self.reused = False
        #: bytes received for the current response (0 means nothing came back yet: safe to retry)
        self.received = 0
        #: the owner's verdict on reuse once its response is complete (None: not complete yet)
        self._finished: bool | None = None
        self._in_feed = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            # Bytes while idle in the pool: the server broke the protocol; never reuse.
            self.close()
            return
        if self.tunnel:
            owner.on_upstream_tunnel_data(data)
            return
        self.received += len(data)
        owner.begin_batch()
        self._in_feed = True
        surplus = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.owner is not owner:  # the owner refused the 101 (nobody asked to upgrade) and let go
                self.close()
            else:
                self.tunnel = True
                owner.on_upstream_upgraded(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _SurplusBytes):
                raise
            surplus = True
        except httptools.HttpParserError as exc:
            if self._finished is None:
                self.close()
                self.owner = None
                owner.on_upstream_lost(UpstreamError(f"invalid response from upstream: {exc}",
                                                     "upstream_bad_response"))
            else:
                surplus = True  # garbage after a complete response
        finally:
            self._in_feed = False
            owner.end_batch()
        if self._finished is not None:
            self._settle(self._finished and not surplus)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports to the owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.on_upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.on_upstream_resume_writing()

    # --- httptools callbacks --------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._finished is not None:
            raise _SurplusBytes

    def on_status(self, reason: bytes) -> None:
        assert self.owner is not None
        self.owner.on_upstream_status(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.owner is not None
        self.owner.on_upstream_header(name, value)

    def on_headers_complete(self) -> None:
        assert self.owner is not None
        p = self._parser
        self.owner.on_upstream_headers_complete(p.get_status_code(), p.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if body and self.owner is not None:
            self.owner.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self.owner is not None:
            self.owner.on_upstream_message_complete()

    # --- pool interface -----------------------------------------------------------------------------------------
    def attach(self, owner: ResponseSink) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.owner = owner
        self.received = 0

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, chunks: list[bytes] | tuple[bytes, ...]) -> None:
        assert self.transport is not None
        self.transport.writelines(chunks)

    def finish(self, reusable: bool) -> None:
        """The owner's response is complete. Pooled only if ``reusable`` and the parser ended exactly at the
        message end: bytes after it (a second response nobody asked for) close the connection instead."""
        self.owner = None
        self._finished = reusable
        if not self._in_feed:
            self._settle(reusable)

    def _settle(self, reusable: bool) -> None:
        self._finished = None
        if reusable:
            self.pool.release(self)
        else:
            self.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Reset the connection: the upstream must never take a cut-short request as complete."""
        self.owner = None
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def reset_for_reuse(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.owner = None
        self._finished = None
        # An owner whose client was slow may have paused reading just before its response ended: a pooled
        # connection reads again, to see the server close it and to hand its next owner the response.
        self.resume_reading()


class UpstreamPool:
    """Idle keep-alive connections to one upstream, plus connection set-up with a timeout."""

    def __init__(self, settings: UpstreamSettings, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.connect_timeout = limits.upstream_connect_timeout
        self.idle_timeout = limits.upstream_idle_timeout
        self.max_idle = limits.upstream_max_idle
        self._idle: list[UpstreamConnection] = []
        self.closed = False
        self.connects = 0

    def acquire_idle(self) -> UpstreamConnection | None:
        """A pooled keep-alive connection that is still open, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        return self.acquire_idle() or await self.connect()

    async def connect(self) -> UpstreamConnection:
        s = self.settings
        self.connects += 1
        try:
            if s.unix_path is not None:
                coro = self.loop.create_unix_connection(lambda: UpstreamConnection(self), s.unix_path)
            else:
                assert s.host is not None and s.port is not None
                coro = self.loop.create_connection(lambda: UpstreamConnection(self), s.host, s.port)
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await coro
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {s.url} timed out", "upstream_connect_timeout") from None
        except OSError as exc:
            raise UpstreamError(f"connect to {s.url} failed: {exc}", "upstream_connect_failed") from None
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose response was read completely and whose request was sent whole."""
        if self.closed or conn.closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.reset_for_reuse()
        conn._idle_handle = self.loop.call_later(self.idle_timeout, conn.close)
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
