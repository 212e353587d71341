"""Scale-out ingest across restarts and Redis outages, on a real Redis: stable consumer, orphaned
results taken over, replayed windows computed again once released, replayed windows refused as
duplicates (collected already, or still in flight), bounded push queue, start-up while Redis is down."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from pipeline_helpers import wait_for
from streamer.config import load_settings
from streamer.metrics import Metrics
from streamer.output import OutputStage
from streamer.records import NS_PER_S, Window
from streamer.scaleout.collector import ResultCollector
from streamer.scaleout.queue import result_queue, window_queue
from streamer.scaleout.sink import INGEST_CONSUMER, RedisSink
from streamer.worker import BatchResult

pytestmark = pytest.mark.integration

T0 = 1_764_000_000 * NS_PER_S
N = 3000


def _window(k: int, station: str = "XX.STA.00") -> Window:
    data = np.full((3, N), float(k), np.float32)
    return Window(station, T0 + k * 10 * NS_PER_S, 100.0, data, np.ones((3, N), bool), T0 + (k * 10 + 30) * NS_PER_S,
                  ("HHE", "HHN", "HHZ"))


def _result(w: Window) -> BatchResult:
    return BatchResult([w], w.data[None] * 0.5, None, None, 1, 1, None, 1.0, 1.0, model="m", model_version="v")


class Output:
    """Records what the collector hands over (stands in for the output stage)."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, tuple[str, ...]]] = []

    def handle(self, result: BatchResult, result_ids=()) -> None:
        self.handled.append((result.windows[0].window_id, tuple(result_ids)))

    def flush_idle(self) -> None:
        pass


def _settings(redis_url: str, prefix: str, **worker: object):
    return load_settings(overrides={"redis": {"url": redis_url, "stream_prefix": prefix},
                                    "worker": {"reclaim_idle_s": 5.0, **worker}}, environ={})


def test_results_an_earlier_ingest_left_pending_are_taken_over(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    # an ingest of an earlier version read two results under a per-process name, then died
    old = result_queue(redis_client, redis_key_prefix, "collector", "ingest-4242")
    old.ensure_group()
    for k in range(3):
        old.push((_result(_window(k)), 0))
    assert len(old.read(count=2, block_ms=None)) == 2  # pending on ingest-4242, never acknowledged
    out = Output()
    new = result_queue(redis_client, redis_key_prefix, "collector", INGEST_CONSUMER)
    collector = ResultCollector(out, new, Metrics())  # type: ignore[arg-type]
    collector.run_once(block_ms=50)
    assert sorted(wid for wid, _ in out.handled) == sorted(_window(k).window_id for k in range(3))
    assert len({eid for _, ids in out.handled for eid in ids}) == 3
    collector.run_once(block_ms=50)
    assert len(out.handled) == 3  # each once


def test_a_replayed_window_is_computed_again_once_its_outputs_were_published(
    redis_client: redis.Redis, redis_url: str, redis_key_prefix: str
) -> None:
    settings = _settings(redis_url, redis_key_prefix)
    out = Output()
    sink = RedisSink(settings, Metrics(), out)  # type: ignore[arg-type]
    sink.start()
    try:
        w = _window(0)
        sink.submit([w])
        workers = window_queue(redis_client, redis_key_prefix, "workers", "gpu-1")
        wait_for(lambda: workers.pending_count() + redis_client.xlen(workers.key) > 0, 10, "the window pushed")
        (eid, got), = workers.read(count=1, block_ms=1000)
        results = result_queue(redis_client, redis_key_prefix, "collector", "gpu-1")
        results.push((_result(got), 0))
        workers.ack([eid])
        wait_for(lambda: out.handled, 10, "the result collected")
        (_wid, result_ids), = out.handled
        sink.ack_results(result_ids)  # Redis accepted the outputs
        assert redis_client.xlen(results.key) == 0 and redis_client.xlen(workers.key) == 0
        # a restart replays the window: it is queued again (not refused by the de-duplication mark)
        assert window_queue(redis_client, redis_key_prefix, "workers", "x").push(w) is not None
    finally:
        sink.drain(lambda: 5.0)


def test_ingest_starts_while_redis_is_down_and_sheds_a_full_push_queue() -> None:
    settings = _settings("redis://127.0.0.1:1/0", "cs-down", queue_max_windows=5)
    metrics = Metrics()
    shed: list = []
    sink = RedisSink(settings, metrics, OutputStage(settings, metrics, lambda items: None, window_samples=N,
                                                   sampling_rate_hz=100.0),
                     on_shed=lambda ws, reason: shed.extend(ws))
    beats: list[int] = []
    sink.on_progress = lambda: beats.append(1)
    sink.start()  # no exception: the threads retry
    try:
        sink.submit([_window(k) for k in range(12)])
        assert sink.depth <= 5
        assert len(shed) >= 7 and metrics.registry.get_sample_value(
            "coldstream_windows_shed_total", {"reason": "queue_full"}) == len(shed)
        wait_for(lambda: beats, 10, "liveness while Redis is down")
    finally:
        sink.cancel()
    # a cancel abandons the windows not pushed (replayed after a restart): no thread keeps retrying the push
    wait_for(lambda: not any(t.is_alive() for t in sink._threads), 5, "the sink's threads ending after a cancel")


def test_orphan_claim_pages_through_a_long_pending_list(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    old = result_queue(redis_client, redis_key_prefix, "collector", "ingest-1")
    old.ensure_group()
    for k in range(620):
        old.push((_result(_window(k, f"XX.S{k % 7}.00")), 0))
    assert len(old.read(count=700, block_ms=None)) == 620
    new = result_queue(redis_client, redis_key_prefix, "collector", INGEST_CONSUMER)
    out = Output()
    ResultCollector(out, new, Metrics()).claim_orphans()  # type: ignore[arg-type]
    assert len(out.handled) == 620


def test_a_lost_consumer_group_is_created_again(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    q = window_queue(redis_client, redis_key_prefix, "workers", "gpu-1")
    q.push(_window(0))
    assert len(q.read(count=5, block_ms=None)) == 1
    redis_client.delete(q.key)  # Redis restarted without persistence
    q.push(_window(1))
    assert [w.window_id for _, w in q.read(count=5, block_ms=None)] == [_window(1).window_id]


def _before_a_restart(redis_client: redis.Redis, prefix: str, window: Window, *, processed: bool) -> None:
    """The state an ingest left behind when it died: ``window`` pushed (its de-duplication mark still
    set); with ``processed``, a worker's result for it read by that ingest but never acknowledged (its
    outputs were not confirmed)."""
    window_queue(redis_client, prefix, "workers", INGEST_CONSUMER).push(window)
    if not processed:
        return
    workers = window_queue(redis_client, prefix, "workers", "gpu-1")
    (eid, got), = workers.read(count=1, block_ms=None)
    result_queue(redis_client, prefix, "collector", "gpu-1").push((_result(got), 0))
    workers.ack([eid])
    assert len(result_queue(redis_client, prefix, "collector", INGEST_CONSUMER).read(count=1, block_ms=None)) == 1


def _work(redis_client: redis.Redis, prefix: str, count: int) -> list[tuple[str, Window]]:
    """The next ``count`` windows a worker reads (the sink pushes from its own thread)."""
    workers = window_queue(redis_client, prefix, "workers", "gpu-1")
    got: list[tuple[str, Window]] = []
    for _ in range(10):
        got += workers.read(count=count - len(got), block_ms=300)
        if len(got) == count:
            break
    assert len(got) == count
    return got


def _finish(redis_client: redis.Redis, prefix: str, entry: tuple[str, Window]) -> None:
    eid, w = entry
    result_queue(redis_client, prefix, "collector", "gpu-1").push((_result(w), 0))
    window_queue(redis_client, prefix, "workers", "gpu-1").ack([eid])


@pytest.mark.timeout(30)
def test_a_replayed_window_refused_as_a_duplicate_does_not_hold_later_results_of_its_station(
    redis_client: redis.Redis, redis_url: str, redis_key_prefix: str
) -> None:
    """Its result came back before the replay (taken over from the ingest that died): the refused push
    is resolved at once, so the station's next result is handed over without waiting for the give-up
    (10 s here), and nothing is counted as lost or handed over twice."""
    w0, w1 = _window(0), _window(1)
    _before_a_restart(redis_client, redis_key_prefix, w0, processed=True)
    metrics = Metrics()
    out = Output()
    sink = RedisSink(_settings(redis_url, redis_key_prefix), metrics, out)  # type: ignore[arg-type]
    sink.start()
    try:
        wait_for(lambda: out.handled, 5, "the earlier ingest's result taken over")
        sink.submit([w0, w1])  # SeedLink replays from the resume point; w0's push is refused
        (entry,) = _work(redis_client, redis_key_prefix, 1)
        assert entry[1].window_id == w1.window_id
        _finish(redis_client, redis_key_prefix, entry)
        wait_for(lambda: len(out.handled) == 2, 3, "w1's result without waiting for the give-up")
    finally:
        sink.drain(lambda: 5.0)
    assert sink.windows_pushed == 1 and sink.windows_refused == 1
    assert [wid for wid, _ in out.handled] == [w0.window_id, w1.window_id]
    assert sink.collector is not None and sink.collector.given_up == 0 and sink.collector.holding == 0
    assert metrics.registry.get_sample_value("coldstream_windows_shed_total", {"reason": "lost"}) is None


@pytest.mark.timeout(30)
def test_a_replayed_window_refused_while_still_in_flight_is_waited_for_in_window_order(
    redis_client: redis.Redis, redis_url: str, redis_key_prefix: str
) -> None:
    """Its result has not come yet (the window is still queued for the workers): the collector keeps
    waiting for it, and the station's later result is handed over after it, not before."""
    w0, w1 = _window(0), _window(1)
    _before_a_restart(redis_client, redis_key_prefix, w0, processed=False)
    out = Output()
    sink = RedisSink(_settings(redis_url, redis_key_prefix), Metrics(), out)  # type: ignore[arg-type]
    sink.start()
    try:
        sink.submit([w0, w1])
        first, second = _work(redis_client, redis_key_prefix, 2)
        assert [first[1].window_id, second[1].window_id] == [w0.window_id, w1.window_id]
        _finish(redis_client, redis_key_prefix, second)
        wait_for(lambda: sink.collector is not None and sink.collector.holding == 1, 3, "w1's result held")
        assert out.handled == []
        _finish(redis_client, redis_key_prefix, first)
        wait_for(lambda: len(out.handled) == 2, 3, "both results")
    finally:
        sink.drain(lambda: 5.0)
    assert [wid for wid, _ in out.handled] == [w0.window_id, w1.window_id]
