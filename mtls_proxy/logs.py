"""Logging set-up: one access line per request, text or JSON, on stdout.

Access and error lines share field names (``cn``, ``fp``, ``rule``, ``reason``...)
so a device can be followed through both with one search.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from mtls_proxy.config import LoggingSettings

access_log = logging.getLogger("mtls_proxy.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured ``fields`` from ``extra`` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
            if record.name != access_log.name:
                out["msg"] = record.getMessage()
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.converter = time.gmtime


_overrides: dict[str, Any] = {}


def setup_logging(settings: LoggingSettings, format_override: str | None = None, worker: int | None = None) -> None:
    """Configure the ``mtls_proxy`` loggers; the CLI's ``--log-format`` wins over the config (also on reload)."""
    if format_override is not None:
        _overrides["format"] = format_override
    if worker is not None:
        _overrides["worker"] = worker
    fmt = _overrides.get("format", settings.format)
    root = logging.getLogger("mtls_proxy")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    root.propagate = False
    access_log.disabled = not settings.access_log


def is_json() -> bool:
    handlers = logging.getLogger("mtls_proxy").handlers
    return bool(handlers) and isinstance(handlers[0].formatter, JsonFormatter)


def worker_index() -> int | None:
    value = _overrides.get("worker")
    return int(value) if value is not None else None


def format_access(fields: dict[str, Any]) -> str:
    """The text form of an access line: ``key=value`` pairs, values with spaces quoted."""
    parts = []
    for k, v in fields.items():
        s = str(v)
        parts.append(f'{k}="{s}"' if (" " in s or not s) else f"{k}={s}")
    return " ".join(parts)
