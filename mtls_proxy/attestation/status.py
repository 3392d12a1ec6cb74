"""Google's attestation status list: serials of attestation certificates that are REVOKED or SUSPENDED.

Format (https://android.googleapis.com/attestation/status): ``{"entries": {"<hex serial>": {"status":
"REVOKED" | "SUSPENDED", "reason": ..., "expires": ..., "comment": ...}}}``; a serial that is not
listed is fine. Both statuses refuse. Verification stays offline: the list is an argument, built from
the shipped snapshot plus an operator-configured file that their own job downloads.

The shipped ``data/google_attestation_status.json`` holds only the entries of Google's documented
example list (it could not be downloaded while this was built): configure a current copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

REVOKED = "REVOKED"
SUSPENDED = "SUSPENDED"
STATUSES = (REVOKED, SUSPENDED)


class StatusListError(ValueError):
    """A status list that cannot be used; the message names the file and the key path."""


def normalize_serial(serial: str) -> str:
    """Lowercase hex without leading zeros, as Google writes it (tolerates upper case and zero padding)."""
    value = serial.strip().lower()
    try:
        return format(int(value, 16), "x")
    except ValueError:
        raise ValueError(f"not a hex serial: {serial!r}") from None


@dataclass(frozen=True)
class StatusList:
    entries: Mapping[str, str] = field(default_factory=dict)
    """normalized serial -> REVOKED | SUSPENDED"""

    def status_of(self, serial_hex: str) -> str | None:
        return self.entries.get(normalize_serial(serial_hex))

    def merged(self, other: StatusList) -> StatusList:
        return StatusList({**self.entries, **other.entries})


def parse_status_list(data: bytes | str, source: str) -> StatusList:
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeError) as exc:
        raise StatusListError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        raise StatusListError(f"{source}: entries: expected an object under the key 'entries'")
    entries: dict[str, str] = {}
    for serial, entry in doc["entries"].items():
        where = f"{source}: entries.{serial}"
        try:
            key = normalize_serial(serial)
        except ValueError:
            raise StatusListError(f"{where}: the key is not a hex serial") from None
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES:
            raise StatusListError(f"{where}.status: expected one of {', '.join(STATUSES)}")
        entries[key] = entry["status"]
    return StatusList(entries)


def load_status_file(path: str | Path) -> StatusList:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StatusListError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_status_list(data, str(path))


@cache
def shipped_status_list() -> StatusList:
    data = resources.files("mtls_proxy.attestation").joinpath("data", "google_attestation_status.json").read_bytes()
    return parse_status_list(data, "google_attestation_status.json")
