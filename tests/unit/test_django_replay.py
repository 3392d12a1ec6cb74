"""The replay store parts that need no server: the per-process store and the refusal mapping.

The database and Redis stores run against real servers in tests/integration/test_replay_stores.py.
"""

from __future__ import annotations

import time

import pytest

from mtls_proxy.django.replay import ProcessReplayStore, RedisReplayStore, ReplayStoreUnavailable
from mtls_proxy.django.verify import refusal_for
from mtls_proxy.identity import IdentityError


def test_process_store_claims_once_and_refuses_when_full() -> None:
    store = ProcessReplayStore(max_entries=1000)
    now = time.time()
    assert not store.shared
    assert all(store.claim(f"{i:032x}", now + 15, now) for i in range(1000))
    assert not any(store.claim(f"{i:032x}", now + 15, now) for i in range(1000))
    with pytest.raises(ReplayStoreUnavailable) as info:
        store.claim("f" * 32, now + 15, now)
    assert info.value.reason == "replay_store_full"
    assert refusal_for(info.value).status == 503
    assert refusal_for(info.value).body == {"error": "replay store unavailable", "reason": "replay_store_full"}


async def test_process_store_async_claim() -> None:
    store = ProcessReplayStore(max_entries=1000)
    now = time.time()
    assert await store.aclaim("a" * 32, now + 15, now) is True
    assert await store.aclaim("a" * 32, now + 15, now) is False


def test_refusals() -> None:
    down = refusal_for(ReplayStoreUnavailable("database 'default': connection refused"))
    assert (down.status, down.body) == (503, {"error": "replay store unavailable",
                                              "reason": "replay_store_unavailable"})
    assert down.json_bytes() == b'{"error": "replay store unavailable", "reason": "replay_store_unavailable"}'
    bad = refusal_for(IdentityError("bad_signature"))
    assert (bad.status, bad.body) == (403, {"error": "untrusted client identity", "reason": "bad_signature"})


@pytest.mark.parametrize(("policy", "ok"), [("noeviction", True), ("allkeys-lru", False), ("volatile-ttl", False),
                                            (None, False)])
def test_redis_eviction_policy(policy: str | None, ok: bool) -> None:
    store = RedisReplayStore("redis://127.0.0.1:1/0")  # never connected here
    problem = store._policy_problem({"maxmemory_policy": policy} if policy else {})
    assert (problem is None) == ok
    assert RedisReplayStore._ttl_ms(100.0005, 100.0) == 1 and RedisReplayStore._ttl_ms(115.0, 100.0) == 15000
