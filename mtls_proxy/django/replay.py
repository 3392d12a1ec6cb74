"""Replay stores: remember every signature nonce until it expires, for every worker and host.

A nonce store is only as good as its weakest forgetting: per-process memory lets each extra
worker accept a replay once, and a cache that evicts live entries under load lets replays
through exactly when an attacker floods it. So every store here

* inserts if absent, atomically (a unique key in the database, ``SET NX`` in Redis): of
  any number of concurrent requests with one nonce, exactly one wins;
* never drops a nonce before its expiry (purging removes only expired rows; Redis must
  run with ``maxmemory-policy noeviction``, which is checked);
* fails closed: when it cannot answer, :class:`ReplayStoreUnavailable` (HTTP 503), never
  "assume fresh" and never a fallback to a weaker store.

``expires_at`` is the signature's timestamp + ``MAX_AGE`` + ``CLOCK_SKEW``; hosts whose
clocks differ by less than ``CLOCK_SKEW`` therefore never purge a nonce another host would
still accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from mtls_proxy.identity import IdentityError, NonceCache

if TYPE_CHECKING:
    from mtls_proxy.django.conf import ProxyIdentitySettings

__all__ = [
    "DatabaseReplayStore",
    "ProcessReplayStore",
    "RedisReplayStore",
    "ReplayStore",
    "ReplayStoreUnavailable",
    "build_replay_store",
]

#: Seconds between two purges of expired rows by one process (the purge rides on a write).
PURGE_INTERVAL = 10.0
#: Seconds a Redis operation may take before the store counts as unavailable.
REDIS_TIMEOUT = 2.0
#: Seconds between two checks of Redis' eviction policy.
REDIS_POLICY_RECHECK = 60.0
REDIS_KEY_PREFIX = "mtls-proxy:nonce:"


class ReplayStoreUnavailable(Exception):
    """The store cannot say whether a nonce is fresh: refuse the request (503) with ``reason``."""

    def __init__(self, detail: str, reason: str = "replay_store_unavailable") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ReplayStore:
    """``claim(nonce)`` is True for the first use of a nonce and False for every later one."""

    #: Shared by every process that uses the same backend (False: this process only).
    shared = True
    name = "abstract"

    def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        raise NotImplementedError

    async def aclaim(self, nonce: str, expires_at: float, now: float) -> bool:
        return await sync_to_async(self.claim, thread_sensitive=True)(nonce, expires_at, now)


class ProcessReplayStore(ReplayStore):
    """:class:`~mtls_proxy.identity.NonceCache` behind a lock: correct for exactly one process."""

    shared = False
    name = "process"

    def __init__(self, max_entries: int) -> None:
        self._cache = NonceCache(max_entries)
        self._lock = threading.Lock()

    def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        try:
            with self._lock:
                return not self._cache(nonce, expires_at)
        except IdentityError as exc:  # full of live nonces: refusing beats evicting one
            raise ReplayStoreUnavailable(exc.detail, exc.reason) from exc

    async def aclaim(self, nonce: str, expires_at: float, now: float) -> bool:
        return self.claim(nonce, expires_at, now)  # never blocks for long: no thread hop


class DatabaseReplayStore(ReplayStore):
    """One row per nonce (``mtls_proxy.UsedNonce``, the nonce is the primary key) in ``alias``.

    The INSERT either creates the row or fails on the unique key: that is the atomic
    insert-if-absent, on SQLite and PostgreSQL alike. Expired rows are deleted by the
    inserting process at most every :data:`PURGE_INTERVAL` seconds. The insert commits on
    its own (autocommit); inside an open transaction it could be rolled back later and the
    nonce forgotten, so that case is refused.
    """

    name = "database"

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._next_purge = 0.0

    def _insert(self, nonce: str, expires_at: float, now: float) -> bool:
        """One attempt: True if inserted, False if the nonce is there; other DatabaseErrors propagate."""
        from django.db import DatabaseError, IntegrityError, connections

        from mtls_proxy.django.models import UsedNonce

        rows = UsedNonce.objects.using(self.alias)
        try:
            if now >= self._next_purge:
                self._next_purge = now + PURGE_INTERVAL
                rows.filter(expires_at__lt=now).delete()
            rows.create(nonce=nonce, expires_at=expires_at)
        except IntegrityError:
            return False
        except DatabaseError:
            # A broken connection must not be reused, by a retry or by the next request of this thread.
            with contextlib.suppress(Exception):
                connections[self.alias].close()
            raise
        return True

    def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        from django.db import DatabaseError, connections

        connection = connections[self.alias]
        if connection.in_atomic_block:
            raise ReplayStoreUnavailable(f"database {self.alias!r}: nonce insert inside an open transaction")
        # A kept-alive connection the server dropped (restart, idle timeout) fails once and is replaced.
        # Had the first INSERT committed before the connection died, the retry hits the key and the
        # request is refused as a replay: wrong, but closed.
        reused = connection.connection is not None
        try:
            return self._insert(nonce, expires_at, now)
        except DatabaseError as exc:
            if not reused:
                raise ReplayStoreUnavailable(f"database {self.alias!r}: {exc}".strip()) from exc
        try:
            return self._insert(nonce, expires_at, now)
        except DatabaseError as exc:
            raise ReplayStoreUnavailable(f"database {self.alias!r}: {exc}".strip()) from exc


class RedisReplayStore(ReplayStore):
    """``SET key 1 NX PX <ms to expiry>`` on a Redis server shared by every Django host.

    Redis must not evict keys that have not expired, i.e. run with ``maxmemory-policy
    noeviction`` (then a full Redis answers errors, which become 503s); any other policy
    may drop live nonces under memory pressure, so the store refuses to work with it.
    """

    name = "redis"

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._sync = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        self._policy_checked_until = 0.0

    @staticmethod
    def _key(nonce: str) -> str:
        return REDIS_KEY_PREFIX + nonce

    @staticmethod
    def _ttl_ms(expires_at: float, now: float) -> int:
        return max(1, math.ceil((expires_at - now) * 1000))

    def _policy_problem(self, info: dict[str, Any]) -> str | None:
        policy = info.get("maxmemory_policy")
        if policy != "noeviction":
            return f"Redis maxmemory-policy is {policy!r}; it may evict live nonces: set it to 'noeviction'"
        return None

    def _unavailable(self, exc: Exception) -> ReplayStoreUnavailable:
        return ReplayStoreUnavailable(f"redis {self.url}: {type(exc).__name__}: {exc}")

    def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        try:
            if now >= self._policy_checked_until:
                problem = self._policy_problem(self._sync.info("memory"))
                if problem:
                    raise ReplayStoreUnavailable(problem)
                self._policy_checked_until = now + REDIS_POLICY_RECHECK
            return bool(self._sync.set(self._key(nonce), b"1", nx=True, px=self._ttl_ms(expires_at, now)))
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    def _async_client(self) -> Any:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:  # clients are bound to one event loop
            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            self._async = (loop, client)
        return self._async[1]

    async def aclaim(self, nonce: str, expires_at: float, now: float) -> bool:
        client = self._async_client()
        try:
            if now >= self._policy_checked_until:
                problem = self._policy_problem(await client.info("memory"))
                if problem:
                    raise ReplayStoreUnavailable(problem)
                self._policy_checked_until = now + REDIS_POLICY_RECHECK
            return bool(await client.set(self._key(nonce), b"1", nx=True, px=self._ttl_ms(expires_at, now)))
        except self._errors as exc:
            raise self._unavailable(exc) from exc


def build_replay_store(conf: ProxyIdentitySettings) -> ReplayStore:
    """The store ``REPLAY_STORE`` names (settings are validated before this is called)."""
    if conf.replay_store == "database":
        return DatabaseReplayStore(conf.replay_database)
    if conf.replay_store == "redis":
        assert conf.replay_redis_url is not None
        return RedisReplayStore(conf.replay_redis_url)
    return ProcessReplayStore(conf.replay_process_max_entries)
