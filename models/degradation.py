"""The one degradation operator, its schedules, and the noisy-window normalization.

Cold diffusion (Bansal et al. 2022) as used by CDiffSD (Trappolini et al. 2024), with the fixes of the
project's method note: a single operator everywhere (training, unfolded loss, sampling, tests),

    D(x0, t) = x0 + gamma_t * (y - x0),   0 = gamma_0 < gamma_1 < ... < gamma_T = 1,

so ``D(x0, 0) = x0`` and ``D(x0, T) = y`` exactly, where ``y`` is the observed noisy window. Schedules are
plain functions returning a ``(T + 1,)`` float tensor of gammas.

Normalization uses a statistic of the *noisy* window only (what a live system has): the per-channel mean is
removed and the window is divided by one scale for all components (the standard deviation over the three
components), so amplitude ratios between components survive. The scale and mean are returned and undone on
the output so amplitudes come back in counts.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "degrade",
    "make_cosine_schedule",
    "make_linear_schedule",
    "make_schedule",
    "normalize_window",
    "denormalize_window",
]

SCALE_FLOOR = 1e-20
"""Windows whose scale is below this (in counts) are treated as all-zero."""


def make_linear_schedule(n_steps: int) -> torch.Tensor:
    """gamma_t = t / T for t = 0..T; returns a float32 tensor of shape ``(T + 1,)``."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float32)


def make_cosine_schedule(n_steps: int) -> torch.Tensor:
    """gamma_t = sin^2(pi/2 * t / T): slow near both ends; shape ``(T + 1,)``, exact endpoints 0 and 1."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    t = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    g = torch.sin(0.5 * math.pi * t) ** 2
    g[0], g[-1] = 0.0, 1.0
    return g.to(torch.float32)


_SCHEDULES = {"linear": make_linear_schedule, "cosine": make_cosine_schedule}


def make_schedule(kind: str, n_steps: int) -> torch.Tensor:
    """Build a schedule by name (``"linear"`` or ``"cosine"``)."""
    try:
        return _SCHEDULES[kind](n_steps)
    except KeyError:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {sorted(_SCHEDULES)}") from None


def degrade(x0: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """D(x0, t) = x0 + gamma_t * (y - x0) = (1 - gamma_t) * x0 + gamma_t * y.

    ``x0`` and ``y`` are ``(batch, channel, time)``; ``gamma`` is a float or a ``(batch,)`` tensor (one level per
    window). Returns a tensor like ``x0``.
    """
    if isinstance(gamma, torch.Tensor) and gamma.ndim == 1:
        gamma = gamma.to(x0.dtype).view(-1, 1, 1)
    # Written as a convex combination so that both endpoints are exact in floating point.
    return (1 - gamma) * x0 + gamma * y


def normalize_window(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove each channel's mean and divide by the 3-component standard deviation of the noisy window.

    ``y``: ``(batch, channel, time)`` in counts. Returns ``(y_norm, mean, scale)`` with ``mean`` of shape
    ``(batch, channel, 1)`` and ``scale`` of shape ``(batch, 1, 1)``. All-zero windows get ``scale = 1`` and stay
    zero, so nothing divides by zero.
    """
    mean = y.mean(dim=-1, keepdim=True)
    yc = y - mean
    scale = yc.pow(2).mean(dim=(-1, -2), keepdim=True).sqrt()
    scale = torch.where(scale > SCALE_FLOOR, scale, torch.ones_like(scale))
    return yc / scale, mean, scale


def denormalize_window(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize_window`: ``x * scale + mean``, back in counts."""
    return x * scale + mean
