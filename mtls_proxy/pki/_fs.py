"""Crash-safe, all-or-nothing writes into the PKI directory.

A PKI directory holds private keys and an index that must agree with the certificates
on disk. A half-written ``index.json`` or a key file that was world-readable for a
moment are both real incidents, so every write here follows three rules:

* private files are *created* with mode 0600 (``os.open(..., 0o600)``); permissions are
  never tightened after the fact, because the secret would already have been readable;
* a file is replaced atomically (temporary file in the same directory, ``fsync``,
  ``os.replace``), so a reader (the proxy reloading on SIGHUP) sees the old or the new
  file, never a truncated one;
* a command stages *all* its files first and renames them only once every temporary
  file exists. A failure while staging (permission denied, disk full) removes the
  temporaries and leaves the directory exactly as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Mode of files holding secrets (private keys, PKCS#12 bundles).
PRIVATE_MODE = 0o600
#: Mode of public files (certificates, CRL, index).
PUBLIC_MODE = 0o644
#: Mode of directories this package creates: they hold private keys.
DIR_MODE = 0o700


@dataclass(frozen=True)
class _File:
    path: Path
    data: bytes
    mode: int


class StagedWrites:
    """A set of files (and directories) that appear together or not at all.

    Files are renamed into place in the order they were added, so callers add the
    index last: if the process dies during the rename phase, the index still
    describes a consistent older state.
    """

    def __init__(self) -> None:
        self._dirs: list[Path] = []
        self._files: list[_File] = []

    def mkdir(self, path: Path) -> None:
        """Create ``path`` (mode 0700) before the files; removed again on failure."""
        self._dirs.append(path)

    def add(self, path: Path, data: bytes, *, private: bool) -> None:
        """Write ``data`` to ``path``; ``private`` files are created 0600, others 0644."""
        self._files.append(_File(path, data, PRIVATE_MODE if private else PUBLIC_MODE))

    def commit(self) -> None:
        """Write everything; on any error before the renames, undo and re-raise.

        Raises:
            OSError: the directory is not writable, the disk is full, ...; nothing was changed.
        """
        made_dirs: list[Path] = []
        temps: list[tuple[Path, Path]] = []
        try:
            for directory in self._dirs:
                os.mkdir(directory, DIR_MODE)
                made_dirs.append(directory)
            for f in self._files:
                temps.append((_write_temp(f), f.path))
        except BaseException:
            for tmp, _ in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            for directory in reversed(made_dirs):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise
        for tmp, final in temps:
            os.replace(tmp, final)
        for parent in {final.parent for _, final in temps} | {d.parent for d in made_dirs}:
            _fsync_dir(parent)


def _write_temp(f: _File) -> Path:
    """Create a fresh temporary sibling of ``f.path`` with its final mode and content."""
    tmp = f.path.with_name(f".{f.path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, f.mode)
    except OSError as exc:  # name the file the operator asked for, not our temporary
        raise type(exc)(exc.errno, exc.strerror, str(f.path)) from exc
    try:
        view = memoryview(f.data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(path: Path) -> None:
    """Persist the renames themselves (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory itself for a read-modify-write.

    Locking the directory's own descriptor (not a lock file) serialises two concurrent
    ``pki`` commands without adding a file, so a failed command still leaves the
    directory byte-for-byte unchanged.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
