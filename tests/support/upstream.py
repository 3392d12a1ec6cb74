"""Start the demo Django app as a real upstream process (no mocks): used by every integration test.

The process is ``python -m mtls_proxy.demo_app serve``; we wait for its ``READY`` line
(and ``PORT <n>`` for TCP) rather than polling, keep draining its stdout so it can never
block on a full pipe, and send its stderr to a file whose tail goes into any failure
message.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT = 30.0
# sun_path is 108 bytes on Linux (104 on macOS); pytest's tmp_path can be longer.
_MAX_UDS_PATH = 100


@dataclass
class DemoUpstream:
    """A running demo upstream. ``url`` is ``unix:/path`` or ``http://127.0.0.1:<port>``."""

    process: subprocess.Popen[bytes]
    url: str
    socket_path: str | None
    port: int | None
    stderr_path: Path
    _reader: threading.Thread | None = field(default=None, repr=False)
    worker_pids: list[int] = field(default_factory=list)

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        """A plain ``http.client`` connection straight to the upstream (bypassing any proxy)."""
        if self.socket_path is not None:
            return UnixHTTPConnection(self.socket_path, timeout=timeout)
        assert self.port is not None
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (uvicorn drains for up to 3 s), then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a killed supervisor
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> DemoUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (the Host header stays ``localhost``)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


def _short_socket_path(tmp_path: Path) -> str:
    candidate = tmp_path / "upstream.sock"
    if len(str(candidate)) <= _MAX_UDS_PATH and not candidate.exists():
        return str(candidate)
    return os.path.join(tempfile.mkdtemp(prefix="mtlsup-", dir="/tmp"), "up.sock")


def start_demo_upstream(
    tmp_path: Path,
    *,
    uds: bool = True,
    signing_key_file: str | os.PathLike[str] | None = None,
    trust: str | None = None,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT,
    server: str = "uvicorn",
    workers: int = 1,
) -> DemoUpstream:
    """Start ``python -m mtls_proxy.demo_app serve`` and return once it is ready.

    ``uds=True`` serves on a Unix socket in ``tmp_path`` (or a short /tmp path when
    ``tmp_path`` is too long for ``sun_path``); otherwise on 127.0.0.1 with a free port.
    Without ``signing_key_file`` the demo trusts identity headers from loopback/Unix peers;
    ``trust`` overrides the mode. ``server="gunicorn"`` runs WSGI sync workers; with
    ``workers > 1`` (or gunicorn) ready means every worker printed ``WORKER <pid>``
    (``DemoUpstream.worker_pids``). ``extra_env`` carries the demo's database and replay
    store settings (see mtls_proxy/demo_app/settings.py).
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mtls_proxy.demo_app", "serve"]
    socket_path: str | None = None
    if uds:
        socket_path = _short_socket_path(tmp_path)
        cmd += ["--uds", socket_path]
    else:
        cmd += ["--host", "127.0.0.1", "--port", "0"]
    if signing_key_file is not None:
        cmd += ["--signing-key-file", os.fspath(signing_key_file)]
    if trust is not None:
        cmd += ["--trust", trust]
    cmd += ["--server", server, "--workers", str(workers)]
    counts_workers = server == "gunicorn" or workers > 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    fd, name = tempfile.mkstemp(prefix="demo-upstream-", suffix=".stderr", dir=tmp_path)
    stderr_path = Path(name)
    with os.fdopen(fd, "wb") as stderr_file:
        # Own session: stop() can end a supervisor's workers too, even after a SIGKILL.
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr_file, env=env, start_new_session=True)

    ready = threading.Event()  # set on READY (or the last WORKER line), or on EOF (the process died)
    saw_ready: list[bool] = []
    port_box: list[int] = []
    pids: list[int] = []

    def drain() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("PORT "):
                port_box.append(int(line.split()[1]))
            elif line.startswith("WORKER "):
                pids.append(int(line.split()[1]))
                if counts_workers and len(pids) == workers:
                    saw_ready.append(True)
                    ready.set()
            elif line == "READY" and not counts_workers:
                saw_ready.append(True)
                ready.set()
        ready.set()  # EOF: the process died; the waiter checks poll()

    reader = threading.Thread(target=drain, name="demo-upstream-stdout", daemon=True)
    reader.start()
    if not ready.wait(ready_timeout) or not saw_ready or process.poll() is not None:
        handle = DemoUpstream(process, "", socket_path, None, stderr_path, reader)
        if not saw_ready:  # stdout closed: let it finish writing its traceback
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        handle.stop()
        raise RuntimeError(
            f"demo upstream did not become ready (exit code {process.returncode}):\n{handle.stderr_text()[-4000:]}"
        )
    if uds:
        assert socket_path is not None
        url, port = f"unix:{socket_path}", None
    else:
        port = port_box[0]
        url = f"http://127.0.0.1:{port}"
    handle = DemoUpstream(process, url, socket_path, port, stderr_path, reader)
    handle.worker_pids = pids
    return handle
