"""Worker: step choice within the budget, overload degradation, shedding, batching; all counted."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from streamer.records import Window
from streamer.steps import REASON_BUDGET, REASON_OVERLOAD, ShedPlan, StepController
from streamer.worker import BatchResult, Worker

N = 3000
NS = 1_000_000_000


@dataclass
class FakeResult:
    x0: np.ndarray
    steps_done: int
    elapsed_ms: float


class FakeDenoiser:
    """Costs exactly ``step_ms * batch`` per step (reported, not slept): deterministic timing."""

    name = "fake"
    version = "0"
    device = "cpu"

    def __init__(self, step_ms_per_window: float = 10.0) -> None:
        self.step_ms_per_window = step_ms_per_window
        self.calls: list[tuple[int, int | None, float | None]] = []
        self.warmed = 0

    def denoise_windows(self, x: np.ndarray, steps: int | None = None, budget_ms: float | None = None) -> FakeResult:
        self.calls.append((x.shape[0], steps, budget_ms))
        s = int(steps or 1)
        return FakeResult(x * 0.5, s, s * self.step_ms_per_window * x.shape[0])

    def step_cost_ms(self, batch_size: int) -> float:
        return self.step_ms_per_window * batch_size

    def warm_up(self, batch_size: int) -> None:
        self.warmed += 1


class FakePicker:
    name = "fakepick"
    version = "0"

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = np.zeros_like(x)
        p[:, 0, 100] = 0.9
        return p


def make_window(i: int, arrival_ns: int = 0, station: str = "XX.STA.") -> Window:
    data = np.full((3, N), float(i + 1), np.float32)
    mask = np.ones((3, N), bool)
    mask[:, :10] = False
    return Window(station, i * 10 * NS, 100.0, data, mask, arrival_ns)


def counter(metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


# --------------------------------------------------------------------------------------- controller
@pytest.mark.parametrize(
    "budget_ms, step_ms, expected_steps, reason",
    [
        (1000, 100, 8, None),  # 10 steps fit, clamped to max 8
        (800, 100, 8, None),  # exactly 8
        (799, 100, 7, REASON_BUDGET),
        (450, 100, 4, REASON_BUDGET),
        (50, 100, 1, REASON_BUDGET),  # never below min_steps (direct)
    ],
)
def test_budget_sets_steps(budget_ms, step_ms, expected_steps, reason):
    c = StepController(budget_ms, 1, 8)
    c.seed(32, step_ms)
    d = c.choose(32)
    assert (d.steps, d.reason) == (expected_steps, reason)


def test_no_estimate_runs_full_quality():
    d = StepController(100, 1, 8).choose(4)
    assert d.steps == 8 and d.reason is None


def test_observe_moves_the_estimate_towards_measurements():
    c = StepController(1000, 1, 8, ema_alpha=0.5)
    c.seed(8, 50.0)
    assert c.choose(8).steps == 8
    for _ in range(10):
        c.observe(8, steps=4, elapsed_ms=800.0)  # 200 ms per step measured
    assert c.step_cost_ms(8) == pytest.approx(200.0, rel=0.01)
    d = c.choose(8)
    assert d.steps == 5 and d.reason == REASON_BUDGET


def test_overhead_is_taken_out_of_the_budget():
    c = StepController(1000, 1, 8, ema_alpha=1.0)
    c.observe(8, steps=1, elapsed_ms=100.0, overhead_ms=400.0)
    assert c.choose(8).steps == 6


def test_cost_scales_to_unseen_batch_sizes():
    c = StepController(1000, 1, 8)
    c.seed(32, 320.0)
    assert c.step_cost_ms(16) == pytest.approx(160.0)
    assert c.step_cost_ms(64) == pytest.approx(640.0)


def test_queue_backlog_reduces_steps_as_overload():
    c = StepController(2000, 1, 8, stride_ms=10_000)
    c.seed(32, 100.0)  # 8 steps = 800 ms
    assert c.choose(32, queue_depth=0).reason is None
    # 96 waiting + 32 = 4 batches in one stride: 2500 ms each, still fine
    assert c.choose(32, queue_depth=96).steps == 8
    # 32 * 40 windows = 40 batches per stride -> 250 ms each -> 2 steps
    d = c.choose(32, queue_depth=32 * 39)
    assert (d.steps, d.reason) == (2, REASON_OVERLOAD)
    # far beyond: down to direct prediction
    d = c.choose(32, queue_depth=32 * 1000)
    assert (d.steps, d.reason) == (1, REASON_OVERLOAD)


def test_shedding_plan_age_first_then_oldest_for_overload():
    c = StepController(2000, 1, 8, stride_ms=10_000, max_age_ms=30_000)
    c.seed(10, 1000.0)  # a direct batch of 10 takes 1 s -> 30 batches = 300 windows fit in 30 s
    assert c.plan_shedding([100.0] * 300, 10) == ShedPlan()
    ages = [40_000.0] * 5 + [100.0] * 320
    plan = c.plan_shedding(ages, 10)
    assert plan == ShedPlan(age=5, overload=20)
    assert plan.total == 25


def test_controller_rejects_bad_bounds():
    with pytest.raises(ValueError):
        StepController(100, 3, 2)
    with pytest.raises(ValueError):
        StepController(0, 1, 2)


# ------------------------------------------------------------------------------------------- worker
def make_worker(metrics, denoiser=None, **kw) -> tuple[Worker, list[BatchResult], list[tuple[list[Window], str]]]:
    results: list[BatchResult] = []
    shed: list[tuple[list[Window], str]] = []
    kw.setdefault("max_wait_ms", 0.0)
    w = Worker(
        denoiser or FakeDenoiser(),
        metrics,
        results.append,
        on_shed=lambda ws, r: shed.append((ws, r)),
        **kw,
    )
    return w, results, shed


def test_batches_are_formed_denoised_picked_and_counted(metrics):
    w, results, _ = make_worker(metrics, batch_size=4, picker=FakePicker(), clock_ns=lambda: 0)
    w.submit([make_window(i) for i in range(10)])
    sizes = []
    while (r := w.process_once()) is not None:
        sizes.append(len(r.windows))
    assert sizes == [4, 4, 2]
    r = results[0]
    assert r.denoised.shape == (4, 3, N) and r.denoised.dtype == np.float32
    assert np.all(r.denoised[:, :, :10] == 0)  # masked samples zeroed
    assert r.denoised[0, 0, 50] == pytest.approx(0.5)
    assert r.probs is not None and r.probs.shape == (4, 3, N)
    assert [x.window_id for x in results[0].windows] == [make_window(i).window_id for i in range(4)]
    assert counter(metrics, "coldstream_windows_processed_total") == 10
    assert counter(metrics, "coldstream_batch_size_count") == 3
    assert counter(metrics, "coldstream_sampler_steps_sum") == 3 * 8
    assert counter(metrics, "coldstream_window_queue_depth") == 0


class ShapeRecordingDenoiser(FakeDenoiser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[np.ndarray] = []

    def denoise_windows(self, x, steps=None, budget_ms=None):
        self.inputs.append(x.copy())
        return super().denoise_windows(x, steps, budget_ms)


def test_batches_run_padded_to_few_shapes_and_only_real_windows_come_out(metrics):
    den = ShapeRecordingDenoiser()
    w, results, _ = make_worker(metrics, den, batch_size=32, picker=FakePicker(), clock_ns=lambda: 0)
    assert [w.padded_size(n) for n in (1, 8, 9, 17, 25, 32)] == [8, 8, 16, 24, 32, 32]
    w.submit([make_window(i) for i in range(3)])
    r = w.process_once()
    assert r is not None and len(r.windows) == 3
    x = den.inputs[-1]
    assert x.shape[0] == 8
    np.testing.assert_array_equal(x[3:], np.repeat(x[2:3], 5, axis=0))  # padding repeats the last window
    assert r.denoised.shape == (3, 3, N) and r.probs is not None and r.probs.shape == (3, 3, N)
    assert r.denoised[2, 0, 50] == pytest.approx(1.5) and np.all(r.denoised[:, :, :10] == 0)
    assert counter(metrics, "coldstream_windows_processed_total") == 3
    assert counter(metrics, "coldstream_batch_size_sum") == 3
    # off: the models see the batch as it is
    den2 = ShapeRecordingDenoiser()
    w2, _, _ = make_worker(metrics, den2, batch_size=32, pad_batch_multiple=1, clock_ns=lambda: 0)
    w2.submit([make_window(i) for i in range(3)])
    w2.process_once()
    assert den2.inputs[-1].shape[0] == 3


def test_budget_degradation_is_counted(metrics):
    den = FakeDenoiser(step_ms_per_window=10.0)  # batch of 4: 40 ms per step
    w, results, _ = make_worker(metrics, den, batch_size=4, budget_ms=100.0, clock_ns=lambda: 0)
    w.warm_up()
    assert den.warmed == 1
    w.submit([make_window(i) for i in range(4)])
    r = w.process_once()
    assert r is not None and r.steps == 2 and r.reason == REASON_BUDGET
    assert den.calls[-1][1] == 2
    assert counter(metrics, "coldstream_sampler_degradations_total", reason="budget") == 1


def test_overload_degrades_then_sheds_oldest(metrics):
    now = [0]
    den = FakeDenoiser(step_ms_per_window=25.0)  # batch of 4: 100 ms per step
    w, results, shed = make_worker(
        metrics, den, batch_size=4, budget_ms=1000.0, stride_s=1.0, max_age_s=2.0, clock_ns=lambda: now[0]
    )
    w.warm_up()
    # 40 windows queued: 10 batches per 1 s stride -> 100 ms per batch -> 1 step (overload)
    w.submit([make_window(i, arrival_ns=0) for i in range(40)])
    r = w.process_once()
    assert r is not None and r.steps == 1 and r.reason == REASON_OVERLOAD
    assert counter(metrics, "coldstream_sampler_degradations_total", reason="overload") == 1
    assert shed == []
    # 200 more: draining 236 at direct mode (100 ms per 4) takes 5.9 s > 2 s -> shed all but 80
    w.submit([make_window(100 + i, arrival_ns=0) for i in range(200)])
    r = w.process_once()
    assert r is not None
    assert [reason for _, reason in shed] == ["overload"]
    assert len(shed[0][0]) == 236 - 80
    # the oldest were shed: the batch processed is the first of the newest 80
    assert shed[0][0][0].window_id == make_window(4).window_id
    assert counter(metrics, "coldstream_windows_shed_total", reason="overload") == 156
    # time passes: everything left is stale
    now[0] = 3 * NS
    w.submit([make_window(999, arrival_ns=3 * NS)])
    r = w.process_once()
    assert shed[-1][1] == "age" and len(shed[-1][0]) == 76
    assert r is not None and [x.window_id for x in r.windows] == [make_window(999).window_id]
    processed = counter(metrics, "coldstream_windows_processed_total")
    shed_total = sum(len(ws) for ws, _ in shed)
    assert processed + shed_total == 241  # nothing dropped silently


def test_full_queue_sheds_oldest(metrics):
    w, _, shed = make_worker(metrics, queue_max_windows=5, clock_ns=lambda: 0)
    w.submit([make_window(i) for i in range(8)])
    assert w.depth == 5
    assert shed[0][1] == "queue_full" and [x.window_id for x in shed[0][0]] == [
        make_window(i).window_id for i in range(3)
    ]
    assert counter(metrics, "coldstream_windows_shed_total", reason="queue_full") == 3


def test_failing_batch_is_shed_with_reason_error_and_worker_continues(metrics):
    class Boom(FakeDenoiser):
        def denoise_windows(self, x, steps=None, budget_ms=None):
            if x[0, 0, 50] == 1.0:
                raise RuntimeError("bad batch")
            return super().denoise_windows(x, steps, budget_ms)

    w, results, shed = make_worker(metrics, Boom(), batch_size=1, clock_ns=lambda: 0)
    w.submit([make_window(0), make_window(1)])
    assert w.process_once() is None
    assert w.process_once() is not None
    assert shed[0][1] == "error" and len(results) == 1


def test_thread_batches_within_max_wait_and_drains_on_stop(metrics):
    done = threading.Event()
    results: list[BatchResult] = []

    def on_result(r: BatchResult) -> None:
        results.append(r)
        if sum(len(x.windows) for x in results) >= 7:
            done.set()

    w = Worker(FakeDenoiser(), metrics, on_result, batch_size=4, max_wait_ms=50.0, clock_ns=lambda: 0)
    w.start()
    w.submit([make_window(i) for i in range(7)])
    assert done.wait(5.0)
    assert sorted(len(r.windows) for r in results) == [3, 4]
    w.submit([make_window(10 + i) for i in range(3)])
    assert w.stop(drain=True, timeout_s=5.0)
    assert sum(len(r.windows) for r in results) == 10
    assert w.idle


def test_cancel_returns_queued_windows(metrics):
    w, _, _ = make_worker(metrics, clock_ns=lambda: 0)
    w.submit([make_window(i) for i in range(3)])
    left = w.cancel()
    assert len(left) == 3 and w.depth == 0
    w.submit([make_window(5)])  # after stop: reported as shed, not queued
    assert w.depth == 0


def test_latency_target_tightens_the_budget_by_the_age_of_the_oldest_window(metrics):
    now = [5 * NS]
    den = FakeDenoiser(step_ms_per_window=25.0)  # batch of 4: 100 ms per step
    w, _, _ = make_worker(metrics, den, batch_size=4, budget_ms=2000.0, target_latency_s=5.5,
                          clock_ns=lambda: now[0])
    w.warm_up()
    # oldest window arrived 5.0 s ago: 500 ms left of the 5.5 s target -> 5 steps
    w.submit([make_window(i, arrival_ns=0 if i == 0 else 4 * NS) for i in range(4)])
    r = w.process_once()
    assert r is not None and r.steps == 5 and r.reason == REASON_BUDGET
    # already late: direct prediction
    now[0] = 10 * NS
    w.submit([make_window(i, arrival_ns=0) for i in range(4)])
    r = w.process_once()
    assert r is not None and r.steps == 1


def test_a_wall_clock_step_does_not_make_windows_stale(metrics):
    """Ages are measured on the monotonic clock: a 30 s wall-clock step sheds nothing."""
    wall, mono = [10**18], [5 * 10**12]
    den = FakeDenoiser(step_ms_per_window=1.0)
    w, results, shed = make_worker(metrics, den, batch_size=4, budget_ms=1000.0, stride_s=10.0, max_age_s=20.0,
                                   clock_ns=lambda: wall[0], mono_ns=lambda: mono[0])
    w.warm_up()
    windows = [make_window(i, arrival_ns=wall[0]) for i in range(8)]
    for win in windows:
        win.newest_arrival_mono_ns = mono[0]
    w.submit(windows)
    wall[0] += 30 * 10**9  # the step
    mono[0] += 10**9
    assert w.process_once() is not None and shed == []
    mono[0] += 30 * 10**9  # now they really are stale
    w.process_once(timeout_s=0.0)
    assert [reason for _, reason in shed] == ["age"]
