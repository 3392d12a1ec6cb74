"""Deterministic download content, so tests can check multi-GB transfers by hash alone.

Byte ``i`` of the stream for ``seed`` is ``block[i % BLOCK_SIZE]`` where ``block`` is
SHAKE-256 of the seed: independent of how the stream is chunked, cheap to produce (one
1 MiB block per seed, then only slicing), and not compressible to nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache

BLOCK_SIZE = 1 << 20


@lru_cache(maxsize=16)
def pattern_block(seed: str) -> bytes:
    """The 1 MiB block that repeats through the stream for ``seed``."""
    return hashlib.shake_256(b"mtls-proxy-demo:" + seed.encode("utf-8")).digest(BLOCK_SIZE)


def pattern_chunks(size: int, seed: str = "0", chunk: int = 1 << 20) -> Iterator[bytes]:
    """Yield exactly ``size`` bytes of the pattern for ``seed`` in pieces of at most ``chunk`` bytes."""
    if size < 0 or chunk < 1:
        raise ValueError("size must be >= 0 and chunk >= 1")
    block = pattern_block(seed)
    pos = 0
    while pos < size:
        n = min(chunk, size - pos)
        start = pos % BLOCK_SIZE
        if start == 0 and n == BLOCK_SIZE:
            yield block
        elif start + n <= BLOCK_SIZE:
            yield block[start : start + n]
        else:
            parts = [block[start:]]
            left = n - len(parts[0])
            while left > 0:
                take = min(left, BLOCK_SIZE)
                parts.append(block[:take])
                left -= take
            yield b"".join(parts)
        pos += n


def pattern_sha256(size: int, seed: str = "0") -> str:
    """Hex SHA-256 of ``pattern_chunks(size, seed)``: what a test expects after a download."""
    digest = hashlib.sha256()
    for piece in pattern_chunks(size, seed):
        digest.update(piece)
    return digest.hexdigest()
