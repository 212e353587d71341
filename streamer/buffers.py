"""Per-channel ring buffers on an absolute sample grid, grouped per station.

Pure code: no sockets, no asyncio, no logging, no metrics. Callers get an outcome object per
insert and do the counting and logging themselves (``streamer.ingest``).

Grid. A channel at rate ``r`` stores sample ``i`` (an integer, "absolute index") at time
``i / r`` seconds since the epoch; a block starting at ``t`` ns goes to index ``round(t * r / 1e9)``
(integer arithmetic, rates as exact fractions). A block whose start is off the grid is snapped to
the nearest grid point: the error is at most half a sample period (5 ms at 100 Hz), the usual
size of digitizer timing corrections, and replays snap the same way.

Ring. ``capacity = ceil(horizon_s * r)`` slots; index ``i`` lives in slot ``i % capacity``. The
buffer keeps ``head`` (one past the newest index written); indices in
``[head - capacity, head)`` are retained, with a validity mask (False: never received, gap,
non-finite sample, or evicted). A block may land anywhere inside the retained range (out of
order); the part older than ``head - capacity`` is dropped as expired.

Policies applied by ``StationBuffer.insert`` (times: block start ``t0``, block end ``t1``, the
station's newest sample end ``T``, wall clock ``now``):

- rate not finite, ``<= 0`` or ``> 10 kHz``, or below a tenth of the model rate: reject "rate";
  a rate other than the model's with ``resample = false``: reject "rate".
- ``t1 > now + max_future_s``: reject "future" (the station clock or header is wrong).
- ``t0 >= T + max_clock_jump_s``: a jump forward. Explained by an outage when the station was
  silent on the arrival clock for about as long: ``arrival - A >= (t0 - T) - slack`` (``arrival``
  the block's ``arrival_ns``, ``A`` the station's ``last_arrival_ns``, the latest arrival of its
  buffered blocks; ``slack`` 10 % of the jump, at least 60 s, at most half the jump: delivery
  latency differs before and after an outage). Then the station is
  reset at once and the block goes in. Otherwise (data kept arriving while one header jumped: a
  stray or corrupted header, e.g. stamped near the wall clock in a station whose data lag it by
  hours, or a digitizer clock that really jumped) the block is *held*, not buffered, until the
  held blocks span ``resume_after_s`` (one model window) without a hole of more than a second,
  from more than one block (a single record can hold 30 s or more):
  then the station is reset and the held blocks go in, in arrival order, before the block that
  confirmed the jump (``StationInsert.replayed``); nothing is lost. A block in the station's own
  time base (also an old-base record of another channel still in flight after a real jump), a
  far-ahead block that does not hang together with the held ones, or a reset for any other reason
  gives the held blocks up (``StationInsert.discarded``, rejected "clock_jump").
  Held blocks are bounded (``HELD_DURATION_MAX_S`` of blocks, ``HELD_BLOCKS_MAX`` blocks); a
  far-ahead block beyond that is rejected "clock_jump" at once, and lost if the jump is confirmed.
- ``t1 <= T - max_clock_jump_s``: a jump backward. A single such block is rejected as "expired"
  (a stray or corrupted header); once such blocks (more than one) span at least ``resume_after_s`` without a hole
  of more than a second, the station is reset to the new time base and the block that confirmed
  it goes in. The blocks before it are lost. A block in the station's own time base starts the
  confirmation again.
- ``t1 <= T - horizon_s``: reject "expired" (older than anything the buffer retains).
- otherwise insert. Samples already present are kept (first arrival wins) and the new ones
  dropped: reported as overlap. A forward discontinuity (``t0`` after the channel's head) is
  reported as a gap of that length. Non-finite samples are stored as 0 with mask False.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np

from models.components import COMPONENT_ALIASES
from models.grid import MAX_RATE_HZ, exact_rate, index_of, time_of
from models.spec import ModelSpec
from streamer.config import BufferSettings
from streamer.records import NS_PER_S, SampleBlock

__all__ = [
    "HELD_BLOCKS_MAX",
    "HELD_DURATION_MAX_S",
    "MAX_RATE_HZ",
    "ChannelBuffer",
    "ChannelInsert",
    "HeldBlock",
    "JumpSpan",
    "StationBuffer",
    "StationInsert",
    "exact_rate",
    "index_of",
    "time_of",
]

# Instrument codes (second channel letter) that carry ground motion: high/low-gain seismometer,
# accelerometer, geophone. Preference order when several groups are equally current.
INSTRUMENT_RANK = {"H": 3, "P": 2, "L": 1, "N": 0}
_MAX_BLOCK_ENTRIES = 4096
# the records of a new time base (clock jump) hang together; a far block further than this from the
# span seen so far starts a new span, so isolated stray headers never add up to a reset
_JUMP_SPAN_SLACK_NS = NS_PER_S
# a forward jump is an outage when the station's silence on the arrival clock is at least the jump
# less this slack: delivery latency before and after an outage differs (seconds to minutes), while
# a stray header or a clock jump in a flowing stream comes with a silence of seconds
_OUTAGE_SLACK_FRACTION = 0.1
_OUTAGE_SLACK_MIN_NS = 60 * NS_PER_S
# the blocks held for a forward jump not confirmed yet: one window of a dozen channels (several
# instrument groups), and a count for floods of tiny blocks; past either, far blocks are rejected
HELD_DURATION_MAX_S = 360.0
HELD_BLOCKS_MAX = 4096


@lru_cache(maxsize=4096)
def _rate_check(rate_hz: float, model_rate: Fraction, resample: bool) -> tuple[Fraction | None, bool]:
    """``(exact rate or None when rejected, needs resampling)`` for a block rate (cached: a
    network has a handful of rates)."""
    rate = exact_rate(rate_hz)
    if rate is None or rate * 10 < model_rate:
        return None, False
    if rate == model_rate:
        return model_rate, False
    ratio = model_rate / rate
    if not resample or ratio.numerator * ratio.denominator > 10_000:
        return None, False  # resampling off, or no practical polyphase ratio
    return rate, True


@dataclass
class ChannelInsert:
    """What one insert did to one channel (sample counts)."""

    written: int = 0
    overlap_samples: int = 0  # already present: new values dropped
    nonfinite_samples: int = 0  # stored as 0, mask False
    gap_samples: int = 0  # forward discontinuity before this block
    expired_samples: int = 0  # older than the retained range: dropped
    late_samples: int = 0  # written behind the head (out-of-order fill)


class ChannelBuffer:
    """Ring buffer of one channel: float32 samples + validity mask on the absolute grid."""

    def __init__(self, seed_id: str, rate: Fraction, horizon_s: float) -> None:
        self.seed_id = seed_id
        self.rate = rate
        self.capacity = max(1, math.ceil(horizon_s * rate))
        self.data = np.zeros(self.capacity, dtype=np.float32)
        self.mask = np.zeros(self.capacity, dtype=bool)
        self.head: int | None = None
        self.valid_count = 0
        self.max_block_samples = 0
        # (start index, end index, arrival ns) of blocks that wrote samples, for latency accounting
        self._blocks: deque[tuple[int, int, int]] = deque(maxlen=_MAX_BLOCK_ENTRIES)

    @property
    def rate_hz(self) -> float:
        return float(self.rate)

    @property
    def tail(self) -> int | None:
        """Oldest retained index (``head - capacity``), ``None`` when empty."""
        return None if self.head is None else self.head - self.capacity

    @property
    def head_ns(self) -> int | None:
        """Time just after the newest sample."""
        return None if self.head is None else time_of(self.head, self.rate)

    def fill_ratio(self) -> float:
        return self.valid_count / self.capacity

    def _segments(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """Slot ranges ``(slot_lo, slot_hi, offset)`` covering indices ``[start, end)`` (at most
        ``capacity`` long); ``offset`` is the position of ``slot_lo`` relative to ``start``."""
        n = end - start
        lo = start % self.capacity
        first = min(n, self.capacity - lo)
        segs = [(lo, lo + first, 0)]
        if first < n:
            segs.append((0, n - first, first))
        return segs

    def _clear(self, start: int, end: int) -> None:
        for lo, hi, _ in self._segments(start, end):
            self.valid_count -= int(np.count_nonzero(self.mask[lo:hi]))
            self.mask[lo:hi] = False
            self.data[lo:hi] = 0.0

    def insert(self, start: int, values: np.ndarray, arrival_ns: int) -> ChannelInsert:
        """Write ``values`` (1-D, any real dtype) at absolute indices ``start ...``.

        Advances the head (evicting what falls out of the horizon), keeps samples already
        present, masks non-finite ones. Returns the sample counts of what happened.
        """
        out = ChannelInsert()
        n = int(values.shape[0])
        if n == 0:
            return out
        end = start + n
        self.max_block_samples = max(self.max_block_samples, n)
        if self.head is None:
            self.head = start
        elif start > self.head:
            out.gap_samples = start - self.head
        old_head = self.head
        if end > self.head:
            self._clear(max(self.head, end - self.capacity), end)
            self.head = end
        tail = self.head - self.capacity
        if start < tail:
            drop = min(n, tail - start)
            out.expired_samples = drop
            values = values[drop:]
            start += drop
            if start >= end:
                return out
        if start < old_head:
            out.late_samples = min(end, old_head) - start
        vals = np.asarray(values, dtype=np.float32) if values.dtype != np.float32 else values
        for lo, hi, off in self._segments(start, end):
            v = vals[off : off + (hi - lo)]
            finite = np.isfinite(v)
            present = self.mask[lo:hi]
            n_present = int(np.count_nonzero(present))
            n_bad = v.shape[0] - int(np.count_nonzero(finite))
            out.nonfinite_samples += n_bad
            if n_present == 0:
                self.data[lo:hi] = v if n_bad == 0 else np.where(finite, v, np.float32(0.0))
                self.mask[lo:hi] = finite
                newly = v.shape[0] - n_bad
            else:
                out.overlap_samples += n_present
                take = finite & ~present
                self.data[lo:hi][take] = v[take]
                present |= take  # view into self.mask
                newly = int(np.count_nonzero(take))
            self.valid_count += newly
            out.written += newly
        if out.written:
            self._blocks.append((start, end, arrival_ns))
            while self._blocks and self._blocks[0][1] <= tail:
                self._blocks.popleft()
        return out

    def read(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy of indices ``[start, start + n)``: ``(float32 data, bool mask)``; anything not
        retained reads as 0 / False."""
        data = np.zeros(n, dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        if self.head is None:
            return data, mask
        lo = max(start, self.head - self.capacity)
        hi = min(start + n, self.head)
        if lo < hi:
            for slo, shi, off in self._segments(lo, hi):
                d0 = lo - start + off
                data[d0 : d0 + shi - slo] = self.data[slo:shi]
                mask[d0 : d0 + shi - slo] = self.mask[slo:shi]
        return data, mask

    def all_valid(self, start: int, end: int) -> bool:
        """True when every index in ``[start, end)`` holds a valid sample."""
        if self.head is None or end > self.head or start < self.head - self.capacity:
            return False
        return all(bool(self.mask[lo:hi].all()) for lo, hi, _ in self._segments(start, end))

    def newest_arrival(self, start: int, end: int) -> int | None:
        """Latest arrival time among blocks that wrote samples into ``[start, end)``."""
        best: int | None = None
        for b0, b1, arr in self._blocks:
            if b0 < end and b1 > start and (best is None or arr > best):
                best = arr
        return best


@dataclass
class JumpSpan:
    """The time span covered by consecutive blocks far from a station's time base, on one side of
    it: the candidate new time base of a clock jump that is not confirmed yet. (Also the SeedLink
    client's rule for a channel's time line, ``streamer.seedlink``: one implementation.)"""

    lo_ns: int | None = None
    hi_ns: int | None = None

    def joins(self, start_ns: int, end_ns: int) -> bool:
        """Whether the block ``[start_ns, end_ns)`` hangs together with the span so far."""
        lo, hi = self.lo_ns, self.hi_ns
        return not (lo is None or hi is None or start_ns > hi + _JUMP_SPAN_SLACK_NS or end_ns < lo - _JUMP_SPAN_SLACK_NS)

    def add(self, start_ns: int, end_ns: int) -> int:
        """Join the block ``[start_ns, end_ns)`` to the span, or start a new span with it when it
        does not hang together with it; returns the span's length (ns)."""
        lo, hi = self.lo_ns, self.hi_ns
        if lo is None or hi is None or not self.joins(start_ns, end_ns):
            lo, hi = start_ns, end_ns  # not joined to the span so far (a stray header): a new span
        else:
            lo, hi = min(lo, start_ns), max(hi, end_ns)
        self.lo_ns, self.hi_ns = lo, hi
        return hi - lo

    def clear(self) -> None:
        self.lo_ns = self.hi_ns = None


@dataclass(frozen=True, eq=False)
class HeldBlock:
    """A block held for a forward clock jump not confirmed yet: its offset from the station's newest
    data when it came (``jump_s``) and what placing it later needs (exact rate, resampling, times)."""

    block: SampleBlock
    jump_s: float
    rate: Fraction
    resampled: bool
    start_ns: int
    end_ns: int


@dataclass
class StationInsert:
    """Outcome of ``StationBuffer.insert`` for one block.

    Exactly one of: buffered (``rejected`` None, ``held`` False), ``rejected``, or ``held`` (kept
    aside for a forward jump not confirmed yet; a later outcome lists it in ``replayed`` once
    buffered or in ``discarded`` once given up). ``replayed`` and ``discarded`` are about earlier
    blocks, whatever happened to this one.
    """

    rejected: str | None = None  # reason label when the block was not buffered
    held: bool = False  # kept aside for a forward jump not confirmed yet: neither buffered nor rejected
    clock_jump: bool = False  # the station was reset before this block went in
    after_outage: bool = False  # ... at once, the jump being explained by silence on the arrival clock
    # a clock jump of the block from the station's newest data (s, negative backward): set when the
    # station was reset (clock_jump), or the block was held or rejected as a jump not confirmed yet
    jump_s: float = 0.0
    channel_reset: bool = False  # the channel changed rate and was restarted
    resampled: bool = False  # the channel is not at the model rate (windows get resampled)
    channel: ChannelInsert = field(default_factory=ChannelInsert)
    gap_s: float = 0.0
    # blocks held earlier, buffered (or rejected) when this block confirmed the jump, in arrival
    # order and before this block, with their own outcomes
    replayed: list[tuple[SampleBlock, StationInsert]] = field(default_factory=list)
    # blocks held earlier and given up now (a stray header after all): rejected as "clock_jump"
    discarded: list[HeldBlock] = field(default_factory=list)


class StationBuffer:
    """The channels of one station (``NET.STA.LOC``), grouped by band+instrument code (``HH``,
    ``HN``, ...) and mapped to the model's component slots.

    ``groups[code][slot]`` is the ``ChannelBuffer`` of component slot ``slot`` (index into
    ``spec.component_order``). ``epoch`` increases on every reset so window schedules can follow.
    """

    def __init__(self, station_id: str, spec: ModelSpec, settings: BufferSettings) -> None:
        self.station_id = station_id
        self.spec = spec
        self.settings = settings
        self.model_rate = exact_rate(spec.sampling_rate_hz) or Fraction(100)
        self.resume_after_ns = round(spec.window_s * NS_PER_S)
        self.groups: dict[str, dict[int, ChannelBuffer]] = {}
        self.channel_codes: dict[str, dict[int, str]] = {}
        self.group_newest_ns: dict[str, int] = {}
        self.epoch = 0
        self.newest_end_ns: int | None = None
        self.first_start_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.max_block_ns = 0
        self._active: str | None = None
        # consecutive blocks far ahead of / behind the station's data: a clock jump to be confirmed
        self._jump_ahead = JumpSpan()
        self._jump_back = JumpSpan()
        # the blocks of the forward span, held until the jump is confirmed or given up
        self._held: list[HeldBlock] = []
        self._held_ns = 0

    # -- bookkeeping -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all data (clock jump); the next block starts a new time base. Blocks still held
        are forgotten too: take them first (``drop_held``) to hand them back."""
        self.drop_held()
        self.groups.clear()
        self.channel_codes.clear()
        self.group_newest_ns.clear()
        self.newest_end_ns = None
        self.first_start_ns = None
        self._active = None
        self._jump_ahead.clear()
        self._jump_back.clear()
        self.epoch += 1

    def drop_held(self) -> list[HeldBlock]:
        """Give up the blocks held for a forward jump not confirmed yet (e.g. when the station is
        released); returns them, in arrival order, for the caller to reject."""
        held, self._held, self._held_ns = self._held, [], 0
        self._jump_ahead.clear()
        return held

    def channels(self) -> list[ChannelBuffer]:
        return [ch for group in self.groups.values() for ch in group.values()]

    def newest_sample_ns(self) -> int | None:
        """Time of the newest sample of any channel (``None`` when empty)."""
        times = [time_of(ch.head - 1, ch.rate) for ch in self.channels() if ch.head is not None]
        return max(times) if times else None

    def fill_ratio(self) -> float:
        """Mean fill of the active group's channels (0 when empty)."""
        code = self._active
        if code is None or code not in self.groups or not self.groups[code]:
            return 0.0
        chans = self.groups[code].values()
        return sum(ch.fill_ratio() for ch in chans) / len(chans)

    def active_group(self, lag_ns: int) -> str | None:
        """Band+instrument code whose channels feed the windows.

        Among groups whose newest data is within ``lag_ns`` of the station's newest, take the one
        with most components, then the preferred instrument (H > P > L > N); the current choice
        is kept on ties, so the source does not flap.
        """
        if not self.group_newest_ns or self.newest_end_ns is None:
            return None
        floor = self.newest_end_ns - lag_ns
        current = self._active

        def rank(code: str) -> tuple[int, int, int]:
            return (len(self.groups[code]), INSTRUMENT_RANK.get(code[1], -1), int(code == current))

        eligible = [c for c, t in self.group_newest_ns.items() if t >= floor]
        self._active = max(eligible, key=rank)
        return self._active

    # -- insert ----------------------------------------------------------------------------------

    def insert(self, block: SampleBlock, now_ns: int) -> StationInsert:
        """Check ``block`` against the policies of the module docstring and buffer it."""
        s = self.settings
        out = StationInsert()
        cha = block.channel
        if len(cha) != 3 or cha[1] not in INSTRUMENT_RANK or cha[2] not in COMPONENT_ALIASES:
            out.rejected = "channel"
            return out
        rate, out.resampled = _rate_check(float(block.sampling_rate_hz), self.model_rate, s.resample)
        if rate is None:
            out.rejected = "rate"
            return out
        n = int(block.samples.shape[0])
        if n == 0:
            return out  # nothing to buffer (not an error)
        start_ns = block.start_ns
        end_ns = start_ns + (n * rate.denominator * NS_PER_S) // rate.numerator
        if end_ns > now_ns + round(s.max_future_s * NS_PER_S):
            out.rejected = "future"
            return out
        newest = self.newest_end_ns
        if newest is not None:
            jump_ns = round(s.max_clock_jump_s * NS_PER_S)
            if start_ns >= newest + jump_ns:
                return self._ahead(block, rate, start_ns, end_ns, newest, out)
            if end_ns <= newest - jump_ns:
                # one block is not a new time base (a corrupt old header): the jump must be
                # confirmed by data
                out.jump_s = (end_ns - newest) / NS_PER_S
                # never confirmed by one block alone: a single record can be 30 s long or more
                # (4096-byte records, low rates), and a stray one must not reset the station
                joined = self._jump_back.joins(start_ns, end_ns)
                if self._jump_back.add(start_ns, end_ns) < self.resume_after_ns or not joined:
                    out.rejected = "expired"
                    return out
                out.discarded = self.drop_held()
                self.reset()
                out.clock_jump = True
            elif end_ns <= newest - round(s.horizon_s * NS_PER_S):
                out.rejected = "expired"
                return out
            else:  # the station's own time base: a jump pending in either direction was not one
                if self._held or self._jump_ahead.lo_ns is not None:
                    out.discarded = self.drop_held()
                self._jump_back.clear()
        return self._place(block, rate, start_ns, end_ns, out)

    def _ahead(
        self, block: SampleBlock, rate: Fraction, start_ns: int, end_ns: int, newest_ns: int, out: StationInsert
    ) -> StationInsert:
        """A block at least ``max_clock_jump_s`` after the station's newest data (module docstring)."""
        jump_ns = start_ns - newest_ns
        out.jump_s = jump_ns / NS_PER_S
        last_arrival = self.last_arrival_ns if self.last_arrival_ns is not None else block.arrival_ns
        slack_ns = min(max(_OUTAGE_SLACK_FRACTION * jump_ns, _OUTAGE_SLACK_MIN_NS), jump_ns / 2)
        if block.arrival_ns - last_arrival >= jump_ns - slack_ns:
            # the station was silent about as long as its data jumped: it is back from an outage
            out.discarded = self.drop_held()
            self.reset()
            out.clock_jump = out.after_outage = True
            return self._place(block, rate, start_ns, end_ns, out)
        span = self._jump_ahead
        joined = span.joins(start_ns, end_ns)
        if not joined:
            out.discarded = self.drop_held()  # a new candidate: the blocks held so far were stray
        span_ns = span.add(start_ns, end_ns)
        # never confirmed by one block alone: a single record can be 30 s long or more (4096-byte
        # records, low rates), and a stray one must not reset the station
        if span_ns < self.resume_after_ns or not joined:
            if self._held_ns + (end_ns - start_ns) > HELD_DURATION_MAX_S * NS_PER_S or len(self._held) >= HELD_BLOCKS_MAX:
                out.rejected = "clock_jump"
                return out
            self._held.append(HeldBlock(block, out.jump_s, rate, out.resampled, start_ns, end_ns))
            self._held_ns += end_ns - start_ns
            out.held = True
            return out
        # confirmed: the new time base holds one window of data; the held blocks go in first
        held = self._held
        self._held, self._held_ns = [], 0
        self.reset()
        out.clock_jump = True
        for h in held:
            replay = StationInsert(resampled=h.resampled)
            try:
                self._place(h.block, h.rate, h.start_ns, h.end_ns, replay)
            except (ValueError, TypeError, OverflowError, IndexError):
                replay.rejected = "invalid"  # as the ingest stage reports a block it cannot place
            out.replayed.append((h.block, replay))
        return self._place(block, rate, start_ns, end_ns, out)

    def _place(self, block: SampleBlock, rate: Fraction, start_ns: int, end_ns: int, out: StationInsert) -> StationInsert:
        """Buffer a block that passed the time policies (component slot, rate change, ring)."""
        s = self.settings
        cha = block.channel
        n = int(block.samples.shape[0])
        code, slot = cha[:2], self.spec.component_order.index(COMPONENT_ALIASES[cha[2]])
        group = self.groups.setdefault(code, {})
        codes = self.channel_codes.setdefault(code, {})
        if slot in codes and codes[slot] != cha:
            out.rejected = "channel"  # e.g. both HHE and HH1: the first one seen keeps the slot
            return out
        chan = group.get(slot)
        if chan is not None and chan.rate is not rate and chan.rate != rate:
            chan = None
            out.channel_reset = True
        if chan is None:
            chan = ChannelBuffer(block.seed_id, rate, s.horizon_s)
            group[slot] = chan
            codes[slot] = cha
        start_idx = index_of(start_ns, rate)
        res = chan.insert(start_idx, block.samples, block.arrival_ns)
        out.channel = res
        out.gap_s = res.gap_samples / float(rate)
        if res.expired_samples >= n:
            out.rejected = "expired"  # nothing left after cropping to the retained range
            return out
        head_ns = chan.head_ns
        if head_ns is not None:
            self.group_newest_ns[code] = max(self.group_newest_ns.get(code, head_ns), head_ns)
            self.newest_end_ns = head_ns if self.newest_end_ns is None else max(self.newest_end_ns, head_ns)
        self.first_start_ns = start_ns if self.first_start_ns is None else min(self.first_start_ns, start_ns)
        self.last_arrival_ns = block.arrival_ns if self.last_arrival_ns is None else max(self.last_arrival_ns, block.arrival_ns)
        self.max_block_ns = max(self.max_block_ns, end_ns - start_ns)
        return out
