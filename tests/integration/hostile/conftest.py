"""Fixtures of the hostile-input suite (helpers in tests/fixtures/hostile.py and
tests/fixtures/fault_proxy.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fixtures.fault_proxy import fault_proxy
from tests.fixtures.hostile import Canary, RegistryAPI
from tests.fixtures.registry import RegistryServer

__all__ = ["api", "canary", "fault_proxy"]


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Canary]:
    """Files outside every build path, checked unchanged after the test."""
    found = Canary(tmp_path / "canary")
    yield found
    found.check()


@pytest.fixture
def api(registry: RegistryServer) -> Iterator[RegistryAPI]:
    """The test registry's HTTP API, for crafted images and for reading what kiln pushed."""
    client = RegistryAPI(registry.host)
    yield client
    client.close()
