"""Fixtures of the hardening suite: a real proxy guarding /admin/ in front of the real demo Django."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mtls_proxy.config import TOP_LEVEL_KEYS
from tests.hardening.headjudge import GUARD_POLICY  # /admin/ denied to all; /api/ and /ws/ open to all clients
from tests.support.pki import TestPki
from tests.support.proxy import ProxyFactory, ProxyProcess, free_port

__all__ = ["GUARD_POLICY", "Guarded", "isolated"]


def isolated(**overrides: Any) -> dict[str, Any]:
    """Config overrides for a proxy that shares no fixed port with other test processes.

    (The admin listener, where the config knows it, gets a free port instead of its default.)
    """
    if "admin" in TOP_LEVEL_KEYS and "admin" not in overrides:
        overrides["admin"] = {"listen": f"127.0.0.1:{free_port()}"}
    return overrides


@dataclass
class Guarded:
    proxy: ProxyProcess
    ctx: Any  # ssl.SSLContext of a valid client
    pki: TestPki
    upstream: Any

    @property
    def port(self) -> int:
        return self.proxy.port


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, pki: TestPki, upstream: Any) -> Iterator[Guarded]:
    factory = ProxyFactory(tmp_path_factory.mktemp("guarded"), pki, upstream.url)
    proxy = factory.start(**isolated(policy=GUARD_POLICY))
    yield Guarded(proxy, pki.client_context(pki.client("hardening-client")), pki, upstream)
    factory.close()
