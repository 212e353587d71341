"""The absolute sample grid: integer sample indices since the epoch, and their times in nanoseconds.

A channel at rate ``r`` has sample ``i`` at ``i / r`` seconds since 1970-01-01T00:00:00Z. Windows
start at multiples of the stride on that grid, so every replay, restart and offline run cuts the
same windows. Rates are handled as exact fractions and the conversions use integer arithmetic
(float maths on ~1e20 ns*Hz products loses hundreds of ns). Both the live service (ring buffers,
windowing, stitching) and the science core use these functions; there is no second copy.

Pure code, no I/O.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

__all__ = ["MAX_RATE_HZ", "NS_PER_S", "exact_rate", "index_of", "sample_index", "sample_time_ns", "time_of"]

NS_PER_S = 1_000_000_000
MAX_RATE_HZ = 10_000.0
NOMINAL_RATE_TOLERANCE = 50e-6  # relative; a measured rate this close to an integer is that integer


@lru_cache(maxsize=4096)
def exact_rate(rate_hz: float) -> Fraction | None:
    """The sampling rate as an exact fraction (``None`` when absurd: not finite, ``<= 0`` or
    above ``MAX_RATE_HZ``). Rates within ``NOMINAL_RATE_TOLERANCE`` (50 ppm) of an integer are
    taken as that integer: header float noise, and the measured rates that digitisers write in
    blockette 100 (a few ppm off nominal; each record carries its own start time, so the
    difference never accumulates beyond one record: 0.026 samples for a 512-sample record)."""
    if not math.isfinite(rate_hz) or rate_hz <= 0 or rate_hz > MAX_RATE_HZ:
        return None
    nearest = round(rate_hz)
    if nearest > 0 and abs(rate_hz - nearest) <= NOMINAL_RATE_TOLERANCE * rate_hz:
        return Fraction(nearest)
    return Fraction(rate_hz).limit_denominator(10_000)


def index_of(t_ns: int, rate: Fraction) -> int:
    """Nearest absolute sample index of time ``t_ns`` (ns since the epoch) at ``rate`` (half up)."""
    p, q = rate.numerator, rate.denominator
    return (2 * t_ns * p + q * NS_PER_S) // (2 * q * NS_PER_S)


def time_of(index: int, rate: Fraction) -> int:
    """Time (ns since the epoch, rounded) of absolute sample ``index`` at ``rate``."""
    p, q = rate.numerator, rate.denominator
    return (2 * index * q * NS_PER_S + p) // (2 * p)


def _rate(sampling_rate_hz: float) -> Fraction:
    rate = exact_rate(float(sampling_rate_hz))
    if rate is None:
        raise ValueError(f"sampling rate {sampling_rate_hz!r} Hz is not usable")
    return rate


def sample_index(time_ns: int, sampling_rate_hz: float) -> int:
    """The absolute sample index of ``time_ns`` (nearest sample of the grid anchored at the epoch)."""
    return index_of(int(time_ns), _rate(sampling_rate_hz))


def sample_time_ns(index: int, sampling_rate_hz: float) -> int:
    """The time in ns since the epoch of absolute sample ``index``."""
    return time_of(int(index), _rate(sampling_rate_hz))
