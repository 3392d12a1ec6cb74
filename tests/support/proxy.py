"""Run the real ``mtls-proxy run`` CLI as a subprocess, with a config written by the test."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_config(pki: Any, upstream_url: str, port: int) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{port}",
        "upstream": upstream_url,
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem)},
        "identity": {"signing_key_file": str(pki.signing_key)},
        "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]},
        "logging": {"level": "info"},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
    }


class ProxyProcess:
    """A running proxy; ``logs`` collects its stdout lines (access and error log)."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.logs: list[str] = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtls_proxy", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.wait_for_log(r"listening on https://", START_TIMEOUT)
        except TimeoutError:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.logs.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.logs[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(f"no log line matching {pattern!r}; log:\n" + "\n".join(self.logs[-40:]))
                self._cond.wait(min(remaining, 0.2))

    def log_count(self) -> int:
        with self._cond:
            return len(self.logs)

    def write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.config_path)

    def reload(self, expect_ok: bool = True, timeout: float = 10.0) -> None:
        """SIGHUP and wait for the proxy to say it reloaded (or that it kept the old state)."""
        mark = self.log_count()
        self.process.send_signal(signal.SIGHUP)
        self.wait_for_log(r"reloaded: generation" if expect_ok else r"reload failed", timeout, start=mark)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.process.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(5)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    # --- client helpers ---------------------------------------------------------------------------------
    def connection(self, ctx: ssl.SSLContext, timeout: float = 30.0,
                   host: str = "localhost") -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(host, self.port, context=ctx, timeout=timeout)

    def request(self, ctx: ssl.SSLContext, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection(ctx, timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def get_json(self, ctx: ssl.SSLContext, path: str, **kw: Any) -> tuple[int, Any]:
        status, _, body = self.request(ctx, kw.pop("method", "GET"), path, **kw)
        return status, json.loads(body) if body else None


def first_port(listen: Any) -> int:
    """The port of the first listener: ``"host:port"``, a list, or ``{address: ..., client_auth: ...}``."""
    first = listen[0] if isinstance(listen, list) else listen
    address = first["address"] if isinstance(first, dict) else first
    return int(str(address).rsplit(":", 1)[1])


class ProxyFactory:
    """Writes a config (base + overrides) and starts proxies; stops them all at teardown."""

    def __init__(self, tmp_path: Path, pki: Any, upstream_url: str) -> None:
        self.tmp_path = tmp_path
        self.pki = pki
        self.upstream_url = upstream_url
        self.started: list[ProxyProcess] = []

    def config(self, **overrides: Any) -> dict[str, Any]:
        cfg = base_config(self.pki, self.upstream_url, free_port())
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    def start(self, config: dict[str, Any] | None = None, **overrides: Any) -> ProxyProcess:
        cfg = config or self.config(**overrides)
        path = self.tmp_path / f"proxy-{len(self.started)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = ProxyProcess(path, first_port(cfg["listen"]))
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for p in self.started:
            p.kill()


class CliProxyProcess(ProxyProcess):
    """``mtls-proxy run`` with extra arguments (``--workers 2``, ``--watch``, ``--log-format json``).

    Runs in its own session so that ``kill`` ends the whole process group: with ``--workers`` a
    SIGKILLed parent would leave its workers behind. Ready once every ``ready`` pattern was logged
    (with workers: ``worker N ready`` for each N; the parent's ``listening on`` comes before that).
    """

    def __init__(self, config_path: Path, port: int, args: tuple[str, ...] = (),
                 ready: tuple[str, ...] = (r"listening on https://",), env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.port = port
        self.logs = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtls_proxy", "run", "--config", str(config_path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            for pattern in ready:
                self.wait_for_log(pattern, START_TIMEOUT)
        except TimeoutError:
            self.kill()
            raise

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group outlives the parent while a worker lives
        except ProcessLookupError:  # nobody left in the group
            assert self.process.poll() is not None
        if self.process.poll() is None:
            self.process.wait(10)
        self._reader.join(5)


def start_cli_proxy(factory: ProxyFactory, config: dict[str, Any], args: tuple[str, ...] = (),
                    ready: tuple[str, ...] = (r"listening on https://",),
                    env: dict[str, str] | None = None) -> CliProxyProcess:
    """Write ``config`` and start :class:`CliProxyProcess`; ``factory.close()`` kills it at teardown."""
    path = factory.tmp_path / f"proxy-{len(factory.started)}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = int(str(config["listen"]).rsplit(":", 1)[1])
    proc = CliProxyProcess(path, port, args, ready, env)
    factory.started.append(proc)
    return proc
