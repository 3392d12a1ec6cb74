"""Shared fixtures: test-time PKI, the real Django upstream (uvicorn), and the real proxy CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pki import TestPki
from tests.support.proxy import ProxyFactory
from tests.support.upstream import DemoUpstream, start_demo_upstream


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DemoUpstream]:
    up = start_demo_upstream(tmp_path_factory.mktemp("upstream"), signing_key_file=pki.signing_key)
    yield up
    up.stop()


@pytest.fixture
def proxies(tmp_path: Path, pki: TestPki, upstream: DemoUpstream) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path, pki, upstream.url)
    yield factory
    factory.close()


@pytest.fixture
def proxy(proxies: ProxyFactory):  # type: ignore[no-untyped-def]
    """A proxy with the base config: every verified client may reach every path."""
    return proxies.start()
