"""Fixtures shared by the integration tests that run Django with a key of their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtls_proxy.identity import generate_signing_key


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A fresh identity signing key file (0600) and its bytes, as `mtls-proxy` and Django read it."""
    path = tmp_path_factory.mktemp("key") / "identity.key"
    key = generate_signing_key()
    path.write_text(key + "\n")
    os.chmod(path, 0o600)
    return path, key.encode()
