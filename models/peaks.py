"""The pick rule: which samples of a phase-probability curve are picks. One rule for the live pick
detector (``streamer.picks``) and the science core's window evaluation (``models.picker.find_picks``).

A pick of a phase at sample ``i`` is a local maximum of the probability ``p`` over
``[i - d, i + d]`` with ``p[i] >= threshold``: strictly greater than the ``d`` samples before it and
not smaller than the ``d`` after (on a plateau the first sample wins). Samples outside the array are
no context: at the array's edges the rule judges with what there is.

Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["local_peaks"]


def local_peaks(p: np.ndarray, threshold: float, distance: int, lo: int = 0, hi: int | None = None) -> list[int]:
    """Indices ``i`` in ``[lo, hi)`` (default: the whole array) that are picks of the 1-D curve ``p``
    (module docstring), ascending. ``distance`` is ``d`` in samples (at least 1)."""
    p = np.asarray(p)
    n = p.shape[-1]
    hi = n if hi is None else min(hi, n)
    d = max(1, int(distance))
    out: list[int] = []
    for i in (int(j) + lo for j in np.flatnonzero(p[lo:hi] >= threshold)):
        left = p[max(0, i - d) : i]
        right = p[i + 1 : min(n, i + d + 1)]
        if (left.size and left.max() >= p[i]) or (right.size and right.max() > p[i]):
            continue
        out.append(i)
    return out
