"""Multi-process mode: a parent that binds, spawns N workers, forwards signals and respawns.

The parent binds one SO_REUSEPORT listener per worker and address (the kernel spreads
connections evenly; a respawned worker inherits the same socket, so connections queued
meanwhile wait instead of being refused), validates a new config itself before it
forwards SIGHUP (a broken config never reaches a worker), forwards SIGTERM so every
worker drains, replaces a worker that dies, and gives up with exit status 1 when
workers keep dying before they are ready. It also runs the admin listener (metrics
summed over workers through prometheus-client's multiprocess mode) and ``--watch``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from mtls_proxy import metrics
from mtls_proxy.admin import start_admin, upstream_reachable
from mtls_proxy.config import ListenAddress
from mtls_proxy.errors import ConfigError
from mtls_proxy.state import RuntimeState, load_state
from mtls_proxy.watch import watch_and_reload

log = logging.getLogger("mtls_proxy")

READY_TIMEOUT = 30.0
MAX_START_FAILURES = 3


def bind_reuseport(address: ListenAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address.host, address.port))
    sock.listen(1024)
    # Not inheritable: pass_fds hands each worker its own sockets only. (uvloop's subprocess_exec ignores
    # close_fds, so an inheritable listener would leak into every worker, and a draining worker's
    # close() would not close its listener: another worker would still hold it.)
    return sock


@dataclass
class Worker:
    index: int
    sockets: list[socket.socket]
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    started_at: float = 0.0
    start_failures: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, config_path: str, state: RuntimeState, workers: int, *, watch: bool,
                 log_format: str | None) -> None:
        self.config_path = config_path
        self.state = state
        self.watch = watch
        self.log_format = log_format
        self.workers: list[Worker] = []
        self.count = workers
        self.stopping = False
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        addresses = self.state.settings.listen
        for i in range(self.count):
            self.workers.append(Worker(i, [bind_reuseport(a) for a in addresses]))
        if any(a.port == 0 for a in addresses):
            raise OSError("port 0 cannot be shared between workers: give a fixed port")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        metrics.publish_state(self.state)
        runner = None
        if self.state.settings.admin.listen is not None:
            runner = await start_admin(self.state.settings.admin.listen, self.readiness)
            log.info("admin on http://%s (/healthz /readyz /metrics)", self.state.settings.admin.listen)
        for a in addresses:
            log.info("listening on https://%s:%d with %d workers", a.host, a.port, self.count)
        watcher = None
        if self.watch:
            watcher = loop.create_task(watch_and_reload(
                lambda: self.state.settings.watched_files(), self.request_reload,
                self.state.settings.reload.debounce, self._stop,
            ))
        for w in self.workers:
            w.task = loop.create_task(self._keep_running(w))
        await self._stop.wait()
        self.stopping = True
        await self._shutdown()
        if watcher is not None:
            watcher.cancel()
        if runner is not None:
            await runner.cleanup()
        return self.exit_code

    async def readiness(self) -> dict[str, bool]:
        return {
            "config_loaded": True,
            "workers": all(w.ready for w in self.workers) and not self.stopping,
            "upstream": await upstream_reachable(self.state.settings.upstream),
        }

    # --- workers -------------------------------------------------------------------------------------------
    async def _spawn(self, w: Worker) -> asyncio.subprocess.Process:
        ready_r, ready_w = os.pipe()
        fds = [s.fileno() for s in w.sockets]
        cmd = [sys.executable, "-m", "mtls_proxy", "run", "--config", self.config_path,
               "--worker-fds", ",".join(map(str, fds)), "--ready-fd", str(ready_w), "--worker-index", str(w.index)]
        if self.log_format:
            cmd += ["--log-format", self.log_format]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, pass_fds=[*fds, ready_w], stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            os.close(ready_w)
        w.process = proc
        w.started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(ready_r, "rb")
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                w.ready = await reader.read(1) == b"1"
        except TimeoutError:
            w.ready = False
        finally:
            transport.close()
        return proc

    async def _keep_running(self, w: Worker) -> None:
        delay = 0.1
        while not self.stopping:
            proc = await self._spawn(w)
            if w.ready:
                log.info("worker %d ready (pid %d)", w.index, proc.pid)
                w.start_failures = 0
                delay = 0.1
            rc = await proc.wait()
            metrics.process_dead(proc.pid)
            was_ready, w.ready = w.ready, False
            if self.stopping:
                return
            if not was_ready:
                w.start_failures += 1
                log.error("worker %d exited with %s before it was ready (%d in a row)", w.index, rc, w.start_failures)
                if w.start_failures >= MAX_START_FAILURES:
                    log.error("workers keep dying at start: giving up")
                    self.exit_code = 1
                    self._stop.set()
                    return
            else:
                log.error("worker %d (pid %d) died with status %s: restarting", w.index, proc.pid, rc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _shutdown(self) -> None:
        drain = self.state.settings.limits.drain_timeout
        procs = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        log.info("stopping %d worker(s)", len(procs))
        for p in procs:
            p.send_signal(signal.SIGTERM)
        # Our copies of the listeners would keep them open (new connections queued, then reset at exit)
        # after the draining workers closed theirs: close them now, so new connections are refused.
        for w in self.workers:
            for s in w.sockets:
                s.close()
        try:
            async with asyncio.timeout(drain + 5):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    p.kill()
        for w in self.workers:
            if w.task is not None:
                w.task.cancel()
            for s in w.sockets:
                s.close()
        log.info("stopped")

    # --- reload --------------------------------------------------------------------------------------------
    def request_reload(self) -> None:
        if self.stopping:
            log.info("reload ignored: shutting down")
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True  # validated again once the current validation ends
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_until_current())

    async def _reload_until_current(self) -> None:
        while True:
            self._reload_again = False
            await self._reload()
            if not self._reload_again or self.stopping:
                return

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_state, self.config_path, time.time())
        except ConfigError as exc:
            metrics.reloaded(False)
            log.error("reload failed, workers keep their configuration: %s", exc.render())
            return
        except Exception as exc:
            metrics.reloaded(False)
            log.error("reload failed, workers keep their configuration: %s", exc)
            return
        self.state = new
        metrics.reloaded(True, new)
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGHUP)
        log.info("reload validated: forwarded SIGHUP to %d worker(s)", len(self.workers))
