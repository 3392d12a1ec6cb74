"""File-tree helpers for tests that must prove a command left a directory unchanged."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (mode, sha256 of content): a directory is unchanged iff this is equal."""
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (stat.S_IMODE(st.st_mode), content)
    return out
