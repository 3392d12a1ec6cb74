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
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

log = logging.getLogger("mtls_proxy")


def watched_directories(files: tuple[Path, ...]) -> set[Path]:
    """The directories to watch: where each path sits, and where its symlinks resolve to."""
    dirs: set[Path] = set()
    for f in files:
        dirs.add(f.absolute().parent)
        dirs.add(f.resolve().parent)
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
