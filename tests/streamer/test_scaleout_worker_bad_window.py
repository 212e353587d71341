"""Scale-out worker on a real Redis: one window that fails must not take its batch-mates down."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import redis

from streamer.config import load_settings
from streamer.records import NS_PER_S, Window
from streamer.scaleout.queue import result_queue, window_queue
from streamer.scaleout.worker import COLLECTOR_GROUP, WORKERS_GROUP, ScaleOutWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(5)]

T0 = 1_764_000_000 * NS_PER_S
N = 3000
POISON = 13.0


@dataclass
class _Denoised:
    x0: np.ndarray
    steps_done: int
    elapsed_ms: float


class _PoisonDenoiser:
    """Halves its input; raises on any batch holding a window whose data are all ``POISON``."""

    name = "halve"
    version = "0"
    device = "cpu"

    def denoise_windows(self, x: np.ndarray, steps: int | None = None, budget_ms: float | None = None) -> _Denoised:
        if np.any(np.all(x == POISON, axis=(1, 2))):
            raise RuntimeError("poison window")
        return _Denoised(x * 0.5, int(steps or 1), 1.0)

    def step_cost_ms(self, batch_size: int) -> float:
        return 1.0 * batch_size

    def warm_up(self, batch_size: int) -> None:
        pass


def _window(k: int, value: float) -> Window:
    return Window("XX.STA.00", T0 + k * 10 * NS_PER_S, 100.0, np.full((3, N), value, np.float32),
                  np.ones((3, N), bool), T0 + (k * 10 + 30) * NS_PER_S, ("HHE", "HHN", "HHZ"))


def test_one_failing_window_does_not_lose_its_batch_mates(
    redis_client: redis.Redis, redis_url: str, redis_key_prefix: str, metrics
) -> None:
    settings = load_settings(overrides={"redis": {"url": redis_url, "stream_prefix": redis_key_prefix},
                                        "worker": {"batch_size": 4, "pad_batch_multiple": 1}}, environ={})
    ingest = window_queue(redis_client, redis_key_prefix, WORKERS_GROUP, "ingest")
    ingest.ensure_group()
    windows = [_window(0, 1.0), _window(1, POISON), _window(2, 2.0), _window(3, 3.0)]
    for w in windows:
        ingest.push(w)
    worker = ScaleOutWorker(settings, metrics, _PoisonDenoiser(), None, redis_client, "gpu-1",
                            reclaim_idle_s=0.01, reclaim_interval_s=0.0)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not redis_client.xlen(ingest.dead_key):
        try:  # as ScaleOutWorker.run does: a failed round is logged and the loop goes on
            worker.run_once(block_ms=20)
        except Exception:
            pass
    collector = result_queue(redis_client, redis_key_prefix, COLLECTOR_GROUP, "ingest")
    got = {r.windows[0].window_id: r for _, r in collector.read(count=10, block_ms=None)}
    good = [w for w in windows if w.data[0, 0] != POISON]
    assert sorted(got) == sorted(w.window_id for w in good)
    for w in good:
        np.testing.assert_array_equal(got[w.window_id].denoised[0], w.data * 0.5)
    # the poison window alone ends in the dead-letter stream; the queue holds nothing else
    dead = redis_client.xrange(ingest.dead_key)
    assert [int(f[b"start_ns"]) for _, f in dead] == [windows[1].start_ns]
    assert ingest.pending_count() == 0
