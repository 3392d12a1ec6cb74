"""Fixtures of the hardening suite: a real proxy guarding /admin/ in front of the real demo Django."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.pki import TestPki
from tests.support.proxy import ProxyFactory, ProxyProcess

#: The policy of the issue: /admin/ denied to everyone, /api/ open to every verified client.
GUARD_POLICY: dict[str, Any] = {
    "rules": [
        {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        {"name": "api", "paths": ["/api/"], "clients": "any"},
    ]
}


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
    proxy = factory.start(policy=GUARD_POLICY)
    yield Guarded(proxy, pki.client_context(pki.client("hardening-client")), pki, upstream)
    factory.close()
