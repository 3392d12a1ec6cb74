"""``mtls-proxy run --workers N``: the real supervisor, real worker processes, real TLS clients.

The contract: connections are spread over every worker (SO_REUSEPORT); SIGHUP reloads every
worker, and a broken config is refused by the parent before any worker sees it; a worker that
dies is replaced while clients keep being served (connections the kernel queued on the dead
worker's listener wait for the replacement: the parent keeps that listener open); SIGTERM drains
every worker and the parent exits 0; workers that cannot start make the parent exit non-zero.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import CliProxyProcess, ProxyFactory, start_cli_proxy

READY = (r"worker 0 ready \(pid \d+\)", r"worker 1 ready \(pid \d+\)")
CLOSE = {"Connection": "close"}


def start_workers(proxies: ProxyFactory, cfg: dict[str, Any], *extra: str) -> CliProxyProcess:
    return start_cli_proxy(proxies, cfg, ("--workers", "2", *extra), READY)


def access_lines(proxy: CliProxyProcess, start: int = 0) -> list[dict[str, Any]]:
    """The JSON access lines logged since ``start`` (the proxy runs with ``--log-format json``)."""
    out = []
    for line in proxy.logs[start:]:
        if line.startswith("{"):
            rec = json.loads(line)
            if rec["logger"] == "mtls_proxy.access":
                out.append(rec)
    return out


def wait_access(proxy: CliProxyProcess, start: int, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Access lines are written after the response: wait until ``count`` of them arrived."""
    deadline = time.monotonic() + timeout
    while True:
        lines = access_lines(proxy, start)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def worker_pids(proxy: CliProxyProcess) -> dict[int, int]:
    """The latest pid of each worker index, from the parent's ``worker N ready (pid P)`` lines."""
    pids = {}
    for line in proxy.logs:
        m = re.search(r"worker (\d+) ready \(pid (\d+)\)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def count_logs(proxy: CliProxyProcess, pattern: str, start: int = 0) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in proxy.logs[start:] if rx.search(line))


# --- 1. both workers serve; SIGHUP reloads both; a broken config never reaches them ---------------------------


def test_both_workers_serve_and_reload_together_broken_config_refused_by_parent(proxies, pki):
    ctx = pki.client_context(pki.client("workers-spread"))
    cfg = proxies.config()
    proxy = start_workers(proxies, cfg, "--log-format", "json")
    pids = worker_pids(proxy)
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2

    mark = proxy.log_count()
    statuses = [proxy.request(ctx, "GET", "/api/echo", headers=CLOSE)[0] for _ in range(40)]
    assert statuses == [200] * 40
    lines = wait_access(proxy, mark, 40)
    by_worker = Counter(rec["worker"] for rec in lines)
    # 40 new connections; the kernel hashes each 4-tuple: all on one worker has odds 2**-39
    assert sum(by_worker.values()) == 40 and set(by_worker) == {0, 1}, by_worker

    # SIGHUP with a new policy: validated once by the parent, then applied by each worker
    cfg["policy"] = {"rules": [{"name": "no-slow", "paths": ["/api/slow"], "action": "deny"},
                               {"name": "all", "paths": ["/"], "clients": "any"}]}
    proxy.write_config(cfg)
    mark = proxy.log_count()
    proxy.process.send_signal(signal.SIGHUP)
    proxy.wait_for_log(r"reload validated: forwarded SIGHUP to 2 worker\(s\)", 10, start=mark)
    deadline = time.monotonic() + 10
    while count_logs(proxy, r"reloaded: generation \d+ \(was \d+\)", mark) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_logs(proxy, r"reloaded: generation \d+ \(was \d+\)", mark) == 2
    mark = proxy.log_count()
    statuses = [proxy.request(ctx, "GET", "/api/slow?seconds=0", headers=CLOSE)[0] for _ in range(30)]
    assert statuses == [403] * 30
    lines = wait_access(proxy, mark, 30)
    assert {(r["worker"], r["status"], r["rule"]) for r in lines} == {(0, 403, "no-slow"), (1, 403, "no-slow")}

    # a broken config: the parent refuses it; no worker reloads or even tries (no SIGHUP forwarded)
    broken = dict(cfg, tls={**cfg["tls"], "cert": str(pki.root / "missing-server.pem")})
    proxy.write_config(broken)
    mark = proxy.log_count()
    proxy.process.send_signal(signal.SIGHUP)
    m = proxy.wait_for_log(r"reload failed, workers keep their configuration: .*", 10, start=mark)
    assert "tls.cert" in m.group(0) and "missing-server.pem: no such file" in m.group(0)
    time.sleep(0.5)  # what a forwarded SIGHUP would have produced by now
    assert count_logs(proxy, r"reloaded: generation|reload failed, keeping generation|forwarded SIGHUP", mark) == 0
    assert worker_pids(proxy) == pids and all(alive(p) for p in pids.values())
    mark = proxy.log_count()
    statuses = [proxy.request(ctx, "GET", p, headers=CLOSE)[0] for p in ["/api/slow?seconds=0", "/api/echo"] * 10]
    assert statuses == [403, 200] * 10  # still the policy of the last good reload
    assert {r["worker"] for r in wait_access(proxy, mark, 20)} == {0, 1}


# --- 2. a killed worker is replaced; a client looping meanwhile sees no error -----------------------------------


def test_killed_worker_is_replaced_and_looping_client_sees_no_error(proxies, pki):
    """SIGKILL one worker between two requests of a client that opens a new connection per request.

    The kernel keeps hashing about half the new connections to the dead worker's listener; the
    parent still holds that socket, so they wait in its accept queue and the replacement serves
    them: none is refused or reset. (A request *in progress* on the killed worker is lost with it;
    that is what SIGKILL means, so the kill happens between requests: ``turn`` is held meanwhile.)
    """
    ctx = pki.client_context(pki.client("workers-kill"))
    proxy = start_workers(proxies, proxies.config(), "--log-format", "json")
    victim_index, victim = 1, worker_pids(proxy)[1]
    survivor = worker_pids(proxy)[0]

    turn = threading.Lock()
    stop = threading.Event()
    results: list[tuple[float, float, Any]] = []  # (start, duration, status or error)

    def loop() -> None:
        while not stop.is_set():
            with turn:
                t0 = time.monotonic()
                try:
                    status: Any = proxy.request(ctx, "GET", "/api/echo", headers=CLOSE, timeout=20)[0]
                except Exception as exc:
                    status = repr(exc)
                results.append((t0, time.monotonic() - t0, status))

    client = threading.Thread(target=loop, daemon=True)
    client.start()
    try:
        while len(results) < 20:
            time.sleep(0.02)
        mark = proxy.log_count()
        with turn:
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
        proxy.wait_for_log(rf"worker {victim_index} \(pid {victim}\) died with status -9: restarting", 10, start=mark)
        m = proxy.wait_for_log(rf"worker {victim_index} ready \(pid (\d+)\)", 15, start=mark)
        replacement = int(m.group(1))
        ready_at = time.monotonic()
        while sum(1 for r in results if r[0] > ready_at) < 30 and time.monotonic() < ready_at + 10:
            time.sleep(0.02)
    finally:
        stop.set()
        client.join(25)
    after_kill = [r for r in results if r[0] >= killed_at]
    errors = [r for r in results if r[2] != 200]
    assert errors == [], errors
    assert len(after_kill) >= 30
    # at least one connection sat in the dead worker's queue until the replacement took it
    # (a normal request here takes a few ms; respawning takes a Python start-up)
    waited = max(r[1] for r in after_kill)
    assert waited >= 0.15, f"no request waited for the replacement (max {waited:.3f}s)"
    assert replacement != victim and alive(replacement) and not alive(victim)
    assert worker_pids(proxy) == {0: survivor, 1: replacement} and alive(survivor)
    served = Counter(r["worker"] for r in access_lines(proxy, proxy.logs.index(m.string)))
    assert served[victim_index] > 0 and served[0] > 0, served  # the replacement serves its share


# --- 3. SIGTERM drains every worker; the parent exits 0 ---------------------------------------------------------


def test_sigterm_drains_every_worker_and_parent_exits_0(proxies, pki):
    ctx = pki.client_context(pki.client("workers-drain"))
    proxy = start_cli_proxy(proxies, proxies.config(), ("--workers", "auto"),
                            tuple(rf"worker {i} ready" for i in range(os.cpu_count() or 1)))
    n_workers = os.cpu_count() or 1
    assert proxy.wait_for_log(rf"listening on https://127\.0\.0\.1:{proxy.port} with {n_workers} workers", 1)
    pids = worker_pids(proxy)
    n = 16
    results: list[Any] = [None] * n

    def slow(i: int) -> None:
        try:
            status, _, body = proxy.request(ctx, "GET", "/api/slow?seconds=1.5", headers=CLOSE, timeout=20)
            results[i] = (status, json.loads(body))
        except Exception as exc:
            results[i] = repr(exc)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.7)  # every request is in flight (the upstream sleeps 1.5 s)
    mark = proxy.log_count()
    t0 = time.monotonic()
    proxy.terminate()
    proxy.wait_for_log(r"stopping \d+ worker\(s\)", 5, start=mark)
    deadline = time.monotonic() + 5
    while count_logs(proxy, r"draining \d+ connection", mark) < n_workers and time.monotonic() < deadline:
        time.sleep(0.02)
    # draining: the listeners are closed (the parent's copies too): new connections are refused, not queued
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    for t in threads:
        t.join(20)
    rc = proxy.wait(20)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert results == [(200, {"slept": 1.5})] * n
    assert elapsed < 5  # drained as soon as the requests finished, not at drain_timeout (30 s)
    draining = [int(x) for x in re.findall(r"draining (\d+) connection", "\n".join(proxy.logs[mark:]))]
    assert len(draining) == n_workers and sum(draining) == n, draining
    if n_workers > 1:
        assert all(d > 0 for d in draining), draining  # every worker had requests to drain
    assert proxy.logs[-1].endswith("INFO mtls_proxy stopped")
    assert not any(alive(p) for p in pids.values())


# --- 4. workers that cannot start: the parent gives up with a non-zero status ----------------------------------


def test_workers_dying_at_start_make_parent_exit_1(proxies, pki):
    """A worker dies; meanwhile the config on disk became invalid, so every replacement dies at start.

    The parent (already running) is not affected by the file; only the workers that re-read it are.
    After MAX_START_FAILURES (3) deaths in a row before ready, it stops the other worker and exits 1.
    """
    cfg = proxies.config()
    proxy = start_workers(proxies, cfg)
    pids = worker_pids(proxy)
    proxy.write_config(dict(cfg, tls={**cfg["tls"], "key": str(pki.root / "gone.key")}))
    mark = proxy.log_count()
    t0 = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    rc = proxy.wait(30)
    assert rc == 1
    tail = "\n".join(proxy.logs[mark:])
    assert len(re.findall(r"gone\.key: no such file", tail)) == 3, tail  # each replacement's own error
    for k in (1, 2, 3):
        assert re.search(rf"worker 0 exited with 1 before it was ready \({k} in a row\)", tail), tail
    assert "workers keep dying at start: giving up" in tail
    assert not alive(pids[1])  # the healthy worker was stopped too
    assert time.monotonic() - t0 < 15


def test_listen_port_held_by_another_process_parent_exits_1(proxies, pki):
    """A port bound without SO_REUSEPORT by someone else: nobody can join it; exit 1 with the reason."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(8)
    try:
        cfg = proxies.config(listen=f"127.0.0.1:{blocker.getsockname()[1]}")
        path = proxies.tmp_path / "busy.yaml"
        path.write_text(json.dumps(cfg))
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-m", "mtls_proxy", "run", "--config", str(path), "--workers", "2"],
                              capture_output=True, text=True, timeout=30)
    finally:
        blocker.close()
    assert done.returncode == 1
    assert "mtls-proxy: cannot listen: [Errno 98] Address already in use" in done.stderr, done.stderr
    assert "worker 0 ready" not in done.stdout


def test_workers_exit_when_the_parent_is_killed(proxies, pki):
    """PR_SET_PDEATHSIG: a SIGKILLed supervisor leaves no worker serving on its own."""
    cfg = proxies.config()
    proxy = start_workers(proxies, cfg, "--log-format", "json")
    pids = worker_pids(proxy)
    assert sorted(pids) == [0, 1] and all(alive(p) for p in pids.values())
    os.kill(proxy.process.pid, signal.SIGKILL)
    proxy.process.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids.values())
