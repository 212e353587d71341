"""Scale-out result collector on a real Redis, with the real output stage: a result that cannot be
stitched must not lose the results read with it."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from streamer.config import load_settings
from streamer.output import OutputStage
from streamer.records import NS_PER_S, Window
from streamer.scaleout.collector import ResultCollector
from streamer.scaleout.queue import result_queue
from streamer.scaleout.sink import INGEST_CONSUMER
from streamer.scaleout.worker import COLLECTOR_GROUP
from streamer.worker import BatchResult

from service_helpers import Sink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(5)]

T0 = 1_764_000_000 * NS_PER_S
N = 3000


def _result(k: int, station: str = "XX.AAA.00", n: int = N) -> BatchResult:
    w = Window(station, T0 + k * 10 * NS_PER_S, 100.0, np.full((3, n), float(k), np.float32), np.ones((3, n), bool),
               T0 + (k * 10 + 30) * NS_PER_S, ("HHE", "HHN", "HHZ"))
    return BatchResult([w], w.data[None] * 0.5, None, None, 1, 1, None, 1.0, 1.0, model="m", model_version="v")


def test_a_result_that_cannot_be_stitched_does_not_lose_the_others(
    redis_client: redis.Redis, redis_url: str, redis_key_prefix: str, metrics
) -> None:
    settings = load_settings(overrides={"redis": {"url": redis_url, "stream_prefix": redis_key_prefix}}, environ={})
    sink = Sink()
    output = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0, max_out_of_order=6)
    worker_side = result_queue(redis_client, redis_key_prefix, COLLECTOR_GROUP, "gpu-1")
    worker_side.ensure_group()
    # a worker with another window length (misconfigured) sits between good results
    good_ids = [worker_side.push((_result(0), 0))]
    bad_id = worker_side.push((_result(0, "XX.BBB.00", n=2000), 0))
    good_ids += [worker_side.push((_result(k), 0)) for k in (1, 2)]
    results = result_queue(redis_client, redis_key_prefix, COLLECTOR_GROUP, INGEST_CONSUMER)
    collector = ResultCollector(output, results, metrics)
    for _ in range(3):  # as ResultCollector.run does: a failed round is logged and the loop goes on
        try:
            collector.run_once(block_ms=20)
        except Exception:
            pass
    handed = [eid for marker in sink.markers for eid in marker.result_ids]
    assert handed == good_ids
    # the bad entry does not stay pending for ever: only the good ones wait for their markers
    pending = redis_client.xpending_range(results.key, COLLECTOR_GROUP, "-", "+", 10)
    assert sorted(p["message_id"].decode() for p in pending) == sorted(good_ids)
    assert bad_id not in handed
