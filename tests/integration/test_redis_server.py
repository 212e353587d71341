"""The embedded redis-server: AUTH, a restart on the same port, a clear error when it cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from streamer.redis_server import RedisServer, RedisServerError

pytestmark = pytest.mark.integration


def test_password_restart_on_the_same_port(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cr3t-pw")
    assert "s3cr3t" not in repr(server) and "s3cr3t" not in server.url
    with server:
        port = server.port
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url).ping()
        assert redis.Redis.from_url(server.url, password="s3cr3t-pw").ping()
        server.stop()
        assert not server.running
        server.start()
        assert server.port == port and server.running
        assert redis.Redis.from_url(server.url, password="s3cr3t-pw").ping()
    assert not server.running


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", extra_args=["--no-such-option", "x"], ready_timeout_s=5.0)
    with pytest.raises(RedisServerError, match=f"exited with code .* on 127.0.0.1:{server.port}"):
        server.start()
    assert not server.running
