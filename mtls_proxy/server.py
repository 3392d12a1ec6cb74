"""One proxy process: listeners, the accept loop, TLS handshakes, reload and drain.

The server holds a single reference to the current :class:`RuntimeState`. Each
accepted socket is wrapped with the SSLContext current *at accept time*, so a
reload (new context: new trust, new CRLs, new ticket keys) applies to every new
connection at once while connections already open keep going; their next request
is judged by the new policy and revocations. Signal handlers only schedule work.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import Callable

from mtls_proxy import metrics
from mtls_proxy.admin import start_admin, upstream_reachable
from mtls_proxy.config import ListenAddress
from mtls_proxy.context import ServerContext
from mtls_proxy.crlfetch import CrlCache, CrlFetchError
from mtls_proxy.errors import ConfigError
from mtls_proxy.frontends.h2 import H2Connection
from mtls_proxy.frontends.http1 import Http1Connection
from mtls_proxy.logs import setup_logging
from mtls_proxy.state import RuntimeState, build_state, load_state
from mtls_proxy.tls import classify_handshake_error, handshake_failure_hint
from mtls_proxy.tlsconn import TlsServerConnection
from mtls_proxy.upstream import UpstreamPool
from mtls_proxy.watch import watch_and_reload

log = logging.getLogger("mtls_proxy")


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds; the rest are counted and summarised."""

    def __init__(self, burst: int = 20, interval: float = 10.0) -> None:
        self.burst = burst
        self.interval = interval
        self.window_start = 0.0
        self.count = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self.window_start >= self.interval:
            self.flush()
            self.window_start = now
            self.count = 0
        self.count += 1
        if self.count > self.burst:
            self.suppressed += 1
            if self.suppressed == 1:
                # the summary must not wait for a next line that may never come (a flood that stops)
                try:
                    loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:  # no event loop: the next allow() after the window reports it
                    loop = None
                if loop is not None:
                    loop.call_later(max(self.window_start + self.interval - now, 0.0), self.flush)
            return False
        return True

    def flush(self) -> None:
        if self.suppressed:
            log.warning("%d similar log lines suppressed in the last %.0fs", self.suppressed, self.interval)
            self.suppressed = 0


def frontend_for(alpn: str | None, ctx: ServerContext) -> asyncio.Protocol:
    """The frontend for the protocol ALPN picked: HTTP/2 for "h2", HTTP/1.1 otherwise (no ALPN included)."""
    return H2Connection(ctx) if alpn == "h2" else Http1Connection(ctx)


def bind_listener(address: ListenAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.create_server((address.host, address.port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


class ProxyServer:
    """Listeners, handshakes, reload and drain; its connections see it only as a :class:`ServerContext`."""

    def __init__(self, state: RuntimeState, config_path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ServerContext(state, UpstreamPool(state.settings.upstream, state.settings.limits, loop), loop)
        self.ctx.on_closed = self._connection_closed
        self.config_path = config_path
        self.loop = loop
        self.handshaking = 0
        self._handshakes_by_address: dict[str, int] = {}
        self.crl_cache = CrlCache()
        #: handshaken connections waiting for a max_connections slot, in arrival order
        self._held: deque[TlsServerConnection] = deque()
        self.sockets: list[socket.socket] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._slot_free = asyncio.Event()
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False
        self._handshake_log = RateLimitedLog()
        self.count_reloads = True

    @property
    def state(self) -> RuntimeState:
        return self.ctx.state

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    # --- listeners ----------------------------------------------------------------------------------------
    def listen(self, sockets: list[socket.socket] | None = None) -> None:
        self.sockets = sockets if sockets is not None else [bind_listener(a) for a in self.state.settings.listen]
        for sock in self.sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening on https://%s:%d (generation %d)", host, port, self.state.generation)
            optional = self._listener_is_optional(len(self._accept_tasks))
            self._accept_tasks.append(self.loop.create_task(self._accept_loop(sock, optional)))

    def _listener_is_optional(self, index: int) -> bool:
        """Whether listener ``index`` (sockets are bound in the order of ``listen``) takes clients without certs."""
        listen = self.state.settings.listen
        return index < len(listen) and listen[index].client_auth == "optional"

    async def _accept_loop(self, sock: socket.socket, client_cert_optional: bool = False) -> None:
        loop = self.loop
        while not self.draining:
            # Established connections only: handshakes have their own budget below, so sockets that
            # never finish (or never start) a handshake cannot take the slots of devices.
            while len(self.ctx.connections) + len(self._held) >= self.state.settings.limits.max_connections:
                self._slot_free.clear()
                await self._slot_free.wait()
            try:
                conn, addr = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self._handshake_log.allow(loop.time()):
                        log.error("accept failed: %s; refusing new connections for 100ms", exc)
                    await asyncio.sleep(0.1)
                    continue
                if self.draining:
                    return
                raise
            address = addr[0] if isinstance(addr, tuple) else str(addr)
            refusal = self._handshake_refusal(address)
            if refusal is not None:
                conn.close()
                metrics.handshake_rejected(refusal)
                if self._handshake_log.allow(loop.time()):
                    log.warning("connection refused before the handshake: client=%s reason=%s", address, refusal)
                continue
            self.handshaking += 1
            self._handshakes_by_address[address] = self._handshakes_by_address.get(address, 0) + 1
            metrics.HANDSHAKES_IN_PROGRESS.inc()
            try:
                await loop.connect_accepted_socket(
                    functools.partial(self._tls_for, address, client_cert_optional), conn
                )
            except OSError as exc:  # the socket died between accept and here
                conn.close()
                self._handshake_failed(address, exc)

    def _handshake_refusal(self, address: str) -> str | None:
        """Why a new socket gets no handshake slot (closed at once), or None."""
        limits = self.state.settings.limits
        if self.handshaking >= limits.max_handshakes:
            return "handshake_budget"
        if self._handshakes_by_address.get(address, 0) >= limits.max_handshakes_per_address:
            return "handshakes_per_address"
        return None

    def _handshake_ended(self, address: str) -> None:
        self.handshaking -= 1
        metrics.HANDSHAKES_IN_PROGRESS.dec()
        left = self._handshakes_by_address.get(address, 1) - 1
        if left > 0:
            self._handshakes_by_address[address] = left
        else:
            self._handshakes_by_address.pop(address, None)
        self._slot_free.set()

    def _tls_for(self, address: str, client_cert_optional: bool = False) -> TlsServerConnection:
        """TLS with the context current at accept time: a reload applies to every new connection."""
        state = self.state
        context = state.ssl_context_optional if client_cert_optional else state.ssl_context
        tls: TlsServerConnection

        def frontend() -> asyncio.Protocol:
            return frontend_for(tls.get_extra_info("ssl_object").selected_alpn_protocol(), self.ctx)

        tls = TlsServerConnection(
            context or state.ssl_context,
            frontend,
            state.settings.tls.handshake_timeout,
            lambda tls: self._handshake_done(address, tls),
            lambda exc: self._handshake_failed(address, exc),
            self.loop,
            first_byte_timeout=state.settings.limits.first_byte_timeout,
        )
        return tls

    def _handshake_done(self, address: str, tls: TlsServerConnection) -> bool:
        """Admit the connection now, or hold it (handshake done) until an established one closes."""
        self._handshake_ended(address)
        metrics.HANDSHAKES.inc()
        if len(self.ctx.connections) < self.state.settings.limits.max_connections and not self._held:
            return True
        self._held.append(tls)
        return False

    def _handshake_failed(self, address: str, exc: BaseException) -> None:
        self._handshake_ended(address)
        reason = classify_handshake_error(exc)
        metrics.handshake_failed(reason)
        if self._handshake_log.allow(self.loop.time()):
            log.warning("tls handshake failed: client=%s reason=%s detail=%s%s", address, reason, exc,
                        handshake_failure_hint(reason))

    def _connection_closed(self) -> None:
        self._slot_free.set()
        limit = self.state.settings.limits.max_connections
        while self._held and len(self.ctx.connections) < limit:
            self._held.popleft().admit()

    # --- reload ------------------------------------------------------------------------------------------------
    def request_reload(self) -> None:
        if self.draining or self._stop.is_set():
            log.info("reload ignored: shutting down")
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = self.loop.create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            try:
                new = await self.loop.run_in_executor(None, load_state, self.config_path, time.time(),
                                                      self.crl_cache)
            except ConfigError as exc:
                if self.count_reloads:
                    metrics.reloaded(False)
                log.error("reload failed, keeping generation %d: %s", self.state.generation, exc.render())
            except Exception as exc:
                if self.count_reloads:
                    metrics.reloaded(False)
                log.error("reload failed, keeping generation %d: %s", self.state.generation, exc)
            else:
                self._apply(new)
            if not self._reload_again:
                return

    def _apply(self, new: RuntimeState) -> None:
        old = self.state
        if new.settings.listen != old.settings.listen:
            log.warning("reload: 'listen' changes need a restart; keeping %s",
                        ", ".join(str(a) for a in old.settings.listen))
        if new.settings.upstream != old.settings.upstream or new.settings.limits != old.settings.limits:
            old_pool = self.ctx.pool
            self.ctx.pool = UpstreamPool(new.settings.upstream, new.settings.limits, self.loop)
            old_pool.close()
        if new.settings.logging != old.settings.logging:
            setup_logging(new.settings.logging)
        self.ctx.state = new
        self.ctx.rejudge_all()  # open connections (idle, busy, tunnels) are judged by the new state now
        if self.count_reloads:
            metrics.reloaded(True, new)
        else:
            metrics.publish_state(new)
        log.info("reloaded: generation %d (was %d)", new.generation, old.generation)

    # --- CRLs at URLs -----------------------------------------------------------------------------------------
    async def refresh_crls(self) -> None:
        """Every tls.crl_refresh: conditional GET of each CRL URL; a changed CRL rebuilds the state."""
        while not self._stop.is_set():
            tls = self.state.settings.tls
            try:
                await asyncio.wait_for(self._stop.wait(), tls.crl_refresh)
                return
            except TimeoutError:
                pass
            if not tls.crl_urls or self.draining:
                continue
            for url in tls.crl_urls:
                try:
                    await self.loop.run_in_executor(None, self.crl_cache.fetch, url)
                except CrlFetchError as exc:
                    metrics.CRL_FETCH_FAILURES.labels(url).inc()
                    log.error("CRL fetch failed, keeping the CRL held: %s", exc)
                else:
                    metrics.CRL_FETCHED.labels(url).set(time.time())
            held = {url: (c.pem if (c := self.crl_cache.get(url)) else None) for url in tls.crl_urls}
            if any(pem is not None and pem != self.state.fetched_crls.get(url) for url, pem in held.items()):
                settings = self.state.settings
                try:
                    new = await self.loop.run_in_executor(None, build_state, settings, time.time(), self.crl_cache)
                except ConfigError as exc:
                    metrics.CRL_FETCH_FAILURES.labels(",".join(tls.crl_urls)).inc()
                    log.error("new CRL refused, keeping generation %d: %s", self.state.generation, exc.render())
                else:
                    log.info("CRL changed at its URL")
                    self._apply(new)

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        self.loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self._stop.set)

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        try:
            await self.drain()
        finally:
            # Closing the loop puts SIGHUP back to its default action (terminate): a SIGHUP in the last
            # moments of a shutdown (log rotation, a supervisor's forward) would end us with -SIGHUP.
            try:
                if self.loop.remove_signal_handler(signal.SIGHUP):
                    signal.signal(signal.SIGHUP, signal.SIG_IGN)
            except (ValueError, RuntimeError):  # not the main thread: no handler of ours was installed
                pass

    def stop(self) -> None:
        self._stop.set()

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), then close what is left."""
        timeout = self.state.settings.limits.drain_timeout
        connections = self.ctx.connections
        log.info("draining %d connection(s), up to %.0fs", len(connections), timeout)
        self.ctx.draining = True
        for task in self._accept_tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        for held in self._held:
            held.abort()  # handshaken but never admitted: nothing in progress to finish
        self._held.clear()
        for conn in list(connections):
            conn.start_drain()
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline and (
            self.handshaking or not all(conn.drained() for conn in connections)
        ):
            await asyncio.sleep(0.05)
        # Every response is complete and handed to TLS; closed connections may still wait for the
        # peer's close_notify (an idle keep-alive client never sends it): a short grace, then cut.
        grace = min(deadline, self.loop.time() + 0.5)
        while connections and self.loop.time() < grace:
            await asyncio.sleep(0.05)
        for conn in list(connections):
            conn.abort()
        self.ctx.pool.close()
        self.ctx.close()
        log.info("stopped")


    async def readiness(self) -> dict[str, bool]:
        """What /readyz checks in a single-process proxy."""
        return {
            "config_loaded": self.state is not None,
            "listening": bool(self.sockets) and not self.draining,
            "upstream": await upstream_reachable(self.state.settings.upstream),
        }


async def run_server(config_path: str, state: RuntimeState, sockets: list[socket.socket] | None = None,
                     *, admin: bool = True, watch: bool | None = None,
                     on_ready: Callable[[], None] | None = None, worker: bool = False) -> None:
    """Serve until SIGTERM/SIGINT. ``sockets`` are inherited listeners (worker mode); admin/watch run here
    unless a supervisor runs them for all workers."""
    loop = asyncio.get_running_loop()
    server = ProxyServer(state, config_path, loop)
    server.install_signal_handlers()
    server.count_reloads = not worker  # in worker mode the supervisor counts reloads once
    runner = None
    if admin and state.settings.admin.listen is not None:  # bound first: a busy admin port fails the start
        runner = await start_admin(state.settings.admin.listen, server.readiness)
        log.info("admin on http://%s (/healthz /readyz /metrics)", state.settings.admin.listen)
    server.listen(sockets)
    metrics.publish_state(state)
    crl_refresher = loop.create_task(server.refresh_crls())
    watcher = None
    if watch if watch is not None else state.settings.reload.watch:
        watcher = loop.create_task(watch_and_reload(
            lambda: server.state.settings.watched_files(), server.request_reload,
            state.settings.reload.debounce, server._stop,
        ))
    # Start-up objects never die: move them out of the collector's way, and collect young objects
    # less often (the request path makes few reference cycles; the collector was 4% of its CPU).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    if on_ready is not None:
        on_ready()
    try:
        await server.serve_until_stopped()
    finally:
        crl_refresher.cancel()
        if watcher is not None:
            watcher.cancel()
        if runner is not None:
            await runner.cleanup()
