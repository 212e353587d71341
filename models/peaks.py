"""The pick rule: which samples of a phase-probability curve are picks. One rule for the live pick
detector (``streamer.picks``) and the science core's window evaluation (``models.picker.find_picks``).

A pick of a phase at sample ``i`` is a local maximum of the probability ``p`` over
``[i - d, i + d]`` with ``p[i] >= threshold``: strictly greater than the ``d`` samples before it and
not smaller than the ``d`` after (on a plateau the first sample wins), and those ``d`` samples exist
on both sides. A maximum closer than ``d`` to either end of the array is shaped by the edge (of a
window, of a stitching run, of a drained tail), not by data on both sides, and is never a pick
(:func:`edge_candidates` lists them, for counting).

:func:`confirm_p` is the pick policy on denoised output: a P pick there needs PhaseNet on the raw input to
confirm it, or a higher probability of its own. One rule (:func:`cap_unconfirmed_p`) for the live pick detector
(on the stacked curves, live and offline) and for ``coldstream evaluate`` (on single windows).

Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CONFIRM_WITHIN_S",
    "GAP_MARGIN_S",
    "cap_unconfirmed_p",
    "confirm_p",
    "confirming_samples",
    "edge_candidates",
    "local_peaks",
]

CONFIRM_WITHIN_S = 0.5
"""A raw-input P probability this close (s) to a denoised-output sample confirms it (the pick tolerance)."""

GAP_MARGIN_S = 0.5
"""Raw samples this close (s) to a gap in the data confirm nothing (:func:`confirming_samples`)."""


def confirm_p(
    probs: np.ndarray,
    raw_probs: np.ndarray,
    p_threshold: float,
    unconfirmed_p_threshold: float,
    within_samples: int,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """The denoised output's phase probabilities ``probs`` ``(..., 3, N)`` (P first), with the P row kept below
    ``p_threshold`` wherever a pick would stand on the denoised output alone.

    A sample is *confirmed* where PhaseNet on the raw input (``raw_probs``, same shape, same windows) reaches
    ``p_threshold`` within ``within_samples`` of it, counting only raw samples marked in ``valid`` (``(..., N)``;
    default: all). Confirmed samples, and unconfirmed ones of at least ``unconfirmed_p_threshold``, keep their
    probability; every other sample's P is capped just below ``p_threshold`` (:func:`cap_unconfirmed_p`). So a
    P pick at ``p_threshold`` is one the raw input confirms or one the output is sure of, with PhaseNet's own
    probability. On single windows (``coldstream evaluate``) this is the whole rule; the live pick detector
    applies :func:`cap_unconfirmed_p` to the stacked curves of overlapping windows instead, the raw P (zero
    where not ``valid``) stacked beside the output's, so the rule holds for the stack as it does per window.
    S and noise rows are unchanged. Returns a new array.
    """
    probs = np.asarray(probs)
    raw = np.asarray(raw_probs)
    if probs.shape != raw.shape:
        raise ValueError(f"probabilities {probs.shape} and raw probabilities {raw.shape} differ in shape")
    out = probs.copy()
    raw_p = raw[..., 0, :]
    if valid is not None:
        raw_p = np.where(np.asarray(valid, bool), raw_p, 0.0)
    out[..., 0, :] = cap_unconfirmed_p(out[..., 0, :], raw_p, p_threshold, unconfirmed_p_threshold, within_samples)
    return out


def confirming_samples(mask: np.ndarray, margin_samples: int) -> np.ndarray:
    """Which raw samples of windows with data ``mask`` (``(..., C, N)``) may confirm a pick: ``(..., N)`` bool.

    PhaseNet answers zero fill with P of its own, inside a gap and at its edges (measured with PhaseNet
    'original' on real quiet noise with a 1 s gap: 0.66 at the end of a Z-only gap, 0.38 two samples after a
    gap on every component). So a sample confirms only where every component that has data in the window has
    data, and no sample lacking it lies within ``margin_samples`` (a window's own ends are not gaps)."""
    m = np.asarray(mask, bool)
    has = m.any(axis=-1, keepdims=True)
    bad = np.asarray(~(m | ~has).all(axis=-2))
    k = max(0, int(margin_samples))
    if not k or not bad.any():
        return ~bad
    n = bad.shape[-1]
    c = np.cumsum(np.pad(bad.astype(np.int32), [(0, 0)] * (bad.ndim - 1) + [(1, 0)]), axis=-1)
    lo = np.clip(np.arange(n) - k, 0, n)
    hi = np.clip(np.arange(n) + k + 1, 0, n)
    return np.asarray((c[..., hi] - c[..., lo]) == 0)


def cap_unconfirmed_p(
    p: np.ndarray, raw_p: np.ndarray, p_threshold: float, unconfirmed_p_threshold: float, within_samples: int
) -> np.ndarray:
    """The P curve ``p`` (``(..., N)``) with every sample capped just below ``p_threshold`` where the raw P curve
    ``raw_p`` (same shape; zero where it must not confirm) stays below ``p_threshold`` within ``within_samples``
    of it and ``p`` itself is below ``unconfirmed_p_threshold``. The ends of the last axis are treated as the
    ends of the data (the nearest raw sample stands for those beyond). A threshold at or below ``p_threshold``
    switches the rule off. Returns a new array."""
    p = np.array(p, copy=True)
    if unconfirmed_p_threshold <= p_threshold:
        return p
    raw_p = np.asarray(raw_p)
    if raw_p.shape != p.shape:
        raise ValueError(f"P curve {p.shape} and raw P curve {raw_p.shape} differ in shape")
    w = max(0, int(within_samples))
    if w and raw_p.shape[-1]:
        from numpy.lib.stride_tricks import sliding_window_view

        padded = np.pad(raw_p, [(0, 0)] * (raw_p.ndim - 1) + [(w, w)], mode="edge")
        raw_p = sliding_window_view(padded, 2 * w + 1, axis=-1).max(axis=-1)
    weak = (raw_p < p_threshold) & (p < unconfirmed_p_threshold)
    below = np.nextafter(np.asarray(p_threshold, p.dtype), np.asarray(0, p.dtype))
    p[weak] = np.minimum(p[weak], below)
    return p


def local_peaks(p: np.ndarray, threshold: float, distance: int, lo: int = 0, hi: int | None = None) -> list[int]:
    """Indices ``i`` in ``[lo, hi)`` (default: the whole array) that are picks of the 1-D curve ``p``
    (module docstring), ascending. ``distance`` is ``d`` in samples (at least 1)."""
    p = np.asarray(p)
    n = p.shape[-1]
    hi = n if hi is None else min(hi, n)
    d = max(1, int(distance))
    return [i for i in _maxima(p, threshold, d, lo, hi) if d <= i < n - d]


def edge_candidates(p: np.ndarray, threshold: float, distance: int, lo: int = 0, hi: int | None = None) -> list[int]:
    """Maxima in ``[lo, hi)`` that only the array's edge makes local maxima (within ``d`` of an
    end): what :func:`local_peaks` refuses."""
    p = np.asarray(p)
    n = p.shape[-1]
    hi = n if hi is None else min(hi, n)
    d = max(1, int(distance))
    return [i for i in _maxima(p, threshold, d, lo, hi) if not d <= i < n - d]


def _maxima(p: np.ndarray, threshold: float, d: int, lo: int, hi: int) -> list[int]:
    n = p.shape[-1]
    out: list[int] = []
    for i in (int(j) + lo for j in np.flatnonzero(p[lo:hi] >= threshold)):
        left = p[max(0, i - d) : i]
        right = p[i + 1 : min(n, i + d + 1)]
        if (left.size and left.max() >= p[i]) or (right.size and right.max() > p[i]):
            continue
        out.append(i)
    return out
