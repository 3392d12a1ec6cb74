"""Load and faults, bounded in count and time, on loopback only, against real processes.

- a slowloris crowd (hundreds of mTLS connections dribbling a header byte per second) is cut
  off at head_timeout while another client keeps being served, and the proxy's descriptors
  return to their baseline;
- a client that never reads a large download does not grow the proxy's RSS (backpressure
  reaches Django), and the bytes it finally reads are the right ones;
- the upstream killed and restarted under load: 502 only for requests in flight or sent
  while it was down, then served again without touching the proxy;
- descriptors exhausted (RLIMIT_NOFILE lowered on the running proxy): new connections wait,
  the open keep-alive connection is still served, and the proxy recovers once fds free up.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from mtls_proxy.demo_app.content import pattern_chunks
from tests.hardening.conftest import isolated
from tests.hardening.wire import converse
from tests.support.proxy import ProxyFactory
from tests.support.upstream import start_demo_upstream

pytestmark = pytest.mark.slow

GET_ECHO = b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def one_request(port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> tuple[int, float]:
    t0 = time.monotonic()
    conv = converse(port, ctx, GET_ECHO, timeout=timeout)
    return (conv.statuses[0] if conv.responses else 0), time.monotonic() - t0


# --- slowloris ---------------------------------------------------------------------------------------------------

SLOW_CONNECTIONS = 400
HEAD_TIMEOUT = 4.0


async def _slow_client(port: int, ctx: ssl.SSLContext, stop_at: float) -> tuple[str, float, bytes]:
    loop = asyncio.get_running_loop()
    opened = loop.time()  # before connecting: the proxy's head timer can only start after this
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 30)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        return ("connect_failed", 0.0, repr(exc).encode())
    head = b"GET /api/echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 100
    try:
        for i in range(len(head)):
            if loop.time() >= stop_at:
                return ("still_open", loop.time() - opened, b"")
            writer.write(head[i : i + 1])
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1024), 1.0)  # one byte a second
            except TimeoutError:
                continue
            return ("closed" if data == b"" else "answered", loop.time() - opened, data)
        return ("sent_whole_head", loop.time() - opened, b"")
    except (ConnectionError, ssl.SSLError) as exc:
        return ("closed", loop.time() - opened, repr(exc).encode())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


async def _crowd(port: int, ctx: ssl.SSLContext, n: int, seconds: float) -> list[tuple[str, float, bytes]]:
    stop_at = asyncio.get_running_loop().time() + seconds
    sem = asyncio.Semaphore(100)  # handshakes in parallel at most; the dribbling is all at once

    async def one() -> tuple[str, float, bytes]:
        async with sem:
            conn = asyncio.ensure_future(_slow_client(port, ctx, stop_at))
            await asyncio.sleep(0)
        return await conn

    return await asyncio.gather(*(one() for _ in range(n)))


def test_slowloris_crowd_is_cut_off_and_others_are_served(tmp_path, pki, upstream):
    factory = ProxyFactory(tmp_path, pki, upstream.url)
    try:
        # the crowd comes from one address: let all of it through the handshake budget (what is tested
        # here is head_timeout; the budget has its own tests in test_handshake_budget.py)
        proxy = factory.start(**isolated(limits={"head_timeout": HEAD_TIMEOUT, "upstream_max_idle": 0,
                                                 "max_handshakes_per_address": 1000}))
        ctx = pki.client_context(pki.client("load-client"))
        pid = proxy.process.pid
        assert one_request(proxy.port, ctx)[0] == 200
        time.sleep(0.3)
        baseline = fd_count(pid)

        served: list[tuple[int, float]] = []
        stop = threading.Event()

        def good_client() -> None:
            while not stop.is_set():
                served.append(one_request(proxy.port, ctx))
                time.sleep(0.1)

        t = threading.Thread(target=good_client, daemon=True)
        t.start()
        t0 = time.monotonic()
        results = asyncio.run(_crowd(proxy.port, ctx, SLOW_CONNECTIONS, seconds=HEAD_TIMEOUT + 6))
        elapsed = time.monotonic() - t0
        stop.set()
        t.join(15)
        peak_note = f"crowd took {elapsed:.1f}s"

        kinds = {k for k, _, _ in results}
        assert kinds == {"closed"}, (peak_note, [r for r in results if r[0] != "closed"][:5])
        # cut off by head_timeout (which starts when the proxy completes the handshake), never answered
        assert all(HEAD_TIMEOUT <= after <= HEAD_TIMEOUT + 4.0 for _, after, _ in results), \
            sorted(a for _, a, _ in results)[:: max(1, len(results) // 10)]
        assert all(data in (b"",) or data.startswith(b"ConnectionResetError") for _, _, data in results)
        # the other client was served throughout, promptly
        assert len(served) >= 10
        assert {s for s, _ in served} == {200}
        assert max(d for _, d in served) < 2.0, sorted(d for _, d in served)[-5:]
        # descriptors back to the baseline: nothing leaked per connection
        assert wait_until(lambda: fd_count(pid) == baseline, 10), (fd_count(pid), baseline)
        assert proxy.process.poll() is None
    finally:
        factory.close()


# --- a client that never reads ------------------------------------------------------------------------------------

DOWNLOAD = 512 * 1024 * 1024  # far more than any buffer on the way
RSS_BOUND_KIB = 48 * 1024


def test_client_that_never_reads_does_not_grow_rss(tmp_path, pki, upstream):
    factory = ProxyFactory(tmp_path, pki, upstream.url)
    try:
        proxy = factory.start(**isolated())
        ctx = pki.client_context(pki.client("load-client"))
        pid = proxy.process.pid
        for _ in range(3):
            assert one_request(proxy.port, ctx)[0] == 200
        baseline = rss_kib(pid)

        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", proxy.port))
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        try:
            tls.sendall(f"GET /api/download?size={DOWNLOAD}&seed=stall HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            peak = baseline
            for _ in range(16):  # 8 s without reading a byte
                time.sleep(0.5)
                peak = max(peak, rss_kib(pid))
            assert peak - baseline < RSS_BOUND_KIB, (baseline, peak)
            # meanwhile the proxy serves others
            assert one_request(proxy.port, ctx)[0] == 200
            # now read: the head, then the first MiB of the body is exactly the pattern
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += tls.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert f"content-length: {DOWNLOAD}".encode() in head.lower()
            want = next(pattern_chunks(1 << 20, "stall"))
            while len(body) < len(want):
                body += tls.recv(65536)
            assert body[: len(want)] == want
        finally:
            tls.close()
        # the abandoned download is dropped: the proxy stays small and healthy
        assert one_request(proxy.port, ctx)[0] == 200
        assert rss_kib(pid) - baseline < RSS_BOUND_KIB
        # logged as a download the client walked away from (and the upstream side was reset)
        proxy.wait_for_log(r"path=/api/download\?size=\d+&seed=stall status=200 .*reason=client_closed", 10)
    finally:
        factory.close()


# --- upstream restart under load ---------------------------------------------------------------------------------


def test_upstream_restart_under_load(tmp_path, pki):
    up_dir = tmp_path / "up"
    up = start_demo_upstream(up_dir, signing_key_file=pki.signing_key)
    sock_path = up.socket_path
    assert sock_path is not None
    factory = ProxyFactory(tmp_path, pki, up.url)
    ups = [up]
    try:
        proxy = factory.start(**isolated(limits={"upstream_connect_timeout": 1}))
        pid = proxy.process.pid
        ctx = pki.client_context(pki.client("load-client"))
        records: list[tuple[float, float, int, str, str]] = []  # (start, end, status, reason, method)
        lock = threading.Lock()
        stop = threading.Event()

        def worker(method: str) -> None:
            conn = None
            while not stop.is_set():
                start = time.monotonic()
                try:
                    if conn is None:
                        conn = http.client.HTTPSConnection("localhost", proxy.port, context=ctx, timeout=15)
                    conn.request(method, "/api/slow?seconds=0.2")
                    resp = conn.getresponse()
                    body = resp.read()
                    status = resp.status
                    reason = json.loads(body).get("reason", "") if status != 200 else ""
                    if resp.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as exc:
                    status, reason = 0, repr(exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                with lock:
                    records.append((start, time.monotonic(), status, reason, method))
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=worker, args=(m,), daemon=True) for m in ("GET", "GET", "GET", "POST")]
        for t in threads:
            t.start()
        time.sleep(1.5)
        t_kill = time.monotonic()
        os.kill(up.process.pid, signal.SIGKILL)
        up.process.wait(10)
        time.sleep(0.5)  # down for a while: requests sent now cannot be served
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)  # the killed server left its socket file behind
        new = start_demo_upstream(up_dir, signing_key_file=pki.signing_key)
        ups.append(new)
        assert new.socket_path == sock_path
        t_ready = time.monotonic()
        time.sleep(2.5)
        stop.set()
        for t in threads:
            t.join(20)

        assert proxy.process.poll() is None and proxy.process.pid == pid  # the same proxy throughout
        statuses = {r[2] for r in records}
        assert statuses <= {200, 502}, sorted({(r[2], r[3]) for r in records if r[2] != 200})
        bad = [r for r in records if r[2] != 200]
        assert bad, "the restart was not noticed at all"
        assert {r[3] for r in bad} <= {"upstream_reset", "upstream_connect_failed"}
        # every 502 was for a request in flight at the kill or sent while Django was down
        assert all(s1 > t_kill and s0 < t_ready for s0, s1, *_ in bad), (t_kill, t_ready, bad)
        # the requests in flight at the kill were answered 502, not left hanging; a GET may have been
        # retried once on a fresh connection (which found Django down), a POST never is
        in_flight = [r for r in records if r[0] < t_kill < r[1]]
        assert in_flight and all(r[2] == 502 for r in in_flight), in_flight
        assert all(r[3] == "upstream_reset" for r in in_flight if r[4] == "POST"), in_flight
        # and after the restart everything is served again, by itself
        after = [r for r in records if r[0] >= t_ready]
        assert len(after) >= 8
        assert {r[2] for r in after} == {200}
    finally:
        factory.close()
        for u in ups:
            u.stop()


# --- file descriptors exhausted ------------------------------------------------------------------------------------


async def _hogs(port: int, ctx: ssl.SSLContext, n: int, timeout: float) -> tuple[list, int]:
    async def one():
        try:
            return await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), timeout)
        except (TimeoutError, OSError, ssl.SSLError):
            return None

    got = await asyncio.gather(*(one() for _ in range(n)))
    opened = [g for g in got if g is not None]
    return opened, n - len(opened)


def test_fd_exhaustion_delays_new_connections_serves_open_ones_and_recovers(tmp_path, pki, upstream):
    factory = ProxyFactory(tmp_path, pki, upstream.url)
    try:
        proxy = factory.start(**isolated(limits={"upstream_idle_timeout": "60s"}))
        pid = proxy.process.pid
        ctx = pki.client_context(pki.client("load-client"))
        keep = http.client.HTTPSConnection("localhost", proxy.port, context=ctx, timeout=10)
        keep.request("GET", "/api/echo")
        first = keep.getresponse()
        assert first.status == 200 and not first.will_close
        first.read()
        headroom = 12
        limit = fd_count(pid) + headroom
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        mark = proxy.log_count()

        async def scenario() -> tuple[int, int, int, int]:
            opened, failed = await _hogs(proxy.port, ctx, 3 * headroom, timeout=3.0)
            n_open = len(opened)
            # the open keep-alive connection is still served (its upstream connection is pooled)
            loop = asyncio.get_running_loop()

            def ask() -> int:
                keep.request("GET", "/api/echo")
                r = keep.getresponse()
                r.read()
                return r.status

            kept = await loop.run_in_executor(None, ask)
            # a new connection now waits in the backlog: no handshake within 2 s
            _, late_failed = await _hogs(proxy.port, ctx, 1, timeout=2.0)
            for _, w in opened:
                w.close()
            for _, w in opened:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 2)
            return n_open, failed, kept, late_failed

        n_open, failed, kept, late_failed = asyncio.run(scenario())
        assert 0 < n_open <= headroom, (n_open, failed)
        assert failed > 0
        assert kept == 200
        assert late_failed == 1
        proxy.wait_for_log(r"accept failed: .*Too many open files", 5, start=mark)
        # the descriptors are free again: new connections are served, with the low limit still in place
        assert wait_until(lambda: one_request(proxy.port, ctx, timeout=5)[0] == 200, 15)
        assert resource.prlimit(pid, resource.RLIMIT_NOFILE)[0] == limit
        keep.request("GET", "/api/echo")
        again = keep.getresponse()
        again.read()
        assert again.status == 200
        keep.close()
        assert proxy.process.poll() is None
    finally:
        factory.close()


def test_bodyless_post_is_never_retried_after_the_upstream_died_on_it(tmp_path, pki):
    """A pooled connection that dies before answering: a GET is retried once, a POST never (it may have run)."""
    up = start_demo_upstream(tmp_path / "up", signing_key_file=pki.signing_key)
    factory = ProxyFactory(tmp_path, pki, up.url)
    try:
        proxy = factory.start(**isolated(limits={"upstream_connect_timeout": 1}))
        ctx = pki.client_context(pki.client("load-client"))
        conn = http.client.HTTPSConnection("localhost", proxy.port, context=ctx, timeout=15)
        conn.request("GET", "/api/echo")  # leaves one idle upstream connection in the pool
        warm = conn.getresponse()
        warm.read()
        assert warm.status == 200
        result: dict[str, object] = {}

        def post() -> None:
            conn.request("POST", "/api/slow?seconds=3")  # no body: the case the retry rule used to allow
            resp = conn.getresponse()
            result["status"], result["body"] = resp.status, json.loads(resp.read())

        t = threading.Thread(target=post, daemon=True)
        t.start()
        time.sleep(0.8)  # Django has the request (on the reused pooled connection) and sleeps
        os.kill(up.process.pid, signal.SIGKILL)
        t.join(10)
        assert result == {"status": 502, "body": {"error": "bad gateway", "reason": "upstream_reset"}}
        conn.close()
    finally:
        factory.close()
        up.stop()
