"""The batching worker: windows from all stations -> denoiser (+ PhaseNet) within a latency budget.

:class:`Worker` is a thread with a bounded, thread-safe input queue. It forms batches of up to
``batch_size`` windows (waiting at most ``max_wait_ms`` for a batch to fill), runs the denoiser and the
picker on the same batch, and hands a :class:`BatchResult` to ``on_result``. The number of sampler steps
per batch and which queued windows to shed come from the pure :class:`~streamer.steps.StepController`.
Every degradation is counted in ``coldstream_sampler_degradations_total{reason}`` and every shed window
in ``coldstream_windows_shed_total{reason}`` (and reported to ``on_shed`` so acknowledgement can move
on); nothing is dropped silently.

Inference runs on this thread, never on the ingest event loop.

Limitations: see :mod:`streamer.steps` for those of the cost model; ``submit`` never blocks, so a
producer faster than the worker loses its oldest windows (counted as ``queue_full``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.peaks import CONFIRM_WITHIN_S, GAP_MARGIN_S, confirming_samples
from streamer.errors import StreamerError
from streamer.logutil import RateLimitedLog
from streamer.metrics import Metrics
from streamer.records import Window
from streamer.steps import REASON_BUDGET, REASON_OVERLOAD, StepController, padded_batch_size

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000

SHED_AGE = "age"
SHED_OVERLOAD = "overload"
SHED_QUEUE_FULL = "queue_full"
SHED_ERROR = "error"
SHED_LOG_INTERVAL_S = 10.0  # at most one "shed" line per reason this often


class WorkerError(StreamerError):
    """Base class of the worker's errors."""


class DenoiseResultLike(Protocol):
    x0: Any
    steps_done: int
    elapsed_ms: float


class DenoiserLike(Protocol):
    """What the worker needs from ``models.Denoiser``."""

    name: str
    version: str

    def denoise_windows(self, x: np.ndarray, steps: int | None = None, budget_ms: float | None = None) -> Any: ...

    def step_cost_ms(self, batch_size: int) -> float: ...

    def warm_up(self, batch_size: int) -> Any: ...


class PickerLike(Protocol):
    """What the worker needs from ``models.picker.Picker``."""

    name: str
    version: str

    def predict(self, x: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------- worker
@dataclass
class BatchResult:
    """One processed batch.

    ``denoised``: ``(B, 3, N)`` float32 counts, masked samples set to 0; ``probs``: ``(B, 3, N)`` float32
    P/S/Noise probabilities on the denoised data (None without a picker); ``raw_probs``: the same on the
    raw data when the raw comparison picker is on. ``steps`` is what the denoiser actually ran.

    Under the pick policy (``unconfirmed_p_threshold``, :func:`models.peaks.confirm_p`), ``confirm_p`` is
    ``(B, N)`` float32: PhaseNet's P on the raw windows, 0 where a window lacks data on a component it has
    elsewhere (zero fill draws answers of its own). The output stage stacks it beside ``probs`` and the pick
    detector decides on the stacked curves; the result names its threshold, so it describes itself (a
    scale-out result too).
    """

    windows: list[Window]
    denoised: np.ndarray
    probs: np.ndarray | None
    raw_probs: np.ndarray | None
    steps: int
    steps_chosen: int
    reason: str | None
    inference_ms: float
    batch_ms: float
    finished_ns: int = 0
    model: str = ""
    model_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    confirm_p: np.ndarray | None = None
    unconfirmed_p_threshold: float | None = None


ResultHandler = Callable[[BatchResult], None]
ShedHandler = Callable[[list[Window], str], None]


class Worker:
    """Batches windows and runs denoiser + picker on a thread of its own.

    ``submit`` is thread-safe and never blocks: when the queue holds ``queue_max_windows`` the oldest
    window is shed (reason ``queue_full``). ``on_result`` and ``on_shed`` are called on the worker
    thread. Window ages are measured on ``mono_ns`` (monotonic) from ``Window.newest_arrival_mono_ns``;
    ``clock_ns`` (wall clock) only for windows without that stamp and for ``finished_ns``.
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        metrics: Metrics,
        on_result: ResultHandler,
        *,
        batch_size: int = 32,
        max_wait_ms: float = 200.0,
        budget_ms: float = 2000.0,
        min_steps: int = 1,
        max_steps: int = 8,
        queue_max_windows: int = 4000,
        stride_s: float | None = None,
        max_age_s: float | None = None,
        picker: PickerLike | None = None,
        raw_picker: bool = False,
        on_shed: ShedHandler | None = None,
        torch_threads: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        on_progress: Callable[[], None] | None = None,
        target_latency_s: float | None = None,
        pad_batch_multiple: int = 8,
        on_fast_result: ResultHandler | None = None,
        fast_steps: int = 1,
        fast_max_age_s: float = 3.0,
        fast_queue_max_windows: int = 512,
        fast_reported: Callable[[Window], bool] | None = None,
        p_threshold: float = 0.3,
        unconfirmed_p_threshold: float | None = None,
    ) -> None:
        self.denoiser = denoiser
        # the pick policy on the denoised output (models.peaks.confirm_p): a P pick the raw input does not
        # confirm needs unconfirmed_p_threshold; PhaseNet then runs on the raw windows too
        self.p_threshold = float(p_threshold)
        self.unconfirmed_p_threshold = (
            None if unconfirmed_p_threshold is None or unconfirmed_p_threshold <= p_threshold
            else float(unconfirmed_p_threshold)
        )
        rate = float(getattr(getattr(denoiser, "spec", None), "sampling_rate_hz", 100.0))
        self.confirm_margin_samples = round(GAP_MARGIN_S * rate)
        if picker is not None and self.unconfirmed_p_threshold is not None:
            log.info("P picks on the denoised output: confirmed by the raw window (P >= %.2f within %.1f s) or "
                     "P >= %.2f of their own", self.p_threshold, CONFIRM_WITHIN_S, self.unconfirmed_p_threshold)
        # the early-warning fast path: trailing windows, served first but never twice in a row while
        # grid windows wait, so they cannot starve the final path (at most every other batch)
        self.on_fast_result = on_fast_result
        self.fast_steps = int(fast_steps)
        self.fast_max_age_ns = round(fast_max_age_s * 1e9)
        self.fast_queue_max_windows = int(fast_queue_max_windows)
        self._fast: deque[Window] = deque()
        self._last_was_fast = False
        # stations whose onset is reported already (their windows only add amplitude updates) go
        # behind those still waiting for a first report; under a burst their windows age out first
        self.fast_reported = fast_reported
        self.pad_batch_multiple = max(int(pad_batch_multiple), 1)
        self.target_latency_ms = None if target_latency_s is None else target_latency_s * 1000.0
        self.picker = picker
        self.raw_picker = raw_picker and picker is not None
        self.metrics = metrics
        self.on_result = on_result
        self.on_shed = on_shed
        self.on_progress = on_progress
        self.batch_size = int(batch_size)
        self.max_wait_ms = float(max_wait_ms)
        self.queue_max_windows = int(queue_max_windows)
        self.torch_threads = torch_threads
        self.clock_ns = clock_ns
        self.mono_ns = mono_ns
        stride_ms = None if stride_s is None else stride_s * 1000.0
        max_age_ms = None if max_age_s is None else max_age_s * 1000.0
        self.controller = StepController(budget_ms, min_steps, max_steps, stride_ms, max_age_ms)
        self._queue: deque[Window] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._cancelled = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._rl = RateLimitedLog(log, interval_s=SHED_LOG_INTERVAL_S)
        self.batches_done = 0
        self.windows_done = 0
        self.last_error: BaseException | None = None

    @staticmethod
    def resolve_max_steps(worker_settings: Any, denoiser: Any) -> int:
        """``worker.max_steps``, or where unset the weights' recommended steps (never below ``min_steps``).

        Both the daemon and ``coldstream denoise`` resolve it here, so that with the same settings they run
        the same number of sampler steps.
        """
        ws = worker_settings
        if ws.max_steps is not None:
            return int(ws.max_steps)
        return max(int(getattr(denoiser, "default_steps", 1)), int(ws.min_steps))

    @classmethod
    def from_settings(
        cls,
        denoiser: DenoiserLike,
        metrics: Metrics,
        on_result: ResultHandler,
        worker_settings: Any,
        stride_s: float,
        **kwargs: Any,
    ) -> "Worker":
        """Build from ``WorkerSettings``; the stale-window bound is ``shed_age_strides * stride_s``."""
        ws = worker_settings
        return cls(
            denoiser,
            metrics,
            on_result,
            batch_size=ws.batch_size,
            max_wait_ms=ws.max_wait_ms,
            budget_ms=ws.budget_ms,
            min_steps=ws.min_steps,
            max_steps=cls.resolve_max_steps(ws, denoiser),
            queue_max_windows=ws.queue_max_windows,
            stride_s=stride_s,
            max_age_s=ws.shed_age_strides * stride_s if ws.shed_age_strides else None,
            torch_threads=ws.torch_threads,
            target_latency_s=ws.target_latency_s,
            pad_batch_multiple=ws.pad_batch_multiple,
            **kwargs,
        )

    # --- input ---------------------------------------------------------------------------------------
    def submit(self, windows: Sequence[Window]) -> None:
        """Queue windows (thread-safe, non-blocking)."""
        if not windows:
            return
        dropped: list[Window] = []
        with self._cond:
            if self._stopping:
                dropped = list(windows)
            else:
                self._queue.extend(windows)
                while len(self._queue) > self.queue_max_windows:
                    dropped.append(self._queue.popleft())
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        if dropped:
            reason = SHED_QUEUE_FULL
            self._report_shed(dropped, reason)

    def submit_fast(self, windows: Sequence[Window]) -> None:
        """Queue trailing windows of the fast path (thread-safe, non-blocking). A newer window of a
        station replaces its queued one (``superseded``); beyond the bound the oldest go
        (``queue_full``); all counted in ``coldstream_eew_windows_shed_total``."""
        if not windows:
            return
        shed: dict[str, int] = {}
        with self._cond:
            if self._stopping or self.on_fast_result is None:
                shed["stopping"] = len(windows)
            else:
                for w in windows:
                    before = len(self._fast)
                    self._fast = deque(q for q in self._fast if q.station_id != w.station_id)
                    if len(self._fast) < before:
                        shed["superseded"] = shed.get("superseded", 0) + before - len(self._fast)
                    self._fast.append(w)
                while len(self._fast) > self.fast_queue_max_windows:
                    self._fast.popleft()
                    shed["queue_full"] = shed.get("queue_full", 0) + 1
            self.metrics.eew_queue_depth.set(len(self._fast))
            self._cond.notify_all()
        for reason, n in shed.items():
            self.metrics.eew_windows_shed.labels(reason=reason).inc(n)

    @property
    def depth(self) -> int:
        """Windows waiting (not counting the batch in progress)."""
        with self._cond:
            return len(self._queue)

    @property
    def idle(self) -> bool:
        """True when nothing is queued and no batch is running."""
        with self._cond:
            return not self._queue and not self._busy

    # --- lifecycle -----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run one inference at full batch size and seed the step cost (blocking)."""
        self._apply_torch_threads()
        self.denoiser.warm_up(self.batch_size)
        cost = float(self.denoiser.step_cost_ms(self.batch_size))
        self.controller.seed(self.batch_size, cost)
        log.info("worker warmed up: %.1f ms per sampler step at batch size %d", cost, self.batch_size)

    def _apply_torch_threads(self) -> None:
        if self.torch_threads:
            import torch

            torch.set_num_threads(int(self.torch_threads))

    def start(self) -> None:
        self._apply_torch_threads()
        self._thread = threading.Thread(target=self._run, name="coldstream-worker", daemon=True)
        self._thread.start()

    def stop(self, drain: bool = True, timeout_s: float | None = None) -> bool:
        """Stop taking windows; with ``drain`` finish the queued ones first. True when the thread ended."""
        with self._cond:
            self._stopping = True
            if not drain:
                self._cancelled = True
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def cancel(self) -> list[Window]:
        """Abandon queued windows (second signal); returns them so the caller can account for them."""
        with self._cond:
            self._cancelled = True
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._fast.clear()
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        return left

    # --- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        log.info("worker started (batch size %d, budget %.0f ms)", self.batch_size, self.controller.budget_ms)
        while True:
            batch = self._next_batch(timeout_s=None)
            if batch is None:
                break
            if batch:
                self._process_guarded(batch)
        log.info("worker stopped after %d batches, %d windows", self.batches_done, self.windows_done)

    def process_once(self, timeout_s: float = 0.0) -> BatchResult | None:
        """Take one batch (waiting up to ``timeout_s``) and process it on the calling thread (tests,
        benchmarks). Returns None when nothing was queued."""
        batch = self._next_batch(timeout_s=timeout_s)
        if not batch:
            return None
        return self._process_guarded(batch)

    def _next_batch(self, timeout_s: float | None) -> list[Window] | None:
        """Up to ``batch_size`` windows; [] when none arrived in ``timeout_s``; None when stopped."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._queue and not (self._fast and not self._stopping):
                if self._stopping:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining if remaining is not None else 1.0)
            if self._cancelled:
                return None
            if not self._fast_turn():
                fill_deadline = time.monotonic() + self.max_wait_ms / 1000.0
                while len(self._queue) < self.batch_size and not self._stopping and not self._fast:
                    remaining = fill_deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            if self._fast_turn():
                fast = self._take_fast_locked()
                if fast:
                    self._busy = True
                    self._last_was_fast = True
                    return fast
                if not self._queue:
                    return []
            self._last_was_fast = False
            shed = self._shed_locked()
            n = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._busy = bool(batch)
            self.metrics.queue_depth.set(len(self._queue))
        for reason, windows in shed:
            self._report_shed(windows, reason)
        return batch

    def _fast_turn(self) -> bool:
        """Fast windows go first, but not twice in a row while grid windows wait."""
        return bool(self._fast) and not self._stopping and (not self._last_was_fast or not self._queue)

    def _take_fast_locked(self) -> list[Window]:
        wall, mono = self.clock_ns(), self.mono_ns()
        fresh = deque(w for w in self._fast if self._age_ns(w, wall, mono) <= self.fast_max_age_ns)
        stale = len(self._fast) - len(fresh)
        self._fast = fresh
        if stale:
            self.metrics.eew_windows_shed.labels(reason="age").inc(stale)
            self._rl.warning("eew-age", "shed %d trailing windows older than %.1f s (too late to help)",
                             stale, self.fast_max_age_ns / 1e9)
        if self.fast_reported is not None and len(self._fast) > self.batch_size:
            first = [w for w in self._fast if not self.fast_reported(w)]
            self._fast = deque(first + [w for w in self._fast if self.fast_reported(w)])
        n = min(self.batch_size, len(self._fast))
        batch = [self._fast.popleft() for _ in range(n)]
        self.metrics.eew_queue_depth.set(len(self._fast))
        return batch

    def _shed_locked(self) -> list[tuple[str, list[Window]]]:
        wall, mono = self.clock_ns(), self.mono_ns()
        ages = [self._age_ns(w, wall, mono) / NS_PER_MS for w in self._queue]
        plan = self.controller.plan_shedding(ages, self.batch_size)
        out: list[tuple[str, list[Window]]] = []
        for reason, n in ((SHED_AGE, plan.age), (SHED_OVERLOAD, plan.overload)):
            if n:
                out.append((reason, [self._queue.popleft() for _ in range(n)]))
        return out

    def _report_shed(self, windows: list[Window], reason: str) -> None:
        self.metrics.windows_shed.labels(reason=reason).inc(len(windows))
        self._rl.warning(f"shed-{reason}", "shed %d windows (%s); queue depth %d", len(windows), reason, len(self._queue))
        if self.on_shed is not None:
            self.on_shed(windows, reason)

    def _process_guarded(self, batch: list[Window]) -> BatchResult | None:
        fast = bool(batch[0].meta.get("fast"))
        try:
            if fast:
                result = self.process_fast(batch)
                assert self.on_fast_result is not None
                self.on_fast_result(result)
                return result
            result = self.process_batch(batch)
            self.on_result(result)
            return result
        except Exception as exc:  # recover inside the loop: count, report, keep going
            self.last_error = exc
            log.exception("%s batch of %d windows failed; shedding it", "fast" if fast else "a", len(batch))
            if fast:
                self.metrics.eew_windows_shed.labels(reason=SHED_ERROR).inc(len(batch))
            else:
                self._report_shed(batch, SHED_ERROR)
            return None
        finally:
            with self._cond:
                self._busy = False
            if self.on_progress is not None:
                self.on_progress()

    def padded_size(self, n: int) -> int:
        """Batch size the models run at for ``n`` windows (see :func:`padded_batch_size`)."""
        return padded_batch_size(n, self.pad_batch_multiple, self.batch_size)

    def process_batch(self, batch: list[Window]) -> BatchResult:
        """Denoise and pick one batch (no queue involved)."""
        t0 = time.perf_counter()
        n = len(batch)
        n_run = self.padded_size(n)
        decision = self.controller.choose(n_run, self.depth, self._latency_budget_ms(batch))
        if decision.reason is not None:
            self.metrics.degradations.labels(reason=decision.reason).inc()
        x = np.stack([w.data for w in batch]).astype(np.float32, copy=False)
        mask = np.stack([w.mask for w in batch])
        # padding repeats the last window, so it is real-looking data; its outputs are dropped
        x_run, mask_run = x, mask
        if n_run > n:
            x_run = np.concatenate([x, np.repeat(x[-1:], n_run - n, axis=0)])
            mask_run = np.concatenate([mask, np.repeat(mask[-1:], n_run - n, axis=0)])
        res = self.denoiser.denoise_windows(x_run, steps=decision.steps, budget_ms=max(decision.budget_ms, 1.0))
        denoised_run = np.where(mask_run, _to_numpy(res.x0), np.float32(0.0)).astype(np.float32, copy=False)
        steps_done = int(res.steps_done)
        inference_ms = float(res.elapsed_ms)
        probs = raw_probs = confirm = None
        if self.picker is not None:
            probs = _to_numpy(self.picker.predict(denoised_run))[:n]
            if self.raw_picker or self.unconfirmed_p_threshold is not None:
                raw_all = _to_numpy(self.picker.predict(x_run))[:n]
                if self.unconfirmed_p_threshold is not None:
                    # a raw sample confirms only where every component with data in the window has data, away
                    # from gaps: PhaseNet answers zero fill and its edges with P of its own
                    valid = confirming_samples(mask, self.confirm_margin_samples)
                    confirm = np.where(valid, raw_all[:, 0], np.float32(0.0)).astype(np.float32, copy=False)
                raw_probs = raw_all if self.raw_picker else None
        denoised = denoised_run[:n]
        batch_ms = (time.perf_counter() - t0) * 1000.0
        self.controller.observe(n_run, steps_done, inference_ms, max(batch_ms - inference_ms, 0.0))
        self._record(n, steps_done, batch_ms)
        if steps_done < decision.steps and decision.reason is None:
            # the denoiser's own deadline cut the sampler short: that is a budget degradation too
            self.metrics.degradations.labels(reason=REASON_BUDGET).inc()
        return BatchResult(
            windows=batch,
            denoised=denoised,
            probs=probs,
            raw_probs=raw_probs,
            steps=steps_done,
            steps_chosen=decision.steps,
            reason=decision.reason,
            inference_ms=inference_ms,
            batch_ms=batch_ms,
            finished_ns=self.clock_ns(),
            model=str(getattr(self.denoiser, "name", "")),
            model_version=str(getattr(self.denoiser, "version", "")),
            extra={"picker": str(getattr(self.picker, "name", "")), "picker_version": str(getattr(self.picker, "version", ""))}
            if self.picker is not None
            else {},
            confirm_p=confirm,
            unconfirmed_p_threshold=self.unconfirmed_p_threshold if confirm is not None else None,
        )

    def process_fast(self, batch: list[Window]) -> BatchResult:
        """The fast path's trailing windows: ``fast_steps`` sampler steps, then PhaseNet (no queue)."""
        t0 = time.perf_counter()
        n = len(batch)
        n_run = self.padded_size(n)
        x = np.stack([w.data for w in batch]).astype(np.float32, copy=False)
        mask = np.stack([w.mask for w in batch])
        if n_run > n:
            x = np.concatenate([x, np.repeat(x[-1:], n_run - n, axis=0)])
            mask = np.concatenate([mask, np.repeat(mask[-1:], n_run - n, axis=0)])
        res = self.denoiser.denoise_windows(x, steps=self.fast_steps)
        denoised = np.where(mask, _to_numpy(res.x0), np.float32(0.0)).astype(np.float32, copy=False)
        probs = _to_numpy(self.picker.predict(denoised))[:n] if self.picker is not None else None
        batch_ms = (time.perf_counter() - t0) * 1000.0
        steps_done = int(res.steps_done)
        self.controller.observe(n_run, steps_done, float(res.elapsed_ms), max(batch_ms - float(res.elapsed_ms), 0.0))
        self.metrics.eew_windows.inc(n)
        self.metrics.inference_duration.observe(batch_ms / 1000.0)
        return BatchResult(
            windows=batch, denoised=denoised[:n], probs=probs, raw_probs=None, steps=steps_done,
            steps_chosen=self.fast_steps, reason=None, inference_ms=float(res.elapsed_ms), batch_ms=batch_ms,
            finished_ns=self.clock_ns(), model=str(getattr(self.denoiser, "name", "")),
            model_version=str(getattr(self.denoiser, "version", "")),
            extra={"fast": True, "picker": str(getattr(self.picker, "name", "")),
                   "picker_version": str(getattr(self.picker, "version", ""))},
        )

    def _latency_budget_ms(self, batch: list[Window]) -> float | None:
        """With a latency target: the time left before the batch's oldest window misses it (at
        least 1 ms: the batch then runs at ``min_steps``)."""
        if self.target_latency_ms is None:
            return None
        wall, mono = self.clock_ns(), self.mono_ns()
        age_ms = max(self._age_ns(w, wall, mono) for w in batch) / NS_PER_MS
        return max(self.target_latency_ms - age_ms, 1.0)

    @staticmethod
    def _age_ns(w: Window, wall_ns: int, mono_ns: int) -> int:
        """Time since the window's newest sample arrived: on the monotonic clock when the window
        carries a monotonic stamp (live windows do), else on the wall clock."""
        if w.newest_arrival_mono_ns:
            return mono_ns - w.newest_arrival_mono_ns
        return wall_ns - w.newest_arrival_ns

    def _record(self, n: int, steps: int, batch_ms: float) -> None:
        m = self.metrics
        m.inference_duration.observe(batch_ms / 1000.0)
        m.batch_size.observe(n)
        m.sampler_steps.observe(steps)
        m.windows_processed.inc(n)
        self.batches_done += 1
        self.windows_done += n
        device = str(getattr(self.denoiser, "device", "cpu"))
        if device.startswith("cuda"):
            try:
                import torch

                m.gpu_memory_used.set(torch.cuda.memory_allocated())
            except Exception:  # the gauge is best effort; never fail a batch over it
                pass


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    detach = getattr(x, "detach", None)
    if detach is not None:
        return np.asarray(detach().float().cpu().numpy(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)
