"""What a frontend needs of its server, without the server: the current state, the upstream
pool, whether it drains, and the registry of open connections that are re-judged when the
state changes or when a certificate or CRL of one of them expires.

Frontends import this module, the server builds it: no import cycle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mtls_proxy.state import RuntimeState
    from mtls_proxy.upstream import UpstreamPool

#: the longest a re-judge timer is armed for; a later instant is reached in steps (timers stay small)
_MAX_TIMER = 86400.0


class OpenConnection(Protocol):
    """What the registry asks of a client connection (any protocol)."""

    def rejudge(self, now: float) -> float:
        """Judge the connection's peer by the current state; returns when to do it again (epoch, or inf)."""
        ...

    def start_drain(self) -> None: ...
    def drained(self) -> bool: ...
    def abort(self) -> None: ...


class Watched(Protocol):
    def check_deadline(self, now: float) -> bool:
        """Act on a passed deadline; True to stay watched."""
        ...


class DeadlineWatch:
    """One periodic check for the deadlines of many exchanges (the upstream read timeout).

    A timer handle per request costs its creation and cancellation on every request and, until
    cancelled, keeps the exchange alive; this is a set insertion and removal per request and one
    wake-up every ``interval`` while anything is watched (timeouts fire up to ``interval`` late).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.1) -> None:
        self.loop = loop
        self.interval = interval
        self._watched: dict[Watched, None] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, item: Watched) -> None:
        self._watched[item] = None
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def discard(self, item: Watched) -> None:
        self._watched.pop(item, None)

    def _tick(self) -> None:
        self._handle = None
        now = self.loop.time()
        for item in list(self._watched):
            if not item.check_deadline(now):
                self._watched.pop(item, None)
        if self._watched:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._watched.clear()


class AddressRateLimiter:
    """A token bucket per client address: ``per_minute`` requests, refilled continuously, burst the same.

    For clients without a certificate (enrollment): they have no identity to limit, only an address.
    At most ``max_addresses`` buckets are kept; past it the oldest is dropped (that address starts full).
    """

    def __init__(self, per_minute: int, max_addresses: int = 65536) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self.max_addresses = max_addresses
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def allow(self, address: bytes, now: float) -> bool:
        tokens, last = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[address] = (tokens - 1.0 if allowed else tokens, now)  # re-inserted: newest last
        if len(self._buckets) > self.max_addresses:
            del self._buckets[next(iter(self._buckets))]
        return allowed


class ServerContext:
    """The server as its connections see it. ``state`` is replaced in one assignment on reload."""

    def __init__(self, state: RuntimeState, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.pool = pool
        self.loop = loop
        self.draining = False
        self.upstream_watch = DeadlineWatch(loop)
        self.anonymous_limiter = AddressRateLimiter(state.settings.limits.anonymous_requests_per_minute)
        self.connections: set[OpenConnection] = set()
        #: re-judge instants (epoch seconds) -> the connections whose standing may change then
        self._due: dict[float, set[OpenConnection]] = {}
        self._handles: dict[float, asyncio.TimerHandle] = {}
        self._instant_of: dict[OpenConnection, float] = {}
        #: told when a connection closes (the server's accept loop waits for a free slot)
        self.on_closed: Callable[[], None] = lambda: None

    # --- the registry -------------------------------------------------------------------------------------
    def opened(self, conn: OpenConnection, rejudge_at: float) -> None:
        self.connections.add(conn)
        self._schedule(conn, rejudge_at)
        if self.draining:
            conn.start_drain()

    def closed(self, conn: OpenConnection) -> None:
        self.connections.discard(conn)
        self._unschedule(conn)
        self.on_closed()

    def rejudge_all(self) -> None:
        """After a reload: every open connection is judged by the new state at once."""
        now = time.time()
        for conn in list(self.connections):
            self._schedule(conn, conn.rejudge(now))

    # --- timers, one per distinct instant -----------------------------------------------------------------
    def _schedule(self, conn: OpenConnection, instant: float) -> None:
        self._unschedule(conn)
        if instant == float("inf") or conn not in self.connections:
            return
        self._instant_of[conn] = instant
        bucket = self._due.get(instant)
        if bucket is None:
            bucket = self._due[instant] = set()
            delay = min(max(instant - time.time(), 0.0), _MAX_TIMER)
            self._handles[instant] = self.loop.call_later(delay, self._fire, instant)
        bucket.add(conn)

    def _unschedule(self, conn: OpenConnection) -> None:
        instant = self._instant_of.pop(conn, None)
        if instant is None:
            return
        bucket = self._due.get(instant)
        if bucket is not None:
            bucket.discard(conn)
            if not bucket:
                del self._due[instant]
                handle = self._handles.pop(instant, None)
                if handle is not None:
                    handle.cancel()

    def _fire(self, instant: float) -> None:
        self._handles.pop(instant, None)
        bucket = self._due.pop(instant, set())
        now = time.time()
        for conn in bucket:
            self._instant_of.pop(conn, None)
        for conn in bucket:
            if conn not in self.connections:
                continue
            if now < instant:  # a far instant reached in steps of _MAX_TIMER
                self._schedule(conn, instant)
            else:
                self._schedule(conn, conn.rejudge(now))

    def close(self) -> None:
        self.upstream_watch.close()
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self._due.clear()
        self._instant_of.clear()
