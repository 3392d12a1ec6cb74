"""A real PostgreSQL server for a test: Debian's ``postgresql`` package, a temporary cluster, a free port.

``initdb`` into a fresh directory, ``pg_ctl start`` listening on 127.0.0.1 (and a Unix socket
in the same directory), trust authentication for loopback only. PostgreSQL refuses to run
as root, so as root the cluster belongs to the ``postgres`` user the package creates and
every server command runs through ``runuser``. ``stop()`` and ``start()`` can be called
again to take the server away under a running client (the replay store's 503 test).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.proxy import free_port

__all__ = ["PostgresServer", "find_pg_bin", "start_postgres"]

DATABASE = "mtls_test"
SUPERUSER = "postgres"


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` (Debian keeps the server binaries off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (scripts/test.sh does)")
    return Path(candidates[-1]).parent


@dataclass
class PostgresServer:
    datadir: Path
    port: int
    bindir: Path
    run_as: str | None
    log_path: Path
    _running: bool = field(default=False, repr=False)

    @property
    def socket_dir(self) -> Path:
        return self.datadir

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socket_dir} " \
                  "-c fsync=off -c max_connections=100"
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_path),
                         "-o", options, "-w", "-t", "60", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{self.log_tail()}")
        self._running = True

    def stop(self) -> None:
        if not self._running:
            return
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {done.stdout}{done.stderr}")
        self._running = False

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def psql(self, sql: str) -> str:
        done = self._run(str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
                         "-d", DATABASE, "-Atc", sql)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def django_database(self) -> dict[str, Any]:
        """The ``DATABASES`` entry Django (psycopg 3) connects with."""
        return {"ENGINE": "django.db.backends.postgresql", "NAME": DATABASE, "USER": SUPERUSER,
                "HOST": "127.0.0.1", "PORT": str(self.port), "CONN_MAX_AGE": 60}

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """A fresh cluster with database ``mtls_test``, running; ``close()`` stops it and deletes it."""
    bindir = find_pg_bin()
    run_as = SUPERUSER if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="mtls-pg-", dir="/tmp"))  # short: the socket path must fit sun_path
    datadir = root / "data"
    datadir.mkdir(mode=0o700)
    log_path = root / "server.log"
    log_path.touch()
    if run_as:
        user = pwd.getpwnam(run_as)
        for path in (root, datadir, log_path):
            os.chown(path, user.pw_uid, user.pw_gid)
    server = PostgresServer(datadir, free_port(), bindir, run_as, log_path)
    done = server._run(str(bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "--auth=trust",
                       "-E", "UTF8", "--no-sync", timeout=120)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
    server.start()
    deadline = time.monotonic() + 30
    while True:
        done = server._run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", SUPERUSER,
                           DATABASE)
        if done.returncode == 0:
            return server
        if time.monotonic() > deadline:
            server.close()
            raise RuntimeError(f"createdb failed: {done.stderr}\n{server.log_tail()}")
        time.sleep(0.2)
