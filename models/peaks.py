"""The pick rule: which samples of a phase-probability curve are picks. One rule for the live pick
detector (``streamer.picks``) and the science core's window evaluation (``models.picker.find_picks``).

A pick of a phase at sample ``i`` is a local maximum of the probability ``p`` over
``[i - d, i + d]`` with ``p[i] >= threshold``: strictly greater than the ``d`` samples before it and
not smaller than the ``d`` after (on a plateau the first sample wins), and those ``d`` samples exist
on both sides. A maximum closer than ``d`` to either end of the array is shaped by the edge (of a
window, of a stitching run, of a drained tail), not by data on both sides, and is never a pick
(:func:`edge_candidates` lists them, for counting).

Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["edge_candidates", "local_peaks"]


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
