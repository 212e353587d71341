"""Samplers for the cold-diffusion denoiser, all with one signature.

``sample_<algorithm>(model, y, gammas, steps, *, callback=None, budget_ms=None) -> SampleResult``

- ``model(x, t_frac) -> x0_hat`` is any callable on ``(batch, channel, time)`` tensors, ``t_frac`` a ``(batch,)``
  tensor holding t / T;
- ``y`` is the observed (normalized) noisy window, which is exactly the state at t = T;
- ``gammas`` is a schedule from :mod:`models.degradation` (``(T + 1,)``, gamma_0 = 0, gamma_T = 1);
- ``steps`` is a strictly decreasing list of step indices starting at T and ending at 0 (see
  :func:`make_step_list`);
- ``callback(k, x0_hat)`` sees the current clean estimate after each network call;
- ``budget_ms`` is a wall-clock deadline: once spent, the sampler returns its best estimate so far. The check
  happens before each network call, using the measured duration of the previous call, so it never starts a step
  it cannot finish in time; the overrun is bounded by one step.

The sampler is *anytime*: after every network call a valid clean estimate exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models.degradation import degrade

__all__ = ["SampleResult", "make_step_list", "sample_cold", "sample_direct"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor], None]


@dataclass
class SampleResult:
    """``x0``: the clean estimate (same shape as ``y``); ``steps_done``: network calls made; ``elapsed_ms``."""

    x0: torch.Tensor
    steps_done: int
    elapsed_ms: float


def make_step_list(n_train_steps: int, n_calls: int) -> list[int]:
    """Evenly spaced, strictly decreasing step list from T to 0 with ``n_calls`` network calls.

    ``make_step_list(16, 4) == [16, 12, 8, 4, 0]``; ``n_calls`` is clipped to ``[1, T]``.
    """
    n = max(1, min(int(n_calls), int(n_train_steps)))
    raw = torch.linspace(float(n_train_steps), 0.0, n + 1).round().long().tolist()
    steps: list[int] = []
    for s in raw:
        if not steps or s < steps[-1]:
            steps.append(int(s))
    return steps


def _check_steps(steps: Sequence[int], n_train_steps: int) -> None:
    if len(steps) < 2 or steps[0] != n_train_steps or steps[-1] != 0:
        raise ValueError(f"step list must start at T={n_train_steps} and end at 0, got {list(steps)}")
    if any(b >= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"step list must be strictly decreasing, got {list(steps)}")


def _t_frac(step: int, n_train_steps: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), step / n_train_steps, dtype=torch.float32, device=like.device)


def sample_direct(
    model: ModelFn,
    y: torch.Tensor,
    gammas: torch.Tensor,
    steps: Sequence[int] | None = None,
    *,
    callback: Callback | None = None,
    budget_ms: float | None = None,
) -> SampleResult:
    """One network call at t = T: x0_hat = f(y, T). ``steps`` and ``budget_ms`` are accepted and ignored
    (a single call cannot be cut short)."""
    start = time.perf_counter()
    n_train_steps = len(gammas) - 1
    x0 = model(y, _t_frac(n_train_steps, n_train_steps, y))
    if callback is not None:
        callback(0, x0)
    return SampleResult(x0, 1, (time.perf_counter() - start) * 1e3)


def sample_cold(
    model: ModelFn,
    y: torch.Tensor,
    gammas: torch.Tensor,
    steps: Sequence[int] | None = None,
    *,
    callback: Callback | None = None,
    budget_ms: float | None = None,
) -> SampleResult:
    """Cold diffusion's improved sampling (Bansal et al. 2022, Algorithm 2) with the known end point y.

    Symbols: s_k = ``steps[k]``, D(x0_hat, s) = x0_hat + gamma_s * (y - x0_hat). Starting from x = y (the state at
    s_0 = T), each call predicts x0_hat = f(x, s_k) and moves x <- x - D(x0_hat, s_k) + D(x0_hat, s_{k+1}). Any
    strictly decreasing list from T to 0 works, so a truncated list is a strided sampler; with ``[T, 0]`` the
    result is exactly :func:`sample_direct`. The returned estimate is the last x0_hat (not x, which at s = 0 equals
    it up to the update's rounding).
    """
    start = time.perf_counter()
    n_train_steps = len(gammas) - 1
    steps = list(steps) if steps is not None else make_step_list(n_train_steps, n_train_steps)
    _check_steps(steps, n_train_steps)
    gammas = gammas.to(y.device)
    x = y
    x0_hat = y
    done = 0
    last_call_ms = 0.0
    for k in range(len(steps) - 1):
        if budget_ms is not None and done > 0:
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if elapsed_ms + last_call_ms > budget_ms:
                break
        call_start = time.perf_counter()
        s, s_next = steps[k], steps[k + 1]
        x0_hat = model(x, _t_frac(s, n_train_steps, x))
        done += 1
        if callback is not None:
            callback(k, x0_hat)
        if s_next > 0:
            x = x - degrade(x0_hat, y, gammas[s]) + degrade(x0_hat, y, gammas[s_next])
        last_call_ms = (time.perf_counter() - call_start) * 1e3
    return SampleResult(x0_hat, done, (time.perf_counter() - start) * 1e3)
