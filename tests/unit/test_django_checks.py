"""The replay store set-up checks (pure over the settings) and the settings they read."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from mtls_proxy.django.checks import replay_store_problems
from mtls_proxy.django.conf import ProxyIdentitySettings, load_settings
from mtls_proxy.identity import key_id

KEY = "k" * 40
SQLITE_FILE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/var/lib/app/db.sqlite3"}}


def conf(**raw: Any) -> ProxyIdentitySettings:
    return load_settings({"SIGNING_KEY": KEY, "USER_RESOLVER": lambda cert: None, **raw})


def ids(settings: ProxyIdentitySettings, *, app_installed: bool = True,
        databases: dict[str, dict[str, Any]] | None = None) -> list[str]:
    problems = replay_store_problems(settings, app_installed=app_installed,
                                     databases=SQLITE_FILE if databases is None else databases)
    assert all(p.is_serious() for p in problems)  # errors, never warnings
    return [p.id for p in problems]


def test_defaults_database_store_ten_second_window() -> None:
    settings = conf()
    assert (settings.replay_store, settings.replay_database, settings.max_age) == ("database", "default", 10.0)
    assert settings.keys == {key_id(KEY.encode()): KEY.encode()}
    assert ids(settings) == []


def test_per_process_store_is_an_error_unless_single_process() -> None:
    assert ids(conf(REPLAY_STORE="process")) == ["mtls_proxy.E001"]
    assert ids(conf(REPLAY_STORE="process", SINGLE_PROCESS=True)) == []
    # trusted-peers mode has no signatures, hence no nonces
    assert ids(load_settings({"TRUST": "trusted-peers", "REPLAY_STORE": "process",
                              "USER_RESOLVER": lambda cert: None})) == []


@pytest.mark.parametrize(
    ("databases", "expected"),
    [
        ({}, ["mtls_proxy.E003"]),
        ({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}, ["mtls_proxy.E004"]),
        ({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "file:x?mode=memory&cache=shared"}},
         ["mtls_proxy.E004"]),
        ({"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"}}, []),
    ],
)
def test_database_store_needs_a_shared_database(databases: dict[str, dict[str, Any]], expected: list[str]) -> None:
    assert ids(conf(), databases=databases) == expected


def test_app_must_be_installed() -> None:
    assert ids(conf(), app_installed=False) == ["mtls_proxy.E002"]


def test_redis_store_settings() -> None:
    assert ids(conf(REPLAY_STORE="redis", REPLAY_REDIS_URL="redis://127.0.0.1:6379/0")) == []
    with pytest.raises(ImproperlyConfigured, match="REPLAY_STORE='redis' needs REPLAY_REDIS_URL"):
        conf(REPLAY_STORE="redis")
    with pytest.raises(ImproperlyConfigured, match="REPLAY_REDIS_URL"):
        conf(REPLAY_STORE="redis", REPLAY_REDIS_URL="http://x")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"REPLAY_STORE": "cache"}, "REPLAY_STORE'] must be one of database, redis, process"),
        ({"NONCE_CACHE": "default"}, "NONCE_CACHE'] was removed"),
        ({"NONCE_CACHE_MAX_ENTRIES": 5000}, "NONCE_CACHE_MAX_ENTRIES'] was removed"),
        ({"SINGLE_PROCESS": "yes"}, "SINGLE_PROCESS'] must be True or False"),
        ({"REPLAY_PROCESS_MAX_ENTRIES": 10}, "REPLAY_PROCESS_MAX_ENTRIES'] must be an integer >= 1000"),
        ({"REPLAY_DATABASE": ""}, "REPLAY_DATABASE'] must be a database alias"),
    ],
)
def test_bad_replay_settings_refuse_to_load(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message.replace("[", r"\[").replace("]", r"\]")):
        conf(**raw)
