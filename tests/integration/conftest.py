"""Fixtures of the integration tests that need more than the shared ones in ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ringserver import RingServer, ringserver_binary


@pytest.fixture(scope="session")
def ringserver_exe() -> Path:
    """EarthScope's ringserver, built from the vendored tarball (skips without tarball or compiler)."""
    return ringserver_binary()


@pytest.fixture
def ringserver(ringserver_exe: Path, tmp_path: Path) -> Iterator[RingServer]:
    """A running ringserver: SeedLink on a free port, loopback clients only, ring and miniSEED scan
    directory under ``tmp_path/ringserver``."""
    server = RingServer(ringserver_exe, tmp_path / "ringserver")
    server.start()
    try:
        yield server
    finally:
        server.stop()
