"""RedisPublisher against a real redis-server that refuses writes for a while: every output goes
through a Lua script, so a refusal reaches the publisher wrapped in the script's error text. Such a
refusal must keep the outputs queued and must not hand their marker back (the SeedLink state would
move past data Redis never stored)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import redis

from streamer.config import RedisSettings
from streamer.metrics import Metrics
from streamer.picks import Pick, make_pick_id
from streamer.publish import RedisPublisher
from streamer.records import OutputItem
from streamer.schema import StreamKeys
from streamer.stitch import Segment
from tests.conftest import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

RATE = 100.0
T0 = 176_400_000_000  # absolute 100 Hz sample index
STATION = "NC.ABC.00"


def _segment() -> Segment:
    data = np.random.default_rng(0).standard_normal((3, 500)).astype(np.float32)
    return Segment(STATION, T0, RATE, data, np.ones((3, 500), bool), steps_min=2, steps_max=2,
                   channels=("HHE", "HHN", "HHZ"))


def _pick(source: str) -> Pick:
    t = (T0 + 250) * 10_000_000
    return Pick(make_pick_id(STATION, "P", t, source), STATION, "P", t, 0.9, source, "unet", "1", "PhaseNet", "1",
                2, 1)


def _refuse_oom(c: redis.Redis) -> Callable[[], None]:
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("maxmemory", 1)
    return lambda: c.config_set("maxmemory", 0)


def _refuse_readonly(c: redis.Redis) -> Callable[[], None]:
    c.execute_command("REPLICAOF", "127.0.0.1", "1")  # a primary that is not there: a read-only replica
    return lambda: c.execute_command("REPLICAOF", "NO", "ONE")


def _refuse_noreplicas(c: redis.Redis) -> Callable[[], None]:
    c.config_set("min-replicas-max-lag", 10)
    c.config_set("min-replicas-to-write", 1)  # no replica connected: writes refused
    return lambda: c.config_set("min-replicas-to-write", 0)


@pytest.mark.parametrize("refuse", [_refuse_oom, _refuse_readonly, _refuse_noreplicas], ids=["oom", "readonly", "noreplicas"])
def test_refused_writes_are_retried_not_acknowledged(
    private_redis: RedisProcess, redis_key_prefix: str, metrics: Metrics, refuse: Callable[[redis.Redis], Callable[[], None]]
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    acked: list[object] = []
    settings = RedisSettings(url=private_redis.url, stream_prefix=redis_key_prefix)
    pub = RedisPublisher(settings, metrics, lambda items: acked.extend(i.token for i in items))
    keys = StreamKeys(redis_key_prefix)
    undo = refuse(client)
    pub.publish([
        OutputItem.of_segment(_segment(), token="segment"),
        OutputItem.of_pick(_pick("denoised"), token="final pick"),
        OutputItem.of_pick(_pick("raw"), token="raw pick"),
        OutputItem.marker("marker"),
    ])
    assert pub.write_pending() is False  # Redis refused: try again later
    assert acked == [] and pub.backlog_size == 4  # nothing acknowledged, nothing dropped
    assert pub.rejected == 0
    undo()
    assert pub.write_pending() is True
    assert acked == ["segment", "final pick", "raw pick", "marker"]
    assert client.xlen(keys.denoised(STATION)) == 1 and client.xlen(keys.picks) == 2
    pub.close()
    client.close()
