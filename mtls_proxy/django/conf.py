"""``settings.MTLS_PROXY``: read once, validated, turned into one frozen object.

Misconfiguration must stop the process at start-up (``ImproperlyConfigured`` raised when
the middleware is built), not surface as 403s, or worse as unchecked identities, later.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from mtls_proxy.identity import ClientCert, keys_by_id, load_signing_key

__all__ = [
    "DEFAULTS",
    "REPLAY_STORES",
    "TRUST_MODES",
    "UNIX_PEER",
    "ProxyIdentitySettings",
    "get_settings",
    "load_settings",
]

#: ``TRUSTED_PEERS`` token for requests that arrived on a Unix socket (no REMOTE_ADDR).
UNIX_PEER = "unix"

TRUST_MODES = ("signature", "trusted-peers")
#: Where nonces are remembered (mtls_proxy.django.replay): shared by all workers, or this process only.
REPLAY_STORES = ("database", "redis", "process")

DEFAULTS: dict[str, Any] = {
    "SIGNING_KEY": None,
    "SIGNING_KEY_FILE": None,
    "PREVIOUS_SIGNING_KEYS": [],
    "PREVIOUS_SIGNING_KEY_FILES": [],
    "MAX_AGE": 10,
    "CLOCK_SKEW": 5,
    "TRUST": "signature",
    "TRUSTED_PEERS": ["127.0.0.1", "::1"],
    "REPLAY_STORE": "database",
    "REPLAY_DATABASE": "default",
    "REPLAY_REDIS_URL": None,
    "REPLAY_PROCESS_MAX_ENTRIES": 100_000,
    "SINGLE_PROCESS": False,
    "USER_RESOLVER": "mtls_proxy.django.authentication.default_user_resolver",
}

#: Settings that existed once: a clear message instead of "unknown key".
_REMOVED = {
    "NONCE_CACHE": "nonces now live in REPLAY_STORE ('database', 'redis' or 'process')",
    "NONCE_CACHE_MAX_ENTRIES": "see REPLAY_PROCESS_MAX_ENTRIES (the 'process' store only)",
}
_MIN_KEY_BYTES = 32
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
PeerNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyIdentitySettings:
    """The validated ``MTLS_PROXY`` settings."""

    trust: str
    keys: dict[str, bytes]  # key id -> key (mtls_proxy.identity.key_id)
    max_age: float
    clock_skew: float
    trusted_networks: tuple[PeerNetwork, ...]
    trust_unix: bool
    replay_store: str
    replay_database: str
    replay_redis_url: str | None
    replay_process_max_entries: int
    single_process: bool
    user_resolver: Callable[[ClientCert], Any]

    def is_trusted_peer(self, remote_addr: str | None) -> bool:
        """Is the TCP peer (None/empty: a Unix socket) one of the configured proxies?"""
        if not remote_addr:
            return self.trust_unix
        try:
            addr = ipaddress.ip_address(remote_addr.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted_networks)


def _text_key(value: object, where: str) -> bytes:
    if not isinstance(value, str | bytes):
        raise ImproperlyConfigured(f"MTLS_PROXY[{where!r}] must be a string")
    key = (value.encode("utf-8") if isinstance(value, str) else value).strip()
    if len(key) < _MIN_KEY_BYTES:
        raise ImproperlyConfigured(f"MTLS_PROXY[{where!r}] is too short: need at least {_MIN_KEY_BYTES} bytes")
    return key


def _file_key(path: object, where: str) -> bytes:
    if not isinstance(path, str):
        raise ImproperlyConfigured(f"MTLS_PROXY[{where!r}] must be a file path string")
    try:
        return load_signing_key(path)
    except (OSError, ValueError) as exc:
        raise ImproperlyConfigured(f"MTLS_PROXY[{where!r}]: {exc}") from exc


def _string_list(value: object, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ImproperlyConfigured(f"MTLS_PROXY[{where!r}] must be a list of strings")
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        raise ImproperlyConfigured(f"MTLS_PROXY[{where!r}] must be a list of strings")
    return items


def load_settings(raw: dict[str, Any] | None) -> ProxyIdentitySettings:
    """Validate a ``MTLS_PROXY`` dict (None: all defaults)."""
    raw = dict(raw or {})
    for old, hint in _REMOVED.items():
        if old in raw:
            raise ImproperlyConfigured(f"MTLS_PROXY[{old!r}] was removed: {hint}")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(f"MTLS_PROXY has unknown keys: {', '.join(unknown)}")
    conf = {**DEFAULTS, **raw}

    trust = conf["TRUST"]
    if trust not in TRUST_MODES:
        raise ImproperlyConfigured(f"MTLS_PROXY['TRUST'] must be one of {', '.join(TRUST_MODES)}, not {trust!r}")

    if conf["SIGNING_KEY"] is not None and conf["SIGNING_KEY_FILE"] is not None:
        raise ImproperlyConfigured("MTLS_PROXY: set SIGNING_KEY or SIGNING_KEY_FILE, not both")
    keys: list[bytes] = []
    if conf["SIGNING_KEY"] is not None:
        keys.append(_text_key(conf["SIGNING_KEY"], "SIGNING_KEY"))
    if conf["SIGNING_KEY_FILE"] is not None:
        keys.append(_file_key(conf["SIGNING_KEY_FILE"], "SIGNING_KEY_FILE"))
    keys += [
        _text_key(k, "PREVIOUS_SIGNING_KEYS")
        for k in _string_list(conf["PREVIOUS_SIGNING_KEYS"], "PREVIOUS_SIGNING_KEYS")
    ]
    keys += [
        _file_key(p, "PREVIOUS_SIGNING_KEY_FILES")
        for p in _string_list(conf["PREVIOUS_SIGNING_KEY_FILES"], "PREVIOUS_SIGNING_KEY_FILES")
    ]
    if trust == "signature" and not keys:
        raise ImproperlyConfigured(
            "MTLS_PROXY: TRUST='signature' needs SIGNING_KEY or SIGNING_KEY_FILE (the key the proxy signs with); "
            "without it any client that reaches Django directly could claim any certificate"
        )

    try:
        max_age = float(conf["MAX_AGE"])
        clock_skew = float(conf["CLOCK_SKEW"])
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured("MTLS_PROXY['MAX_AGE'] and ['CLOCK_SKEW'] must be numbers") from exc
    if not 0 < max_age <= 3600 or not 0 <= clock_skew <= 300:
        raise ImproperlyConfigured("MTLS_PROXY: MAX_AGE must be in (0, 3600] and CLOCK_SKEW in [0, 300] seconds")

    networks: list[PeerNetwork] = []
    trust_unix = False
    for entry in _string_list(conf["TRUSTED_PEERS"], "TRUSTED_PEERS"):
        if entry == UNIX_PEER:
            trust_unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"MTLS_PROXY['TRUSTED_PEERS']: {entry!r} is not an address or network") from exc

    store = conf["REPLAY_STORE"]
    if store not in REPLAY_STORES:
        raise ImproperlyConfigured(
            f"MTLS_PROXY['REPLAY_STORE'] must be one of {', '.join(REPLAY_STORES)}, not {store!r}"
        )
    database = conf["REPLAY_DATABASE"]
    if not isinstance(database, str) or not database:
        raise ImproperlyConfigured("MTLS_PROXY['REPLAY_DATABASE'] must be a database alias")
    redis_url = conf["REPLAY_REDIS_URL"]
    if redis_url is not None and (not isinstance(redis_url, str) or not redis_url.startswith(_REDIS_SCHEMES)):
        raise ImproperlyConfigured("MTLS_PROXY['REPLAY_REDIS_URL'] must be a redis://, rediss:// or unix:// URL")
    if store == "redis" and redis_url is None:
        raise ImproperlyConfigured("MTLS_PROXY: REPLAY_STORE='redis' needs REPLAY_REDIS_URL")
    max_entries = conf["REPLAY_PROCESS_MAX_ENTRIES"]
    if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1000:
        raise ImproperlyConfigured("MTLS_PROXY['REPLAY_PROCESS_MAX_ENTRIES'] must be an integer >= 1000")
    single_process = conf["SINGLE_PROCESS"]
    if not isinstance(single_process, bool):
        raise ImproperlyConfigured("MTLS_PROXY['SINGLE_PROCESS'] must be True or False")

    resolver = conf["USER_RESOLVER"]
    if isinstance(resolver, str):
        try:
            resolver = import_string(resolver)
        except ImportError as exc:
            raise ImproperlyConfigured(f"MTLS_PROXY['USER_RESOLVER']: {exc}") from exc
    if not callable(resolver):
        raise ImproperlyConfigured("MTLS_PROXY['USER_RESOLVER'] must be a callable or its dotted path")

    return ProxyIdentitySettings(
        trust=trust,
        keys=keys_by_id(keys) if keys else {},
        max_age=max_age,
        clock_skew=clock_skew,
        trusted_networks=tuple(networks),
        trust_unix=trust_unix,
        replay_store=store,
        replay_database=database,
        replay_redis_url=redis_url,
        replay_process_max_entries=max_entries,
        single_process=single_process,
        user_resolver=resolver,
    )


@lru_cache(maxsize=1)
def get_settings() -> ProxyIdentitySettings:
    """The current validated settings (cached; reset when tests override ``MTLS_PROXY``)."""
    return load_settings(getattr(settings, "MTLS_PROXY", None))


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "MTLS_PROXY":
        get_settings.cache_clear()


setting_changed.connect(_reset)
