"""Stitching overlapping model windows into one continuous trace per channel (pure numpy).

Windows lie on an absolute sample grid: window ``k`` starts at sample ``offset + k * stride`` where a
sample index counts samples since the epoch (``start_ns = index * 1e9 / sampling_rate_hz``). A
:class:`Stitcher` takes the model output of each window (``(C, N)`` float32, any channel meaning:
denoised ENZ counts or PhaseNet P/S/noise probabilities) and returns :class:`Segment` objects that are
**final**: no window that may still arrive can change them. Every covered sample is emitted exactly
once, in time order.

Modes
-----
``overlap_add``
    Each window is weighted by a fixed taper and the stack is normalised by the sum of weights of the
    windows that cover a sample (masked samples excluded). A constant-gain identity model therefore
    reproduces its input exactly, and the blend between windows is smooth, so there is no step at
    joins. The taper ``"hann"`` is ``sin^2(pi (i + 1/2) / N)``: strictly positive, so the first and
    last window of a run still reconstruct their edges; ``"boxcar"`` gives SeisBench's ``avg`` stacking.
    A sample is final once the window starting after it can no longer touch it: after adding window
    ``W`` (and all earlier ones), samples before ``W + S`` are final. Latency cost: the newest
    ``N - S`` samples of each window wait for the next windows (20 s for N = 3000, S = 1000 at 100 Hz).
``centre_crop``
    Each sample takes the value of the one window whose centre is nearest (ties go to the earlier
    window; masked samples lose against valid ones), so no blending at all. Samples up to
    ``W + (N - 1 + S) // 2`` are final after window ``W`` (a hole in a channel, masked in every window
    so far, waits for the windows after ``W`` that cover it: one may hold it as valid data): the newest
    ``N - (N - 1 + S) // 2 - 1`` samples wait (about ``(N - S) / 2``, 10 s for N = 3000, S = 1000 at
    100 Hz), half the overlap-add cost, but each join is a hard switch between two model outputs.

Either way the output also waits for a window to be complete (its newest sample arrived) and for the
window stride; see ``docs/redis-schema.md`` for the end-to-end figures.

Missing and late windows
------------------------
Windows the windowing stage skipped (gaps) leave holes: what the stitcher has is emitted and a later
window restarts the run cleanly (its head reconstructs from it alone). With ``max_out_of_order=0`` the
caller feeds windows in order and any jump in window index means the windows in between were skipped.
With ``max_out_of_order=K`` a window may arrive up to ``K`` strides late (scale-out workers finish out
of order); the stitcher then holds output until the missing windows arrive, ``K`` newer windows have
arrived, or :meth:`Stitcher.skip` says a window will never come. This holds for the first window of
a run too (up to ``K`` earlier windows may still come), so output starts ``K`` strides later. Windows older than what was already
emitted are dropped and counted in ``late_windows``; a repeated window is ignored (``duplicate_windows``).
A window whose start is off the grid phase (the grid changed) flushes everything and starts a new run.

Limitations: one stitcher serves one station; memory is ``O(N)`` samples per channel plus the windows
held for reordering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from streamer.errors import StreamerError
from models.grid import sample_index, sample_time_ns
from streamer.records import Window

StitchMode = Literal["overlap_add", "centre_crop"]
TaperName = Literal["hann", "boxcar"]
MaskRows = Literal["per_channel", "any"]

_NO_STEPS = np.iinfo(np.int32).max
_KEY_MAX = np.iinfo(np.int64).max
_MASKED_KEY = 1 << 40  # centre_crop: added to the priority of a masked sample (any valid one wins)


class StitchError(StreamerError, ValueError):
    """A window does not fit the stitcher (wrong shape, bad parameters)."""


def make_taper(window_samples: int, taper: TaperName = "hann") -> np.ndarray:
    """Window weights, ``(N,)`` float64, strictly positive everywhere."""
    if taper == "boxcar":
        return np.ones(window_samples, dtype=np.float64)
    if taper == "hann":
        i = np.arange(window_samples, dtype=np.float64)
        return np.sin(np.pi * (i + 0.5) / window_samples) ** 2
    raise StitchError(f"unknown taper {taper!r}")


@dataclass
class Segment:
    """A final, contiguous piece of stitched output of one station.

    ``data`` is ``(C, n)`` float32 (0 where masked); ``mask`` ``(C, n)`` bool, True where at least one
    window had valid data for the sample. ``start_sample`` is the absolute sample index of ``data[:, 0]``.
    ``steps_min``/``steps_max`` are the sampler steps of the windows that contributed (0 when unknown),
    ``newest_arrival_ns`` the latest arrival time among those windows (0 when unknown).
    """

    station_id: str
    start_sample: int
    sampling_rate_hz: float
    data: np.ndarray
    mask: np.ndarray
    steps_min: int = 0
    steps_max: int = 0
    newest_arrival_ns: int = 0
    channels: tuple[str, ...] = ()
    component_order: str = "ENZ"

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[-1])

    @property
    def end_sample(self) -> int:
        """Absolute index just after the last sample."""
        return self.start_sample + self.n_samples

    @property
    def start_ns(self) -> int:
        return sample_time_ns(self.start_sample, self.sampling_rate_hz)

    @property
    def end_ns(self) -> int:
        """Time just after the last sample."""
        return sample_time_ns(self.end_sample, self.sampling_rate_hz)


@dataclass
class _Held:
    data: np.ndarray
    mask: np.ndarray | None
    steps: int
    arrival_ns: int


@dataclass
class _Buffer:
    """Accumulators over absolute samples ``[start, start + length)``."""

    start: int
    channels: int
    length: int = 0
    num: np.ndarray = field(init=False)
    den: np.ndarray = field(init=False)  # overlap_add: weight sum; centre_crop: unused
    key: np.ndarray = field(init=False)  # centre_crop: priority of the current value (lower wins)
    covered: np.ndarray = field(init=False)
    steps_min: np.ndarray = field(init=False)
    steps_max: np.ndarray = field(init=False)
    arrival: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c = self.channels
        self.num = np.zeros((c, 0), np.float64)
        self.den = np.zeros((c, 0), np.float64)
        self.key = np.zeros((c, 0), np.int64)
        self.covered = np.zeros(0, bool)
        self.steps_min = np.zeros(0, np.int32)
        self.steps_max = np.zeros(0, np.int32)
        self.arrival = np.zeros(0, np.int64)

    @property
    def end(self) -> int:
        return self.start + self.length

    def extend_to(self, end: int) -> None:
        extra = end - self.end
        if extra <= 0:
            return
        c = self.channels
        self.num = np.concatenate([self.num, np.zeros((c, extra))], axis=1)
        self.den = np.concatenate([self.den, np.zeros((c, extra))], axis=1)
        self.key = np.concatenate([self.key, np.full((c, extra), _KEY_MAX, np.int64)], axis=1)
        self.covered = np.concatenate([self.covered, np.zeros(extra, bool)])
        self.steps_min = np.concatenate([self.steps_min, np.full(extra, _NO_STEPS, np.int32)])
        self.steps_max = np.concatenate([self.steps_max, np.zeros(extra, np.int32)])
        self.arrival = np.concatenate([self.arrival, np.zeros(extra, np.int64)])
        self.length = end - self.start

    def drop_before(self, index: int) -> None:
        """Forget samples before ``index`` (moving ``start`` forward, possibly past ``end``)."""
        if index <= self.start:
            return
        cut = min(index - self.start, self.length)
        self.num = self.num[:, cut:]
        self.den = self.den[:, cut:]
        self.key = self.key[:, cut:]
        self.covered = self.covered[cut:]
        self.steps_min = self.steps_min[cut:]
        self.steps_max = self.steps_max[cut:]
        self.arrival = self.arrival[cut:]
        self.length -= cut
        self.start = index if self.length == 0 else self.start + cut


class Stitcher:
    """Stitches one station's overlapping windows into final :class:`Segment` objects.

    ``window_samples`` N and ``stride_samples`` S (``0 < S <= N``) in samples; ``channels`` C rows per
    window. ``station_id``, ``sampling_rate_hz``, ``channel_names`` and ``component_order`` are copied
    into the segments. See the module docstring for modes, finality and reordering.
    """

    def __init__(
        self,
        window_samples: int,
        stride_samples: int,
        mode: StitchMode = "overlap_add",
        *,
        channels: int = 3,
        taper: TaperName = "hann",
        max_out_of_order: int = 0,
        station_id: str = "",
        sampling_rate_hz: float = 100.0,
        channel_names: tuple[str, ...] = (),
        component_order: str = "ENZ",
        mask_rows: MaskRows = "per_channel",
    ) -> None:
        if window_samples <= 0 or not 0 < stride_samples <= window_samples:
            raise StitchError(f"need 0 < stride_samples ({stride_samples}) <= window_samples ({window_samples})")
        if mode not in ("overlap_add", "centre_crop"):
            raise StitchError(f"unknown stitch mode {mode!r}")
        if max_out_of_order < 0:
            raise StitchError("max_out_of_order must be >= 0")
        self.window_samples = window_samples
        self.stride_samples = stride_samples
        self.mode: StitchMode = mode
        self.channels = channels
        self.max_out_of_order = max_out_of_order
        self.station_id = station_id
        self.sampling_rate_hz = sampling_rate_hz
        self.channel_names = channel_names
        self.component_order = component_order
        if mask_rows not in ("per_channel", "any"):
            raise StitchError(f"unknown mask_rows {mask_rows!r}")
        self.mask_rows: MaskRows = mask_rows
        self.taper = make_taper(window_samples, taper)
        # centre_crop priority within a window: 2*|2i - (N-1)| (+1 before the centre, so ties
        # between two windows go to the earlier one, independent of arrival order)
        i = np.arange(window_samples, dtype=np.int64)
        twice_off = 2 * i - (window_samples - 1)
        self._crop_key = 2 * np.abs(twice_off) + (twice_off < 0)
        # samples still changeable after window W: W + hold onwards
        if mode == "overlap_add":
            self.hold_samples = stride_samples
        else:
            self.hold_samples = (window_samples - 1 + stride_samples) // 2 + 1
        self.late_windows = 0
        self.duplicate_windows = 0
        self._offset: int | None = None  # grid phase: start % stride
        self._k_done: int | None = None  # every window index <= this is accounted for
        self._pending: dict[int, _Held] = {}
        self._final_end: int | None = None  # samples before this are final
        self._buf: _Buffer | None = None

    # ------------------------------------------------------------------ public API

    @property
    def latency_samples(self) -> int:
        """Samples of the newest window held back until later windows arrive (``N - hold``)."""
        return self.window_samples - self.hold_samples

    @property
    def final_end_sample(self) -> int | None:
        """Absolute index before which everything has been emitted (None before the first window)."""
        return self._final_end

    def add(
        self,
        start_sample: int,
        data: np.ndarray,
        weight_mask: np.ndarray | None = None,
        *,
        steps: int = 0,
        arrival_ns: int = 0,
    ) -> list[Segment]:
        """Add one window's output; return the segments that became final (possibly none).

        ``data`` ``(C, N)`` float; ``weight_mask`` ``(C, N)`` bool, False where the input was not real
        data (those samples get no weight). ``steps`` are the sampler steps used for this window.
        """
        data = np.asarray(data)
        if data.shape != (self.channels, self.window_samples):
            raise StitchError(f"window shape {data.shape} != {(self.channels, self.window_samples)}")
        if weight_mask is not None:
            weight_mask = np.asarray(weight_mask, dtype=bool)
            if weight_mask.shape != data.shape:
                raise StitchError(f"mask shape {weight_mask.shape} != data shape {data.shape}")
        out: list[Segment] = []
        if self._offset is not None and start_sample % self.stride_samples != self._offset:
            out.extend(self.flush())
            self._reset()
        if self._offset is None:
            self._offset = start_sample % self.stride_samples
        k = (start_sample - self._offset) // self.stride_samples
        if self._k_done is None:
            # the first window of a run may itself have overtaken up to K earlier ones
            self._k_done = k - 1 - self.max_out_of_order
            self._final_end = self._start_of(self._k_done + 1)
        if k <= self._k_done:
            self.late_windows += 1  # its index was given up (or stitched) already
            return out
        if k in self._pending:
            self.duplicate_windows += 1
            return out
        self._pending[k] = _Held(data, weight_mask, int(steps), int(arrival_ns))
        out.extend(self._advance())
        return out

    def add_window(self, window: Window, output: np.ndarray | None = None, *, steps: int = 0) -> list[Segment]:
        """Add the model ``output`` ``(C, N)`` for ``window`` (default: the window's own data), weighted
        by the window's mask (row by row, or with ``mask_rows="any"`` a sample counts where any
        component was real data: use that for PhaseNet probabilities, which a single missing component
        does not invalidate); ``window.channels`` become the segments' channel names."""
        if window.channels and not self.channel_names:
            self.channel_names = tuple(window.channels)
        start = sample_index(window.start_ns, self.sampling_rate_hz)
        mask: np.ndarray | None = np.asarray(window.mask, dtype=bool)
        if mask is not None and self.mask_rows == "any":
            # outputs computed from all components together (picker probabilities): a sample is
            # usable where any component had real data
            mask = np.broadcast_to(mask.any(axis=0), (self.channels, mask.shape[-1]))
        if mask is not None and mask.shape != (self.channels, self.window_samples):
            mask = None
        return self.add(
            start,
            window.data if output is None else output,
            mask,
            steps=steps,
            arrival_ns=window.newest_arrival_ns,
        )

    def skip(self, start_sample: int) -> list[Segment]:
        """Declare that the window starting at ``start_sample`` will never arrive (it was skipped)."""
        if self._offset is None or self._k_done is None:
            return []
        if start_sample % self.stride_samples != self._offset:
            return []
        k = (start_sample - self._offset) // self.stride_samples
        if k <= self._k_done or k in self._pending:
            return []
        self._pending[k] = _Held(np.empty(0), None, 0, 0)  # a tombstone: accounted, no data
        return self._advance()

    def flush(self) -> list[Segment]:
        """Emit everything held (shutdown, or the station went quiet); later windows start a new run.

        Windows held for reordering are stitched first, treating the missing ones as skipped.
        """
        out: list[Segment] = []
        if self._k_done is None:
            return out
        while self._pending:
            out.extend(self._account(min(self._pending)))
        if self._buf is not None:
            out.extend(self._emit_until(self._buf.end))
        return out

    # ------------------------------------------------------------------ internals

    def _reset(self) -> None:
        self._offset = None
        self._k_done = None
        self._pending.clear()
        self._final_end = None
        self._buf = None

    def _start_of(self, k: int) -> int:
        assert self._offset is not None
        return self._offset + k * self.stride_samples

    def _advance(self) -> list[Segment]:
        out: list[Segment] = []
        assert self._k_done is not None
        while self._pending:
            nxt = self._k_done + 1
            if nxt in self._pending:
                out.extend(self._account(nxt))
                continue
            newest = max(self._pending)
            if newest - nxt <= self.max_out_of_order:
                break  # the missing window may still come
            # a window more than K strides behind the newest one is given up as skipped
            out.extend(self._account(min(min(self._pending), newest - self.max_out_of_order - 1)))
        return out

    def _account(self, k: int) -> list[Segment]:
        """Account for every window up to ``k``: windows before ``k`` were skipped; ``k`` is stitched
        if held. Then emit what became final."""
        assert self._k_done is not None and self._final_end is not None
        if k - 1 > self._k_done:
            # skipped windows: everything before the next window that will be stitched is final
            self._k_done = k - 1
            self._final_end = max(self._final_end, self._start_of(k))
        held = self._pending.pop(k, None)
        start = self._start_of(k)
        out = self._emit_until(self._final_end)
        if held is not None and held.data.size:
            self._accumulate(start, held)
            self._k_done = k
            self._final_end = max(self._final_end, start + self._final_samples(start, held))
        else:
            self._k_done = k
            self._final_end = max(self._final_end, self._start_of(k + 1))
        out.extend(self._emit_until(self._final_end))
        return out

    def _final_samples(self, start: int, held: _Held) -> int:
        """Samples from ``start`` on that are final once the window ``held`` starting there is
        stitched: ``hold_samples``, but in ``centre_crop`` mode not past a sample from ``start +
        stride`` on that a channel with data in this window holds only as masked (a hole): the next
        windows may still bring valid data there, and a valid sample wins whatever its distance to
        the centre. A channel without any data in the window (a missing component) holds nothing back."""
        buf = self._buf
        if self.mode != "centre_crop" or buf is None or self.hold_samples <= self.stride_samples:
            return self.hold_samples
        valid = np.isfinite(held.data) if held.mask is None else held.mask & np.isfinite(held.data)
        lo = max(start + self.stride_samples, buf.start) - buf.start
        hi = min(start + self.hold_samples, buf.end) - buf.start
        masked = np.flatnonzero((buf.key[valid.any(axis=1), lo:hi] >= _MASKED_KEY).any(axis=0))
        return self.hold_samples if masked.size == 0 else buf.start + lo + int(masked[0]) - start

    def _accumulate(self, start: int, held: _Held) -> None:
        assert self._final_end is not None
        n = self.window_samples
        if self._buf is None or self._buf.length == 0:
            self._buf = _Buffer(max(start, self._final_end), self.channels)
        buf = self._buf
        lo = max(start, buf.start)  # samples before buf.start are final already
        hi = start + n
        if hi <= lo:
            return
        buf.extend_to(hi)
        w0, w1 = lo - start, hi - start
        b0, b1 = lo - buf.start, hi - buf.start
        x = held.data[:, w0:w1].astype(np.float64)
        valid = np.ones_like(x, dtype=bool) if held.mask is None else held.mask[:, w0:w1]
        x = np.where(valid & np.isfinite(x), x, 0.0)
        valid = valid & np.isfinite(held.data[:, w0:w1])
        if self.mode == "overlap_add":
            w = np.where(valid, self.taper[w0:w1], 0.0)
            buf.num[:, b0:b1] += w * x
            buf.den[:, b0:b1] += w
        else:
            # invalid samples only win where no valid sample exists
            key = self._crop_key[w0:w1] + np.where(valid, 0, _MASKED_KEY)
            better = key < buf.key[:, b0:b1]
            buf.num[:, b0:b1] = np.where(better, x, buf.num[:, b0:b1])
            buf.den[:, b0:b1] = np.where(better, valid.astype(np.float64), buf.den[:, b0:b1])
            buf.key[:, b0:b1] = np.where(better, key, buf.key[:, b0:b1])
        buf.covered[b0:b1] = True
        buf.steps_min[b0:b1] = np.minimum(buf.steps_min[b0:b1], held.steps)
        buf.steps_max[b0:b1] = np.maximum(buf.steps_max[b0:b1], held.steps)
        buf.arrival[b0:b1] = np.maximum(buf.arrival[b0:b1], held.arrival_ns)

    def _emit_until(self, end: int) -> list[Segment]:
        buf = self._buf
        if buf is None or buf.length == 0 or end <= buf.start:
            return []
        stop = min(end, buf.end) - buf.start
        covered = buf.covered[:stop]
        segments: list[Segment] = []
        if covered.any():
            edges = np.flatnonzero(np.diff(np.concatenate([[False], covered, [False]]).astype(np.int8)))
            for a, b in zip(edges[::2], edges[1::2]):
                segments.append(self._segment(buf, int(a), int(b)))
        buf.drop_before(buf.start + stop)
        if buf.length == 0:
            buf.start = max(buf.start, end)
        return segments

    def _segment(self, buf: _Buffer, a: int, b: int) -> Segment:
        if self.mode == "overlap_add":
            den = buf.den[:, a:b]
            mask = den > 0
            data = np.divide(buf.num[:, a:b], den, out=np.zeros_like(den), where=mask)
        else:
            mask = buf.den[:, a:b] > 0
            data = np.where(mask, buf.num[:, a:b], 0.0)
        smin = int(buf.steps_min[a:b].min())
        return Segment(
            station_id=self.station_id,
            start_sample=buf.start + a,
            sampling_rate_hz=self.sampling_rate_hz,
            data=data.astype(np.float32),
            mask=mask,
            steps_min=0 if smin == _NO_STEPS else smin,
            steps_max=int(buf.steps_max[a:b].max()),
            newest_arrival_ns=int(buf.arrival[a:b].max()),
            channels=self.channel_names,
            component_order=self.component_order,
        )
