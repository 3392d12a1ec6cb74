"""Replay stores against real servers: Django under gunicorn (4 sync workers) and uvicorn (2 workers),
nonces in SQLite, in a PostgreSQL server and in a Redis server that the tests start.

Requests go straight to Django's Unix socket (as an attacker on the proxy->Django link would)
with headers the real :class:`~mtls_proxy.identity.IdentityEncoder` signed. A captured header
set fired many times, concurrently, at every worker must be accepted exactly once in total.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_proxy.certs import PeerIdentity, parse_peer
from mtls_proxy.identity import IdentityEncoder, IdentityOptions
from mtls_proxy.pki.x509 import issue_ca, issue_client
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.redis import RedisServer, start_redis
from tests.support.upstream import DemoUpstream, start_demo_upstream

pytestmark = pytest.mark.timeout(300)

SERVERS = [("gunicorn", 4), ("uvicorn", 2)]
STORES = ["sqlite", "postgresql", "redis"]


@pytest.fixture(scope="module")
def encoder(signing_key: tuple[Path, bytes]) -> IdentityEncoder:
    return IdentityEncoder(IdentityOptions(signing_key=signing_key[1]))


@pytest.fixture(scope="module")
def peer() -> PeerIdentity:
    ca = issue_ca({"CN": "Replay Test CA"})
    return parse_peer(issue_client({"CN": "device-r"}, ca).cert.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


def sqlite_database(path: Path) -> dict[str, Any]:
    # WAL + a busy timeout: four workers write the one file concurrently.
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path),
            "OPTIONS": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}}


def store_env(store: str, tmp_path: Path, postgres: PostgresServer | None, redis: RedisServer | None,
              **more: str) -> dict[str, str]:
    """The demo's environment for one replay store (see mtls_proxy/demo_app/settings.py)."""
    if store == "sqlite":
        env = {"MTLS_DEMO_DATABASE": json.dumps(sqlite_database(tmp_path / "nonces.sqlite3"))}
    elif store == "postgresql":
        assert postgres is not None
        env = {"MTLS_DEMO_DATABASE": json.dumps(postgres.django_database())}
    else:
        assert redis is not None
        env = {"MTLS_PROXY_REPLAY_STORE": "redis", "MTLS_PROXY_REPLAY_REDIS_URL": redis.url}
    return {**env, **more}


def start(tmp_path: Path, key: Path, server: str, workers: int, env: dict[str, str]) -> DemoUpstream:
    return start_demo_upstream(tmp_path, signing_key_file=key, server=server, workers=workers, extra_env=env,
                               ready_timeout=60)


def send(up: DemoUpstream, method: str, target: str, headers: Sequence[tuple[bytes, bytes]],
         body: bytes | None = None) -> tuple[int, dict[str, Any], str | None]:
    """One request on a fresh connection: (status, JSON body, X-Demo-Pid or None)."""
    conn = up.connection(timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)  # Host: localhost
        for name, value in headers:
            conn.putheader(name.decode(), value.decode())
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("X-Demo-Pid")
    finally:
        conn.close()


def signed(encoder: IdentityEncoder, peer: PeerIdentity, method: str, target: str,
           body_length: int | None = None) -> tuple[tuple[bytes, bytes], ...]:
    return encoder.request_headers(encoder.connection_headers(peer), method=method.encode(), target=target.encode(),
                                   host=b"localhost", content_length=body_length, chunked=False)


def fire(up: DemoUpstream, calls: Sequence[tuple[str, str, Sequence[tuple[bytes, bytes]], bytes | None]],
         threads: int = 16) -> list[tuple[int, dict[str, Any], str | None]]:
    """All ``calls`` from ``threads`` client threads at once (a barrier lines them up)."""
    barrier = threading.Barrier(min(threads, len(calls)))

    def one(index: int) -> tuple[int, dict[str, Any], str | None]:
        if index < barrier.parties:
            barrier.wait(30)
        return send(up, *calls[index])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(calls))))


def store_fixtures(store: str, request: pytest.FixtureRequest) -> tuple[PostgresServer | None, RedisServer | None]:
    pg = request.getfixturevalue("postgres") if store == "postgresql" else None
    rd = request.getfixturevalue("redis_server") if store == "redis" else None
    return pg, rd


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize(("server", "workers"), SERVERS)
def test_captured_headers_accepted_exactly_once_across_all_workers(
    tmp_path: Path, signing_key: tuple[Path, bytes], encoder: IdentityEncoder, peer: PeerIdentity,
    request: pytest.FixtureRequest, server: str, workers: int, store: str,
) -> None:
    pg, rd = store_fixtures(store, request)
    with start(tmp_path, signing_key[0], server, workers, store_env(store, tmp_path, pg, rd)) as up:
        assert len(up.worker_pids) == workers
        # Fresh signatures first: every worker serves (and so has its own chance to accept a replay below).
        fresh = fire(up, [("GET", f"/api/echo?i={i}", signed(encoder, peer, "GET", f"/api/echo?i={i}"), None)
                          for i in range(60)])
        assert [status for status, _, _ in fresh] == [200] * 60
        assert {body["pid"] for _, body, _ in fresh} == set(up.worker_pids)

        body = b'{"amount": 100}'
        capture = signed(encoder, peer, "POST", "/api/echo/transfer?to=alice", len(body))
        results = fire(up, [("POST", "/api/echo/transfer?to=alice", capture, body)] * 200, threads=24)
        outcomes = Counter((status, data.get("reason")) for status, data, _ in results)
        assert outcomes == {(200, None): 1, (403, "replayed"): 199}, outcomes
        if server == "gunicorn":  # refusals come from the middleware, so every response names its worker
            assert {pid for _, _, pid in results} == {str(p) for p in up.worker_pids}

        # The same capture, later, one by one: still never again.
        for _ in range(workers * 3):
            status, data, _ = send(up, "POST", "/api/echo/transfer?to=alice", capture, body)
            assert (status, data["reason"]) == (403, "replayed")


@pytest.mark.slow
def test_10000_nonces_in_one_window_none_replayable_over_http(
    tmp_path: Path, signing_key: tuple[Path, bytes], encoder: IdentityEncoder, peer: PeerIdentity,
    postgres: PostgresServer,
) -> None:
    """The old shared caches evicted live nonces past 300 entries; 10,000 within one window must all hold."""
    env = store_env("postgresql", tmp_path, postgres, None, MTLS_PROXY_MAX_AGE="600")  # the whole test: one window
    with start(tmp_path, signing_key[0], "gunicorn", 4, env) as up:
        # /api/whoami: a sync DRF view, cheap under WSGI (the async echo view needs an event loop per request)
        calls = [("GET", f"/api/whoami?n={i}", signed(encoder, peer, "GET", f"/api/whoami?n={i}"), None)
                 for i in range(10_000)]
        first = fire(up, calls, threads=12)
        assert Counter(status for status, _, _ in first) == {200: 10_000}
        again = fire(up, calls, threads=12)
        assert Counter((status, data.get("reason")) for status, data, _ in again) == {(403, "replayed"): 10_000}
        live = postgres.psql("SELECT count(*) FROM mtls_proxy_used_nonce WHERE expires_at > extract(epoch from now())")
        assert int(live) >= 10_000  # all still held (rows of earlier tests may be there too)


_CLAIM_SCRIPT = """
import os, sys, time
import django
django.setup()
from mtls_proxy.django.conf import get_settings
from mtls_proxy.django.replay import build_replay_store
store = build_replay_store(get_settings())
part, parts = int(sys.argv[1]), int(sys.argv[2])
now = time.time()
nonces = [f"{i:032x}" for i in range(10_000)]
order = nonces[part::parts] + nonces  # first its own share, then every nonce (all replays of someone's)
won = [n for n in order if store.claim(n, now + 600, time.time())]
print(",".join(won))
"""


@pytest.mark.parametrize("store", STORES)
def test_10000_nonces_claimed_once_by_four_processes(
    tmp_path: Path, signing_key: tuple[Path, bytes], request: pytest.FixtureRequest, store: str
) -> None:
    """Four processes claim the same 10,000 nonces at once, in one window: each nonce is won exactly once."""
    pg, rd = store_fixtures(store, request)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mtls_proxy.demo_app.settings", "MTLS_DEMO_WORKERS": "4",
           "MTLS_PROXY_SIGNING_KEY_FILE": str(signing_key[0]), **store_env(store, tmp_path, pg, rd)}
    if "MTLS_DEMO_DATABASE" in env:
        subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], env=env, check=True, timeout=120)
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM_SCRIPT, str(i), "4"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    won: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        won += [n for n in out.strip().split(",") if n]
    assert len(won) == 10_000 and len(set(won)) == 10_000


@pytest.mark.parametrize(("server", "workers"), SERVERS)
def test_postgresql_down_is_503_then_recovers(
    tmp_path: Path, signing_key: tuple[Path, bytes], encoder: IdentityEncoder, peer: PeerIdentity,
    server: str, workers: int,
) -> None:
    pg = start_postgres()
    try:
        with start(tmp_path, signing_key[0], server, workers, store_env("postgresql", tmp_path, pg, None)) as up:
            assert send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))[0] == 200
            pg.stop()
            for _ in range(workers * 2):
                status, data, _ = send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))
                assert (status, data) == (503, {"error": "replay store unavailable",
                                                "reason": "replay_store_unavailable"})
            # no identity, no store needed: public endpoints keep working
            assert send(up, "GET", "/api/echo", ())[0] == 200
            assert "refused client identity headers: replay_store_unavailable (database 'default'" in up.stderr_text()
            pg.start()
            for _ in range(workers * 2):  # every worker reconnects
                assert send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))[0] == 200
    finally:
        pg.close()


@pytest.mark.parametrize(("server", "workers"), SERVERS)
def test_redis_down_is_503_then_recovers(
    tmp_path: Path, signing_key: tuple[Path, bytes], encoder: IdentityEncoder, peer: PeerIdentity,
    server: str, workers: int,
) -> None:
    rd = start_redis()
    try:
        with start(tmp_path, signing_key[0], server, workers, store_env("redis", tmp_path, None, rd)) as up:
            assert send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))[0] == 200
            rd.stop()
            for _ in range(workers * 2):
                status, data, _ = send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))
                assert (status, data["reason"]) == (503, "replay_store_unavailable")
            assert "refused client identity headers: replay_store_unavailable (redis redis://" in up.stderr_text()
            rd.start()
            for _ in range(workers * 2):
                assert send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))[0] == 200
    finally:
        rd.close()


def test_redis_that_may_evict_is_refused(
    tmp_path: Path, signing_key: tuple[Path, bytes], encoder: IdentityEncoder, peer: PeerIdentity
) -> None:
    rd = start_redis(("--maxmemory-policy", "allkeys-lru"))
    try:
        with start(tmp_path, signing_key[0], "uvicorn", 1, store_env("redis", tmp_path, None, rd)) as up:
            status, data, _ = send(up, "GET", "/api/echo", signed(encoder, peer, "GET", "/api/echo"))
            assert (status, data["reason"]) == (503, "replay_store_unavailable")
            assert "maxmemory-policy is 'allkeys-lru'" in up.stderr_text()
    finally:
        rd.close()


# --- a per-process store is a configuration error -------------------------------------------------


def django_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "mtls_proxy.demo_app.settings", **env}
    return subprocess.run([sys.executable, "-m", "django", "check"], capture_output=True, text=True, env=full,
                          timeout=60, check=False)


def test_system_check_errors_on_a_per_process_store(tmp_path: Path, signing_key: tuple[Path, bytes]) -> None:
    key = {"MTLS_PROXY_SIGNING_KEY_FILE": str(signing_key[0])}
    several = django_check({**key, "MTLS_PROXY_REPLAY_STORE": "process", "MTLS_DEMO_WORKERS": "4"})
    assert several.returncode == 1
    assert "ERRORS:" in several.stderr and "(mtls_proxy.E001) MTLS_PROXY['REPLAY_STORE'] is 'process'" in several.stderr
    assert "SINGLE_PROCESS" in several.stderr
    # SINGLE_PROCESS (the demo sets it for one worker) says it is deliberate: no error
    single = django_check({**key, "MTLS_PROXY_REPLAY_STORE": "process", "MTLS_DEMO_WORKERS": "1"})
    assert single.returncode == 0, single.stderr
    shared = django_check({**key, "MTLS_DEMO_DATABASE": json.dumps(sqlite_database(tmp_path / "c.sqlite3"))})
    assert shared.returncode == 0, shared.stderr
    memory = django_check({**key, "MTLS_DEMO_DATABASE": json.dumps(
        {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"})})
    assert memory.returncode == 1 and "(mtls_proxy.E004)" in memory.stderr


def test_gunicorn_with_a_per_process_store_refuses_to_start(tmp_path: Path, signing_key: tuple[Path, bytes]) -> None:
    # gunicorn never runs system checks: the middleware raises the same error when it loads.
    with pytest.raises(RuntimeError, match=r"ImproperlyConfigured: mtls_proxy.E001"):
        start(tmp_path, signing_key[0], "gunicorn", 4, {"MTLS_PROXY_REPLAY_STORE": "process"})
