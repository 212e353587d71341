"""The embedded redis-server must not claim a port another server already holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.redis_server import RedisServer, RedisServerError

pytestmark = pytest.mark.integration


def test_start_on_a_port_held_by_another_redis_is_an_error(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "first") as first:
        second = RedisServer(tmp_path / "second", port=first.port, ready_timeout_s=3.0)
        with pytest.raises(RedisServerError, match=f"127.0.0.1:{first.port}"):
            second.start()
        assert not second.running
        assert first.running
