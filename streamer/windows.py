"""Sliding model windows cut from station buffers on an absolute time grid.

Pure code: no sockets, no asyncio, no logging, no metrics.

Grid. Window starts are model-grid sample indices ``k * stride_samples`` (``stride_samples =
round(stride_s * model rate)``), i.e. times ``k * stride_s`` since the epoch, whatever the
arrival order or the moment the service started: two replays of the same data give the same
windows (same ``window_id``). A station's first window is the first grid start at or after its
earliest sample (until the first window is decided, a late-arriving earlier block moves the first
window back); after that starts only move forward, one stride at a time, so no window is emitted
twice. Windows are ``spec.window_samples`` long, components in ``spec.component_order``.

When a window is decided (in grid order; a window waits while the one before it waits):

- *complete*: all components exist and hold valid data at every sample of the window (for a
  resampled channel: also as far beyond both ends as the anti-alias filter reaches): decided at
  once. During a station's first ``windows.late_grace_s`` (live path) a group missing a component
  is not complete either, since a backlog served channel by channel brings the others moments
  later; after that a station with fewer components (Z only) is complete with what it has;
- *late*: the station's newest sample is at least ``lag`` past the window end, with
  ``lag = max(stride_s, 2 x the longest block seen on the station)``, capped at
  ``horizon_s - window`` so the window is still in the ring: decided with whatever arrived (an
  out-of-order record, or another component's record of the same interval, has until then to
  fill a hole), but only once it has been late for ``windows.late_grace_s`` of monotonic time
  (the live path; a finished recording has no grace): a server that sends a backlog channel by
  channel (ringserver's ring is in scan order: all of E, then N, then Z) delivers the other
  components within that grace, so their windows are complete, not zero-filled or skipped; a
  window about to leave the ring is decided at once;
- *flush* (``flush=True``, the caller saw no data from the station for ``lag`` of wall-clock
  time): windows ending at or before the station's newest sample are decided.

Deciding a window (per component the station has; "run" = consecutive masked samples):

1. no valid sample of the component in the window, while other components have some: the
   component is missing: ``single_component = "zero_fill"`` fills it with zeros (mask False) and
   lists it in ``meta["zero_filled_components"]``; ``"skip"`` skips the window ("missing_component").
   Components the station does not have at all are treated the same way.
2. no valid sample in any component: skipped ("gap").
3. a run longer than ``max_zero_fill_gap_s`` (leading and trailing runs included): skipped
   ("gap"): long gaps split the stream, every window overlapping one is skipped. Shorter runs
   stay zero-filled and masked.
4. valid fraction over the components with data below ``min_valid_fraction``: skipped
   ("low_valid").

Orientation: with an inventory (``inventory.stationxml``) that gives every channel of the window
an azimuth and a dip, the three channels are rotated to true Z, N, E (``models.components``;
``meta["rotated_to_zne"]``); without one, the component table's mapping stands (1 -> N, 2 -> E).

Channels at another rate are cut with a margin, resampled with ``scipy.signal.resample_poly``
(Kaiser-windowed anti-alias FIR) after removing the mean of the valid samples, and cropped; a
resampled sample is valid only when every native sample under the filter's half-length is valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from models.components import rotate_to_zne
from models.spec import ModelSpec
from streamer.buffers import ChannelBuffer, StationBuffer, exact_rate, index_of, time_of
from streamer.config import BufferSettings, ConfigError, WindowSettings
from streamer.inventory import Inventory
from streamer.records import NS_PER_S, Window

__all__ = ["Skipped", "WindowBatch", "Windower", "longest_run"]

# resample_poly's default filter has half-length 10 * max(up, down) at the upsampled rate.
_RESAMPLE_HALF_LEN = 10


@dataclass(frozen=True)
class Skipped:
    """A grid window that was decided but not emitted."""

    station_id: str
    start_ns: int
    reason: str  # "gap", "missing_component", "low_valid"


@dataclass
class WindowBatch:
    windows: list[Window] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: WindowBatch) -> None:
        self.windows.extend(other.windows)
        self.skipped.extend(other.skipped)


def longest_run(missing: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    if not missing.any():
        return 0
    padded = np.concatenate(([False], missing, [False])).view(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return int((ends - starts).max())


@dataclass
class _Schedule:
    epoch: int
    next_start: int | None = None  # model-grid index of the next window to decide
    decided_any: bool = False
    late_since_ns: int | None = None  # monotonic time the next window was first found late but incomplete
    first_seen_ns: int = 0  # monotonic time the schedule was made (the station's first data)


class Windower:
    """Decides the grid windows of every station (state: one schedule per station)."""

    def __init__(
        self,
        spec: ModelSpec,
        window_settings: WindowSettings,
        buffer_settings: BufferSettings,
        inventory: Inventory | None = None,
    ) -> None:
        self.spec = spec
        self.inventory = inventory
        self.window_settings = window_settings
        self.buffer_settings = buffer_settings
        rate = exact_rate(spec.sampling_rate_hz)
        if rate is None:
            raise ValueError(f"model sampling rate {spec.sampling_rate_hz} is not usable")
        self.rate = rate
        self.window_samples = spec.window_samples
        self.stride_samples = max(1, round(window_settings.stride_s * spec.sampling_rate_hz))
        self.stride_ns = time_of(self.stride_samples, rate)
        self.window_ns = time_of(self.window_samples, rate)
        self.grace_ns = round(window_settings.late_grace_s * NS_PER_S)
        self.max_gap_samples = math.floor(buffer_settings.max_zero_fill_gap_s * spec.sampling_rate_hz + 1e-9)
        self.horizon_ns = round(buffer_settings.horizon_s * NS_PER_S)
        if self.horizon_ns < self.window_ns + self.stride_ns:
            raise ConfigError(
                f"buffers.horizon_s ({buffer_settings.horizon_s:g}) must be at least the window "
                f"({spec.window_s:g} s) plus windows.stride_s ({window_settings.stride_s:g})"
            )
        self._schedules: dict[str, _Schedule] = {}

    def forget(self, station_id: str) -> None:
        self._schedules.pop(station_id, None)

    def lag_ns(self, station: StationBuffer) -> int:
        """How far past a window's end the station's data must be before the window is decided
        without being complete."""
        # capped so that a window is still retained in the ring when it is decided
        return min(max(self.stride_ns, 2 * station.max_block_ns), self.horizon_ns - self.window_ns)

    def next_start_ns(self, station_id: str) -> int | None:
        sched = self._schedules.get(station_id)
        if sched is None or sched.next_start is None:
            return None
        return time_of(sched.next_start, self.rate)

    def collect(self, station: StationBuffer, flush: bool = False, now_ns: int | None = None) -> WindowBatch:
        """Decide every window of ``station`` that is due; returns the emitted and skipped ones.
        ``now_ns`` (monotonic) starts and ends the grace of a late, incomplete window (None: no
        grace, as for a finished recording)."""
        out = WindowBatch()
        sched = self._schedules.get(station.station_id)
        if sched is None or sched.epoch != station.epoch:
            sched = _Schedule(epoch=station.epoch, first_seen_ns=now_ns or 0)
            self._schedules[station.station_id] = sched
        if station.newest_end_ns is None or station.first_start_ns is None:
            return out
        if not sched.decided_any or sched.next_start is None:
            first = index_of(station.first_start_ns, self.rate)
            sched.next_start = -(-first // self.stride_samples) * self.stride_samples
        lag = self.lag_ns(station)
        code = station.active_group(lag)
        if code is None:
            return out
        newest = station.newest_end_ns
        horizon_ns = self.horizon_ns
        start = sched.next_start
        while True:
            start_ns = time_of(start, self.rate)
            end_ns = time_of(start + self.window_samples, self.rate)
            if end_ns > newest - horizon_ns:
                late = newest >= end_ns + lag or (flush and newest >= end_ns)
                # while the station is young (its first grace), a group without all components is
                # not complete: the other components of a first backlog may still come
                young = now_ns is not None and self.grace_ns > 0 and now_ns - sched.first_seen_ns < self.grace_ns
                complete = (not young or len(station.groups[code]) == self.spec.n_components) and self._complete(
                    station, code, start, start_ns, end_ns)
                if not complete:
                    if not late:
                        sched.late_since_ns = None
                        break
                    leaving = newest >= end_ns + horizon_ns - self.window_ns  # about to leave the ring
                    if not flush and not leaving and self.grace_ns and now_ns is not None:
                        if sched.late_since_ns is None:
                            sched.late_since_ns = now_ns
                        if now_ns - sched.late_since_ns < self.grace_ns:
                            break  # other components of a backlog served channel by channel are on the way
                    # the grace is over: the late windows behind this one go at once (one grace per episode)
                else:
                    sched.late_since_ns = None
                window, reason = self._cut(station, code, start, start_ns)
                if window is not None:
                    out.windows.append(window)
                else:
                    out.skipped.append(Skipped(station.station_id, start_ns, reason))
            else:
                # nothing of this window is retained any more (outage or stalled evaluation)
                out.skipped.append(Skipped(station.station_id, start_ns, "gap"))
            start += self.stride_samples
            sched.next_start = start
            sched.decided_any = True
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _complete(self, station: StationBuffer, code: str, start: int, start_ns: int, end_ns: int) -> bool:
        for chan in station.groups[code].values():
            if chan.rate is self.rate or chan.rate == self.rate:
                lo, hi = start, start + self.window_samples
            else:
                # the anti-alias filter reaches this far beyond the window on both sides
                reach = self._filter_reach(chan)
                lo, hi = index_of(start_ns, chan.rate) - reach, index_of(end_ns, chan.rate) + reach
            if not chan.all_valid(lo, hi):
                return False
        return True

    def _filter_reach(self, chan: ChannelBuffer) -> int:
        """Native samples on each side of an output sample that the resampling filter uses."""
        ratio = self.rate / chan.rate
        return math.ceil(_RESAMPLE_HALF_LEN * max(ratio.numerator, ratio.denominator) / ratio.numerator) + 1

    def _cut(self, station: StationBuffer, code: str, start: int, start_ns: int) -> tuple[Window | None, str]:
        n = self.window_samples
        ncomp = self.spec.n_components
        data = np.zeros((ncomp, n), dtype=np.float32)
        mask = np.zeros((ncomp, n), dtype=bool)
        group = station.groups[code]
        codes = station.channel_codes.get(code, {})
        newest_arrival: int | None = None
        with_data: list[int] = []
        for slot, chan in group.items():
            if chan.rate is self.rate or chan.rate == self.rate:
                d, m = chan.read(start, n)
                lo, hi = start, start + n
            else:
                d, m = self._resampled(chan, start_ns)
                lo, hi = index_of(start_ns, chan.rate), index_of(start_ns + self.window_ns, chan.rate)
            data[slot], mask[slot] = d, m
            if m.any():
                with_data.append(slot)
                arr = chan.newest_arrival(lo, hi)
                if arr is not None and (newest_arrival is None or arr > newest_arrival):
                    newest_arrival = arr
        if not with_data or newest_arrival is None:
            return None, "gap"
        rotated = self._rotate(station.station_id, codes, start_ns, data, mask) if len(with_data) == ncomp else False
        filled = [self.spec.component_order[i] for i in range(ncomp) if i not in with_data]
        if filled and self.buffer_settings.single_component == "skip":
            return None, "missing_component"
        for slot in with_data:
            if longest_run(~mask[slot]) > self.max_gap_samples:
                return None, "gap"
        if float(mask[with_data].mean()) < self.window_settings.min_valid_fraction:
            return None, "low_valid"
        channels = tuple(codes.get(i, "") if i in with_data else "" for i in range(ncomp))
        if rotated:  # rotated rows are true Z, N, E whatever the channels were called (as ObsPy's rotate names them)
            channels = tuple(code + comp for comp in self.spec.component_order)
        window = Window(
            station_id=station.station_id,
            start_ns=start_ns,
            sampling_rate_hz=self.spec.sampling_rate_hz,
            data=data,
            mask=mask,
            newest_arrival_ns=newest_arrival,
            channels=channels,
        )
        if filled:
            window.meta["zero_filled_components"] = filled
        if rotated:
            window.meta["rotated_to_zne"] = True
        return window, ""

    def _rotate(
        self, station_id: str, codes: dict[int, str], start_ns: int, data: np.ndarray, mask: np.ndarray
    ) -> bool:
        """Rotate the window's three channels to true Z, N, E in place with the inventory's azimuths
        and dips (valid at ``start_ns``); a sample stays valid only where all three were. False (and
        nothing changed) without an inventory entry for every channel."""
        if self.inventory is None:
            return False
        order = self.spec.component_order
        orients = [self.inventory.orientation(f"{station_id}.{codes.get(i, '')}", start_ns) for i in range(3)]
        if any(o is None for o in orients):
            return False
        try:
            z, n, e = rotate_to_zne(data.astype(np.float64), (orients[0], orients[1], orients[2]))  # type: ignore[arg-type]
        except ValueError:
            return False  # directions not independent: leave the table's mapping
        valid = mask.all(axis=0)
        for comp, values in (("Z", z), ("N", n), ("E", e)):
            data[order.index(comp)] = np.where(valid, values, 0.0)
        mask[:] = valid
        return True

    def _resampled(self, chan: ChannelBuffer, start_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """The window starting at ``start_ns`` from a channel at another rate: (float32 data at the
        model rate, bool mask)."""
        ratio = self.rate / chan.rate
        up, down = ratio.numerator, ratio.denominator
        half_native = self._filter_reach(chan)
        # a margin that is a multiple of ``down`` keeps the window's first sample on an output
        # sample of the polyphase filter (no fractional offset to snap)
        margin = down * math.ceil((half_native + 1) / down)
        n0 = index_of(start_ns, chan.rate) - margin
        count = math.ceil(self.window_samples / ratio) + 2 * margin
        x, m = chan.read(n0, count)
        if m.any():
            mean = float(x[m].mean())
            x = np.where(m, x - mean, 0.0)
        else:
            mean = 0.0
        y = resample_poly(x.astype(np.float64), up, down)
        # output sample j is at native position j / ratio; the window's first sample is at
        # native position (start - n0), i.e. output index (start - n0) * ratio (snapped)
        offset_native = Fraction(start_ns * chan.rate.numerator, NS_PER_S * chan.rate.denominator) - n0
        j0 = round(offset_native * ratio)
        out = np.zeros(self.window_samples, dtype=np.float32)
        seg = y[j0 : j0 + self.window_samples]
        out[: seg.shape[0]] = seg + mean
        # validity: every native sample within the filter half-length must be valid
        bad = ~m
        if bad.any():
            kernel = np.ones(2 * half_native + 1, dtype=np.int32)
            bad = np.convolve(bad.astype(np.int32), kernel, mode="same") > 0
        pos = np.rint((j0 + np.arange(self.window_samples)) / float(ratio)).astype(np.int64)
        inside = pos < count
        valid = np.zeros(self.window_samples, dtype=bool)
        valid[inside] = ~bad[pos[inside]]
        out[~valid] = 0.0
        return out, valid
