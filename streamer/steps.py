"""Sampler steps per batch and the shedding plan: the worker's pure decision logic (no threads, no clocks).

- :class:`StepController` keeps an exponential moving average of the measured cost of one sampler
  step per batch size (seeded from ``denoiser.step_cost_ms``), and from it chooses the number of sampler steps for the next batch:

  * ``budget``: ``steps = floor((budget_ms - overhead_ms) / step_cost_ms)`` clamped to
    ``[min_steps, max_steps]``; with an end-to-end latency target the batch's budget is at most the
    target minus the age of its oldest window (time already spent since its newest sample arrived);
  * ``overload``: windows arrive in bursts, one per station per stride, so whatever is queued must be
    cleared within one stride or the queue grows without bound. With ``pending`` windows (this batch plus
    the queue) the time available per batch is ``stride_ms * batch_size / pending``; when that is below
    the budget the worker runs fewer steps;
  * shedding: when even ``min_steps`` (direct prediction at 1) cannot clear the queue before its windows
    go stale (``max_age_ms``), the oldest windows are dropped. Stale windows (age above ``max_age_ms``)
    are dropped first (reason ``age``), then as many of the oldest as needed (reason ``overload``).
    The newest data matter most to early warning, so the oldest go first.

- :func:`padded_batch_size`: the batch size the models run at for ``n`` windows.

Limitations: the cost model is per batch size with linear scaling between observed sizes; a batch that
takes far longer than predicted (a GC pause, a contended CPU) is only corrected by the next observation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["REASON_BUDGET", "REASON_OVERLOAD", "ShedPlan", "StepController", "StepDecision", "padded_batch_size"]

REASON_BUDGET = "budget"
REASON_OVERLOAD = "overload"


@dataclass(frozen=True)
class StepDecision:
    """Steps for one batch; ``reason`` is None at full quality, else ``budget`` or ``overload``;
    ``budget_ms`` is the time the denoiser may spend on the batch."""

    steps: int
    reason: str | None
    budget_ms: float


@dataclass(frozen=True)
class ShedPlan:
    """How many of the oldest queued windows to drop, by reason."""

    age: int = 0
    overload: int = 0

    @property
    def total(self) -> int:
        return self.age + self.overload


class StepController:
    """Chooses sampler steps per batch from the measured step cost; plans shedding. Pure logic.

    ``budget_ms``: time allowed for one batch; ``stride_ms``: the window stride (the period at which
    every station delivers a new window); ``max_age_ms``: a queued window older than this (measured from
    its newest sample's arrival) is stale. ``ema_alpha`` weights new observations.
    """

    def __init__(
        self,
        budget_ms: float,
        min_steps: int,
        max_steps: int,
        stride_ms: float | None = None,
        max_age_ms: float | None = None,
        ema_alpha: float = 0.3,
    ) -> None:
        if min_steps < 1 or max_steps < min_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if budget_ms <= 0:
            raise ValueError("budget_ms must be > 0")
        self.budget_ms = float(budget_ms)
        self.min_steps = int(min_steps)
        self.max_steps = int(max_steps)
        self.stride_ms = stride_ms
        self.max_age_ms = max_age_ms
        self.ema_alpha = float(ema_alpha)
        self._step_ms: dict[int, float] = {}
        self._overhead_ms: dict[int, float] = {}

    # --- cost model --------------------------------------------------------------------------------
    def seed(self, batch_size: int, step_cost_ms: float) -> None:
        """Initial estimate of one step's cost for ``batch_size`` (e.g. ``denoiser.step_cost_ms``)."""
        if step_cost_ms > 0:
            self._step_ms.setdefault(int(batch_size), float(step_cost_ms))

    def observe(self, batch_size: int, steps: int, elapsed_ms: float, overhead_ms: float = 0.0) -> None:
        """Feed a measured batch: ``elapsed_ms`` for ``steps`` denoiser steps, plus ``overhead_ms``
        spent outside the denoiser (picker, copies)."""
        b = int(batch_size)
        if steps > 0 and elapsed_ms > 0:
            self._step_ms[b] = self._ema(self._step_ms.get(b), elapsed_ms / steps)
        if overhead_ms >= 0:
            self._overhead_ms[b] = self._ema(self._overhead_ms.get(b), overhead_ms)

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.ema_alpha) * old + self.ema_alpha * new

    @staticmethod
    def _scaled(table: dict[int, float], batch_size: int) -> float | None:
        if not table:
            return None
        if batch_size in table:
            return table[batch_size]
        # Nearest observed size, scaled linearly in batch size (conservative for larger batches).
        nearest = min(table, key=lambda b: (abs(math.log(b / batch_size)), -b))
        return table[nearest] * batch_size / nearest

    def step_cost_ms(self, batch_size: int) -> float | None:
        """Estimated cost of one denoiser step for ``batch_size`` windows, None before any estimate."""
        return self._scaled(self._step_ms, int(batch_size))

    def overhead_ms(self, batch_size: int) -> float:
        return self._scaled(self._overhead_ms, int(batch_size)) or 0.0

    def batch_ms(self, batch_size: int, steps: int) -> float:
        """Predicted wall time of one batch at ``steps`` steps (0 when nothing is known yet)."""
        cost = self.step_cost_ms(batch_size) or 0.0
        return steps * cost + self.overhead_ms(batch_size)

    # --- decisions --------------------------------------------------------------------------------
    def choose(self, batch_size: int, queue_depth: int = 0, budget_ms: float | None = None) -> StepDecision:
        """Steps for a batch of ``batch_size`` windows with ``queue_depth`` more waiting behind it;
        ``budget_ms`` replaces the configured budget for this batch (latency target)."""
        b = max(int(batch_size), 1)
        cost = self.step_cost_ms(b)
        overhead = self.overhead_ms(b)
        budget = self.budget_ms if budget_ms is None else min(self.budget_ms, budget_ms)
        if cost is None:
            return StepDecision(self.max_steps, None, budget - overhead)
        budget_steps = self._fit(budget - overhead, cost)
        available = budget
        if self.stride_ms is not None and queue_depth > 0:
            n_batches = math.ceil((queue_depth + b) / b)
            available = min(budget, self.stride_ms / n_batches)
        steps = self._fit(available - overhead, cost)
        if steps < budget_steps:
            return StepDecision(steps, REASON_OVERLOAD, available - overhead)
        if budget_steps < self.max_steps:
            return StepDecision(budget_steps, REASON_BUDGET, budget - overhead)
        return StepDecision(self.max_steps, None, budget - overhead)

    def _fit(self, ms: float, cost: float) -> int:
        n = math.floor(ms / cost) if cost > 0 else self.max_steps
        return max(self.min_steps, min(self.max_steps, n))

    def plan_shedding(self, ages_ms: Sequence[float], batch_size: int) -> ShedPlan:
        """Which of the queued windows (``ages_ms``, oldest first) to drop before the next batch.

        First every window older than ``max_age_ms``; then, while draining the rest at ``min_steps``
        would take longer than ``max_age_ms``, the oldest of them.
        """
        if self.max_age_ms is None or not ages_ms:
            return ShedPlan()
        n_age = 0
        while n_age < len(ages_ms) and ages_ms[n_age] > self.max_age_ms:
            n_age += 1
        remaining = len(ages_ms) - n_age
        per_batch_ms = self.batch_ms(batch_size, self.min_steps)
        if per_batch_ms <= 0:
            return ShedPlan(age=n_age)
        max_batches = max(int(self.max_age_ms // per_batch_ms), 1)
        capacity = max_batches * max(int(batch_size), 1)
        return ShedPlan(age=n_age, overload=max(remaining - capacity, 0))


def padded_batch_size(n: int, multiple: int, batch_size: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``, but not beyond ``max(n, batch_size)``; ``multiple`` 1 = ``n``.

    Few distinct batch shapes keep torch's per-shape caches (oneDNN primitives on CPU, cuDNN plans on GPU) small:
    see "Batch shapes and memory" in docs/benchmarks.md."""
    if multiple <= 1:
        return n
    return min(-(-n // multiple) * multiple, max(n, batch_size))
