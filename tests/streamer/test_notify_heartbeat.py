"""The stage heartbeat metric follows what the watchdog checks: progress or idleness, not progress alone."""

from __future__ import annotations

from streamer.metrics import Metrics
from streamer.notify import HealthMonitor


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _value(metrics: Metrics, name: str, stage: str) -> float | None:
    return metrics.registry.get_sample_value(f"coldstream_stage_{name}_timestamp_seconds", {"stage": stage})


def test_an_idle_stage_keeps_its_heartbeat_but_not_its_progress_time() -> None:
    metrics = Metrics()
    wall = [1.7e9]
    mon = HealthMonitor(["worker"], stall_s=60, clock=_Clock(), metrics=metrics, wall_clock=lambda: wall[0])
    mon.progress("worker")
    wall[0] += 45
    mon.idle("worker")
    assert _value(metrics, "last_progress", "worker") == 1.7e9
    assert _value(metrics, "heartbeat", "worker") == 1.7e9 + 45


def test_reset_starts_every_heartbeat_afresh() -> None:
    metrics = Metrics()
    mon = HealthMonitor(["ingest", "publisher"], stall_s=60, clock=_Clock(), metrics=metrics, wall_clock=lambda: 5.0)
    mon.reset()
    assert _value(metrics, "heartbeat", "ingest") == 5.0
    assert _value(metrics, "heartbeat", "publisher") == 5.0
    assert _value(metrics, "last_progress", "ingest") is None
