"""Reload without signals: watch every file a reload reads, including Kubernetes' symlink swaps.

Kubernetes updates a mounted Secret or ConfigMap by writing a new timestamped
directory and atomically renaming the ``..data`` symlink; the file paths we were
given never change, only what they resolve to. So the *directories* holding the
files are watched (with watchfiles, inotify underneath) and any change in them
schedules the same reload SIGHUP does: validated, atomic, the old state kept on
failure. Events are debounced so one rollout gives one reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

log = logging.getLogger("mtls_proxy")


def _symlink_directories(path: Path, max_hops: int = 40) -> set[Path]:
    """The directories holding each symlink met while resolving ``path``.

    A projected volume item ``crl/crl.pem`` is reached as ``/certs/crl -> ..data/crl``: the swap of
    ``..data`` happens in ``/certs``, which is neither the file's parent nor its resolved parent.
    """
    dirs: set[Path] = set()
    pending = list(path.absolute().parts[1:])
    current = Path(path.absolute().anchor)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        if candidate.is_symlink() and hops < max_hops:
            hops += 1
            dirs.add(current)
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path(target.anchor)
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        current = candidate
    return dirs


def watched_directories(files: tuple[Path, ...]) -> set[Path]:
    """The directories to watch: where each path sits, where it resolves to, and where its symlinks are."""
    dirs: set[Path] = set()
    for f in files:
        dirs.add(f.absolute().parent)
        dirs.add(f.resolve().parent)
        dirs |= _symlink_directories(f)
    return {d for d in dirs if d.is_dir()}


async def watch_and_reload(
    files: Callable[[], tuple[Path, ...]], reload: Callable[[], None], debounce: float, stop: asyncio.Event
) -> None:
    """Call ``reload`` after changes under the watched directories; re-plan when the file set changes."""
    while not stop.is_set():
        dirs = watched_directories(files())
        if not dirs:
            return
        log.info("watching %s for changes", ", ".join(sorted(str(d) for d in dirs)))
        async for _changes in awatch(
            *dirs, debounce=int(debounce * 1000), step=50, stop_event=stop, recursive=False
        ):
            log.info("file change detected: reloading")
            reload()
            if watched_directories(files()) != dirs:
                break  # the config now names files elsewhere: watch those
