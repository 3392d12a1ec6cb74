"""System checks: a replay store that cannot hold is a configuration error, not a warning.

``manage.py check`` (and ``migrate``, ``runserver``) report these; the middleware raises
the same errors as ``ImproperlyConfigured`` when it loads, because gunicorn and uvicorn
never run system checks and a per-process store under four workers accepts each replay
three times.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from mtls_proxy.django.conf import ProxyIdentitySettings, get_settings

__all__ = ["APP_NAME", "check_settings", "replay_store_problems"]

APP_NAME = "mtls_proxy.django"


def replay_store_problems(
    conf: ProxyIdentitySettings, *, app_installed: bool, databases: Mapping[str, Mapping[str, Any]]
) -> list[checks.CheckMessage]:
    """Errors in the replay set-up: pure over the settings, so tests call it directly."""
    problems: list[checks.CheckMessage] = []
    if not app_installed:
        problems.append(checks.Error(
            f"{APP_NAME!r} is not in INSTALLED_APPS",
            hint="add it: it holds the nonce table of the database replay store and these checks",
            id="mtls_proxy.E002",
        ))
    if conf.trust != "signature":
        return problems  # trusted-peers: no signatures, no nonces
    if conf.replay_store == "process" and not conf.single_process:
        problems.append(checks.Error(
            "MTLS_PROXY['REPLAY_STORE'] is 'process': each worker process keeps its own nonces, so a "
            "captured request is accepted once more by every other worker",
            hint="use 'database' or 'redis', or set MTLS_PROXY['SINGLE_PROCESS'] = True if exactly one "
            "process (one worker, one host) serves this Django",
            id="mtls_proxy.E001",
        ))
    if conf.replay_store == "database":
        db = databases.get(conf.replay_database)
        if db is None:
            problems.append(checks.Error(
                f"MTLS_PROXY['REPLAY_DATABASE'] {conf.replay_database!r} is not in DATABASES",
                id="mtls_proxy.E003",
            ))
        elif str(db.get("ENGINE", "")).endswith("sqlite3") and _sqlite_in_memory(db):
            problems.append(checks.Error(
                f"the replay database {conf.replay_database!r} is an in-memory SQLite database: per process",
                hint="use a database file or a server database shared by every worker",
                id="mtls_proxy.E004",
            ))
    if conf.replay_store == "redis" and find_spec("redis") is None:
        problems.append(checks.Error(
            "MTLS_PROXY['REPLAY_STORE'] is 'redis' but the redis package is not installed",
            hint="pip install 'mtls-proxy[redis]'",
            id="mtls_proxy.E005",
        ))
    return problems


def _sqlite_in_memory(db: Mapping[str, Any]) -> bool:
    name = str(db.get("NAME", ""))
    return name in ("", ":memory:") or name.startswith("file::memory:") or "mode=memory" in name


def current_problems() -> list[checks.CheckMessage]:
    """The problems of the running Django's settings (settings errors included, as E000)."""
    from django.apps import apps
    from django.conf import settings

    try:
        conf = get_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="mtls_proxy.E000")]
    return replay_store_problems(
        conf, app_installed=apps.is_installed(APP_NAME), databases=getattr(settings, "DATABASES", {})
    )


@checks.register(checks.Tags.security)  # type: ignore[untyped-decorator]
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The registered system check."""
    return current_problems()
