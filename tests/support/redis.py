"""A real Redis server for a test: Debian's ``redis-server`` on a free loopback port, no persistence.

``stop()`` and ``start()`` can be called again (same port) to take the server away under a
running client. ``extra_args`` sets server options, e.g. ``("--maxmemory-policy", "allkeys-lru")``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.proxy import free_port

__all__ = ["RedisServer", "start_redis"]


@dataclass
class RedisServer:
    port: int
    workdir: Path
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server (scripts/test.sh does)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "yes",
             "--maxmemory-policy", "noeviction", *self.extra_args],
            stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while self.command(b"PING") != b"+PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.05)

    def command(self, *parts: bytes) -> bytes | None:
        """One RESP command on a fresh connection; the first reply line, or None if unreachable."""
        payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(payload)
                return sock.recv(65536).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(extra_args: tuple[str, ...] = ()) -> RedisServer:
    """A running redis-server; ``close()`` stops it and removes its directory."""
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="mtls-redis-", dir="/tmp")), extra_args)
    server.start()
    return server
