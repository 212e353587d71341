"""The early-warning fast path: triggers, trailing windows, provisional picks and their lifecycle.

The final path publishes a pick once its overlap-added probability is final (about 30 s after the
onset). Early-warning consumers need a first report within about a second, then updates. This
module holds the pure pieces of the fast path (no threads, no I/O); the ingest stage, the worker and
the output stage call them (``docs/eew-picks.md`` has the measurements behind the numbers):

1. :class:`StaLta` -- a recursive STA/LTA on the raw vertical channel of every station (a one-pole
   high-pass removes the offset; the characteristic function is the squared sample). An upward
   crossing of ``eew.trigger_ratio`` *arms* the station for ``eew.armed_s`` seconds of data.
2. :class:`FastScheduler` -- while a station is armed, every ``eew.stride_s`` of new data, one
   *trailing* window whose right edge is the newest sample every component has (not on the stride
   grid, never acknowledged: the final path's grid windows carry the data's acknowledgement).
3. :func:`fast_candidates` -- provisional picks in the PhaseNet output of a trailing window: a
   local maximum of at least ``eew.p_threshold`` (``s_threshold``) with at least
   ``eew.min_post_onset_s`` of data after it (the right edge, where PhaseNet is least sure, never
   makes a pick: :func:`models.peaks.local_peaks` with that distance), and within
   ``eew.trigger_window_s`` of a trigger of the station.
4. :func:`onset_amplitudes` -- Pd, Pv, Pa and tau_c over the first 1, 2 and 3 s after the onset on the
   **raw** vertical, corrected with the inventory's response (its overall sensitivity and input
   units, the flat-band correction of ShakeAlert's EPIC): causal 2-pole 0.075 Hz high-pass, then
   integration or differentiation (each followed by the same high-pass).
5. :class:`Lifecycle` -- one identity per onset: the first provisional report, updates as the
   amplitude seconds arrive, then ``final`` when the final path picks the onset (within
   ``eew.match_tolerance_s``) or ``retracted`` when the final path has judged the onset's samples
   without a pick (or after ``eew.retract_after_s`` without a decision). The Redis side keeps the
   identity across restarts (``streamer.publish``): the ``pick_id`` and ``update`` a consumer sees
   are the ones stored there.

Limitations: the fast path runs in the all-in-one service (``coldstream run``), not in the scale-out
roles; the amplitudes use the sensitivity only (no full deconvolution: below a short-period sensor's
corner frequency Pd is underestimated); polarity is read from the first excursion above three times
the pre-onset noise within 0.2 s of the onset.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from models.grid import time_of
from models.peaks import local_peaks
from streamer.picks import Pick, PickDetails, make_pick_id
from streamer.records import NS_PER_S, SampleBlock, Window

if TYPE_CHECKING:
    from streamer.buffers import StationBuffer
    from streamer.config import EewSettings
    from streamer.inventory import Inventory
    from streamer.windows import Windower

__all__ = [
    "AMPLITUDE_SECONDS",
    "Candidate",
    "FastScheduler",
    "Lifecycle",
    "StaLta",
    "fast_candidates",
    "onset_amplitudes",
]

AMPLITUDE_SECONDS = (1, 2, 3)
HIGHPASS_HZ = 0.075  # ElarmS/EPIC: Pd from displacement high-passed at 0.075 Hz
POLARITY_SEARCH_S = 0.2
NOISE_BEFORE_S = 5.0
VERTICAL_CODES = ("Z",)
CLOSED_ONSETS_KEPT = 32  # decided onsets remembered per station and phase (more than a trailing window holds)


# ------------------------------------------------------------------------------------ trigger
@dataclass
class StaLta:
    """Recursive STA/LTA of one channel. ``feed`` returns the sample times (ns) of upward crossings
    of ``ratio``; the trigger re-arms once the ratio fell below ``detrigger``. A gap or a rate change
    restarts the warm-up (``lta_s`` of data before the first trigger)."""

    rate_hz: float
    sta_s: float = 0.5
    lta_s: float = 10.0
    ratio: float = 4.0
    detrigger: float = 1.5
    _next_ns: int | None = None
    _sta: float = 0.0
    _lta: float = 0.0
    _hp_x: float = 0.0
    _hp_y: float = 0.0
    _count: int = 0
    _on: bool = False

    def feed(self, start_ns: int, samples: np.ndarray) -> list[int]:
        n = len(samples)
        if n == 0:
            return []
        dt_ns = NS_PER_S / self.rate_hz
        if self._next_ns is None or abs(start_ns - self._next_ns) > dt_ns / 2:
            self._restart(float(samples[0]))
        self._next_ns = start_ns + round(n * dt_ns)
        x = np.asarray(samples, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            self._next_ns = None  # a restart at the next block
            return []
        a_hp = math.exp(-2 * math.pi * 1.0 / self.rate_hz)  # one-pole high-pass at about 1 Hz
        c_sta = 1.0 / max(1.0, self.sta_s * self.rate_hz)
        c_lta = 1.0 / max(1.0, self.lta_s * self.rate_hz)
        warm = round(self.lta_s * self.rate_hz)
        # the three recursions as IIR filters with carried state (vectorised: one call per record)
        hp, (zi_hp,) = lfilter([a_hp, -a_hp], [1.0, -a_hp], x, zi=[self._hp_state(x[0])])
        self._hp_x, self._hp_y = float(x[-1]), float(hp[-1])
        cf = hp * hp
        sta, (zs,) = lfilter([c_sta], [1.0, c_sta - 1.0], cf, zi=[(1.0 - c_sta) * self._sta])
        lta, (zl,) = lfilter([c_lta], [1.0, c_lta - 1.0], cf, zi=[(1.0 - c_lta) * self._lta])
        self._sta, self._lta = float(sta[-1]), float(lta[-1])
        del zi_hp, zs, zl
        first = max(0, warm - self._count - 1)  # samples before the warm-up ends cannot trigger
        self._count += n
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(lta > 0, sta / lta, 0.0)
        out: list[int] = []
        i = first
        on = self._on
        while i < n:  # hysteresis: alternate between the next crossing up and the next one down
            if not on:
                hits = np.flatnonzero(r[i:] >= self.ratio)
                if hits.size == 0:
                    break
                i += int(hits[0])
                on = True
                out.append(start_ns + round(i * dt_ns))
            else:
                hits = np.flatnonzero(r[i:] < self.detrigger)
                if hits.size == 0:
                    break
                i += int(hits[0])
                on = False
        self._on = on
        return out

    def _hp_state(self, x0: float) -> float:
        """The high-pass filter's carried state for the next sample ``x0``: ``zi`` of lfilter's direct
        form II transposed, from the last input and output."""
        a_hp = math.exp(-2 * math.pi * 1.0 / self.rate_hz)
        return a_hp * self._hp_y - a_hp * self._hp_x

    def _restart(self, first: float) -> None:
        self._sta = self._lta = 0.0
        self._hp_x = first
        self._hp_y = 0.0
        self._count = 0
        self._on = False


@dataclass
class _Armed:
    triggers: deque[int] = field(default_factory=lambda: deque(maxlen=16))  # trigger sample times (ns)
    armed_until_ns: int = 0  # data time
    last_end_ns: int = 0  # right edge of the last trailing window cut


class FastScheduler:
    """Triggers per vertical channel and trailing windows of armed stations (ingest stage)."""

    def __init__(self, settings: EewSettings, rate_hz: float) -> None:
        self.settings = settings
        self.rate_hz = rate_hz
        self.window_samples = 0
        self._triggers: dict[str, StaLta] = {}
        self._armed: dict[str, _Armed] = {}
        self.triggers_total = 0

    def observe(self, block: SampleBlock) -> list[int]:
        """Feed an accepted block; returns trigger times (ns) when its vertical channel triggered."""
        if not block.channel.endswith(VERTICAL_CODES):
            return []
        s = self.settings
        trig = self._triggers.get(block.seed_id)
        if trig is None or trig.rate_hz != block.sampling_rate_hz:
            trig = StaLta(block.sampling_rate_hz, s.sta_s, s.lta_s, s.trigger_ratio, s.detrigger_ratio)
            self._triggers[block.seed_id] = trig
        times = trig.feed(block.start_ns, block.samples)
        if times:
            st = self._armed.setdefault(block.station_id, _Armed())
            for t in times:
                st.triggers.append(t)
                st.armed_until_ns = max(st.armed_until_ns, t + round(s.armed_s * NS_PER_S))
            self.triggers_total += len(times)
        return times

    def triggers(self, station_id: str) -> list[int]:
        st = self._armed.get(station_id)
        return list(st.triggers) if st is not None else []

    def collect(self, station: StationBuffer, windower: Windower) -> Window | None:
        """The station's trailing window, when it is armed and ``eew.stride_s`` of new data arrived
        since the last one; None otherwise."""
        st = self._armed.get(station.station_id)
        if st is None:
            return None
        code = station.active_group(windower.lag_ns(station))
        if code is None:
            return None
        heads = [ch.head_ns for ch in station.groups[code].values() if ch.head_ns is not None]
        if not heads:
            return None
        end_ns = min(heads)  # the newest sample every component has
        if end_ns - round(self.settings.stride_s * NS_PER_S) < st.last_end_ns:
            return None
        if end_ns > st.armed_until_ns + round(self.settings.stride_s * NS_PER_S) or not st.triggers:
            return None
        if end_ns < st.triggers[-1]:
            return None  # the trigger is not in the common data yet
        # exact integers: in floats, ns since the epoch times a rate lose the last sample (and put
        # start_ns hundreds of ns off the sample grid)
        rate = windower.rate
        end_index = end_ns * rate.numerator // (rate.denominator * NS_PER_S)  # first model sample not in yet
        start = end_index - windower.window_samples
        start_ns = time_of(start, rate)
        window, _reason = windower._cut(station, code, start, start_ns)  # noqa: SLF001 - one cutter for both paths
        if window is None:
            return None
        st.last_end_ns = end_ns
        window.meta["fast"] = True
        window.meta["triggers_ns"] = list(st.triggers)
        window.meta["onset_arrivals"] = _arrivals(station, code, start, windower.window_samples, rate)
        return window

    def forget(self, station_id: str) -> None:
        self._armed.pop(station_id, None)
        for seed_id in [k for k in self._triggers if k.rsplit(".", 1)[0] == station_id]:
            del self._triggers[seed_id]


def _arrivals(station: StationBuffer, code: str, start: int, n: int, rate: Fraction) -> list[tuple[int, int]]:
    """``[(window sample index, arrival ns)]``: when each block under the window's vertical arrived
    (so a pick can say when its onset sample reached the service). ``start`` and ``n`` are samples at
    the model's ``rate``; the buffer logs its blocks in samples at the channel's own rate."""
    order = station.spec.component_order
    z_slot = order.index("Z") if "Z" in order else 0
    chan = station.groups[code].get(z_slot)
    if chan is None:
        return []
    out = []
    for b0, b1, arr in list(chan._blocks):  # noqa: SLF001 - the buffer's own arrival log
        if chan.rate != rate:  # the first model sample at or after each block edge
            b0, b1 = (_first_index_at(time_of(b, chan.rate), rate) for b in (b0, b1))
        if b1 > start and b0 < start + n:
            out.append((max(b0, start) - start, arr))
    out.sort()
    return out


def _first_index_at(t_ns: int, rate: Fraction) -> int:
    """The first sample index at ``rate`` whose time is not before ``t_ns``."""
    return -(-t_ns * rate.numerator // (rate.denominator * NS_PER_S))


# ------------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """A provisional pick in one trailing window (``index`` into the window)."""

    phase: str
    index: int
    probability: float
    uncertainty_s: float


def fast_candidates(
    probs: np.ndarray, mask: np.ndarray, settings: EewSettings, rate_hz: float,
    triggers_ns: list[int], window_start_ns: int,
) -> list[Candidate]:
    """Provisional picks in a trailing window's ``(3, N)`` P/S/noise probabilities (module
    docstring, step 3). Samples without data count as probability 0."""
    d = max(1, round(settings.min_post_onset_s * rate_hz))
    valid = mask.all(axis=0)
    tol_ns = round(settings.trigger_window_s * NS_PER_S)
    out: list[Candidate] = []
    for phase, row, threshold in (("P", 0, settings.p_threshold), ("S", 1, settings.s_threshold)):
        p = np.where(valid, probs[row], 0.0)
        for i in local_peaks(p, threshold, d):
            t = window_start_ns + round(i * NS_PER_S / rate_hz)
            if phase == "P" and not any(abs(t - trig) <= tol_ns for trig in triggers_ns):
                continue  # a P maximum with no trigger near it: a noise maximum, not an onset
            if phase == "S" and not any(t > trig for trig in triggers_ns):
                continue
            out.append(Candidate(phase, i, float(p[i]), _half_width_s(p, i, rate_hz)))
    return out


def _half_width_s(p: np.ndarray, i: int, rate_hz: float) -> float:
    """Half the width of the probability peak at half its height: the onset's uncertainty."""
    half = p[i] / 2
    lo = i
    while lo > 0 and p[lo - 1] >= half:
        lo -= 1
    hi = i
    while hi < len(p) - 1 and p[hi + 1] >= half:
        hi += 1
    return (hi - lo + 1) / rate_hz / 2


# ------------------------------------------------------------------------------- amplitudes
@dataclass(frozen=True)
class Amplitudes:
    """Peak displacement (m), velocity (m/s), acceleration (m/s^2) and tau_c (s) over the first
    ``seconds`` after the onset."""

    seconds: int
    pd_m: float
    pv_m_s: float
    pa_m_s2: float
    tau_c_s: float


def _highpass(x: np.ndarray, rate_hz: float) -> np.ndarray:
    sos = butter(2, HIGHPASS_HZ, btype="highpass", fs=rate_hz, output="sos")
    return sosfilt(sos, x)


def onset_amplitudes(
    counts: np.ndarray, valid: np.ndarray, onset: int, rate_hz: float, sensitivity: float, input_units: str,
) -> list[Amplitudes]:
    """Pd, Pv, Pa and tau_c over 1, 2 and 3 s after sample ``onset`` of the raw vertical ``counts``
    (module docstring, step 4). Only the seconds that are fully valid data are returned; [] for a
    sensitivity of 0 or units that are neither velocity (M/S) nor acceleration (M/S**2)."""
    units = input_units.upper().replace(" ", "")
    if not sensitivity or units not in ("M/S", "M/S**2", "M/S2", "M/SEC", "M/SEC**2"):
        return []
    n_pre = min(onset, round(NOISE_BEFORE_S * rate_hz))
    if n_pre < 1 or not valid[onset - n_pre:onset].all():
        return []
    x = np.asarray(counts, dtype=np.float64) / float(sensitivity)
    x = x - x[onset - n_pre:onset].mean()
    x[~valid] = 0.0
    dt = 1.0 / rate_hz
    if units.startswith("M/S") and "2" not in units:  # velocity sensor
        v = _highpass(x, rate_hz)
        a = np.gradient(v, dt)
    else:  # accelerometer
        a = _highpass(x, rate_hz)
        v = _highpass(np.cumsum(a) * dt, rate_hz)
    d = _highpass(np.cumsum(v) * dt, rate_hz)
    out = []
    for sec in AMPLITUDE_SECONDS:
        end = onset + round(sec * rate_hz)
        if end > len(x) or not valid[onset:end].all():
            break
        dd, vv, aa = d[onset:end], v[onset:end], a[onset:end]
        ud2 = float(np.sum(vv * vv))
        u2 = float(np.sum(dd * dd))
        tau_c = 2 * math.pi * math.sqrt(u2 / ud2) if ud2 > 0 else float("nan")
        out.append(Amplitudes(sec, float(np.abs(dd).max()), float(np.abs(vv).max()), float(np.abs(aa).max()), tau_c))
    return out


def first_motion(z: np.ndarray, valid: np.ndarray, onset: int, rate_hz: float) -> str:
    """``U`` or ``D``: the sign of the first excursion beyond three times the pre-onset noise within
    0.2 s of the onset; ``""`` when none stands out (emergent or noisy)."""
    n_pre = min(onset, round(NOISE_BEFORE_S * rate_hz))
    end = min(len(z), onset + round(POLARITY_SEARCH_S * rate_hz))
    if n_pre < 10 or end <= onset or not valid[onset - n_pre:end].all():
        return ""
    pre = z[onset - n_pre:onset].astype(np.float64)
    mean, sd = float(pre.mean()), float(pre.std())
    post = z[onset:end].astype(np.float64) - mean
    over = np.flatnonzero(np.abs(post) > 3 * sd)
    if sd <= 0 or over.size == 0:
        return ""
    return "U" if post[over[0]] > 0 else "D"


def snr_db(z: np.ndarray, valid: np.ndarray, onset: int, rate_hz: float) -> float | None:
    """RMS of the 2 s after the onset over the RMS of the 5 s before it (both de-meaned by the
    pre-onset mean), in dB; None without enough valid data."""
    n_pre = min(onset, round(NOISE_BEFORE_S * rate_hz))
    end = min(len(z), onset + round(2 * rate_hz))
    if n_pre < 10 or end - onset < 10:
        return None
    sel_pre, sel_post = valid[onset - n_pre:onset], valid[onset:end]
    if not sel_pre.all() or not sel_post.all():
        return None
    pre = z[onset - n_pre:onset].astype(np.float64)
    mean = pre.mean()
    noise = float(np.sqrt(np.mean((pre - mean) ** 2)))
    sig = float(np.sqrt(np.mean((z[onset:end] - mean) ** 2)))
    if noise <= 0 or sig <= 0:
        return None
    return 20 * math.log10(sig / noise)


def window_details(
    window: Window, index: int, inventory: Inventory | None, rate_hz: float, inference_ns: int,
    component_order: str,
) -> PickDetails:
    """Everything a provisional pick at ``index`` of a trailing window carries besides its time."""
    z_row = component_order.index("Z") if "Z" in component_order else 0
    z = window.data[z_row]
    valid = window.mask[z_row]
    lat = lon = elev = None
    amps: list[Amplitudes] = []
    z_channel = window.channels[z_row] if len(window.channels) > z_row else ""
    if inventory is not None and z_channel:
        ep = inventory.epoch(f"{window.station_id}.{z_channel}", window.start_ns)
        if ep is not None:
            lat, lon, elev = ep.latitude_deg, ep.longitude_deg, ep.elevation_m
            if ep.sensitivity is not None:
                amps = onset_amplitudes(z, valid, index, rate_hz, ep.sensitivity, ep.input_units)
    arrivals: list[tuple[int, int]] = window.meta.get("onset_arrivals") or []  # type: ignore[assignment]
    onset_arrival = 0
    for sample, arr in arrivals:
        if sample <= index:
            onset_arrival = int(arr)
        else:
            break
    newest_sample_ns = window.end_ns - round(NS_PER_S / rate_hz)
    return PickDetails(
        latitude_deg=lat, longitude_deg=lon, elevation_m=elev,
        time_uncertainty_s=None, polarity=first_motion(z, valid, index, rate_hz),
        snr_db=snr_db(z, valid, index, rate_hz),
        amplitudes=tuple((a.seconds, a.pd_m, a.pv_m_s, a.pa_m_s2, a.tau_c_s) for a in amps),
        newest_sample_ns=newest_sample_ns, newest_arrival_ns=window.newest_arrival_ns,
        onset_arrival_ns=onset_arrival, inference_ns=inference_ns,
    )


# -------------------------------------------------------------------------------- lifecycle
@dataclass
class _Onset:
    station_id: str
    phase: str
    time_ns: int
    pick: Pick  # the newest report
    seen_mono: float = field(default_factory=time.monotonic)


class Lifecycle:
    """Open provisional onsets per station and phase (output stage). Each method returns the picks to
    publish, in order; the Redis side assigns the stored identity (see the module docstring)."""

    def __init__(self, settings: EewSettings) -> None:
        self.settings = settings
        self.tolerance_ns = round(settings.match_tolerance_s * NS_PER_S)
        self._open: dict[tuple[str, str], list[_Onset]] = {}
        # onset times (ns) the final path decided (final or retracted): a later trailing window of one
        # of them is too late, never a new onset
        self._closed: dict[tuple[str, str], deque[int]] = {}
        self.counts = {"provisional": 0, "update": 0, "final": 0, "confirmed": 0, "retracted": 0}

    def reported(self, station_id: str) -> bool:
        """The station has an open provisional P onset (its first report is out). Read from the
        worker thread to order trailing windows: a plain dict lookup, safe under the GIL."""
        return bool(self._open.get((station_id, "P")))

    def open_onsets(self, station_id: str | None = None) -> list[Pick]:
        return [o.pick for (sid, _), lst in sorted(self._open.items()) for o in lst
                if station_id is None or sid == station_id]

    def _find(self, station_id: str, phase: str, time_ns: int) -> _Onset | None:
        for o in self._open.get((station_id, phase), []):
            if abs(o.time_ns - time_ns) <= self.tolerance_ns:
                return o
        return None

    def provisional(self, pick: Pick) -> Pick | None:
        """A fast-path report: a new onset (published), or a known one: published as an update only
        when it carries more amplitude seconds than the last report."""
        o = self._find(pick.station_id, pick.phase, pick.time_ns)
        if o is None and self._decided(pick.station_id, pick.phase, pick.time_ns):
            return None
        if o is None:
            p = replace(pick, status="provisional", update=0)
            self._open.setdefault((pick.station_id, pick.phase), []).append(_Onset(pick.station_id, pick.phase, pick.time_ns, p))
            self.counts["provisional"] += 1
            return p
        have = len(o.pick.details.amplitudes) if o.pick.details is not None else 0
        new = len(pick.details.amplitudes) if pick.details is not None else 0
        if new <= have:
            return None
        p = replace(pick, pick_id=o.pick.pick_id, time_ns=o.time_ns, status="provisional", update=o.pick.update + 1)
        o.pick = p
        self.counts["update"] += 1
        return p

    def final(self, pick: Pick) -> Pick:
        """A final-path pick: confirms the open onset within the tolerance (its identity and its
        latest details carry over), else a final pick of its own."""
        self.counts["final"] += 1
        self._close(pick.station_id, pick.phase, pick.time_ns)
        o = self._find(pick.station_id, pick.phase, pick.time_ns)
        if o is None:
            return replace(pick, status="final", update=0)
        self._close(o.station_id, o.phase, o.time_ns)
        self._open[(pick.station_id, pick.phase)].remove(o)
        self.counts["confirmed"] += 1
        details = pick.details
        if o.pick.details is not None:
            details = replace(o.pick.details, inference_ns=pick.details.inference_ns if pick.details else 0)
        return replace(pick, pick_id=o.pick.pick_id, status="final", update=o.pick.update + 1, details=details)

    def judged(
        self, station_id: str, until_ns: int, now_ns: int | None = None, since_ns: int | None = None,
    ) -> list[Pick]:
        """The final path has judged every sample of ``station_id`` from ``since_ns`` (None: all) to
        ``until_ns``: open onsets in there (less the tolerance) had no final pick and are retracted.
        Onsets before ``since_ns`` lie in samples the final path never saw (shed windows, a hole): no
        decision, so they stay open (``eew.retract_after_s`` ends them)."""
        out: list[Pick] = []
        for phase in ("P", "S"):
            lst = self._open.get((station_id, phase), [])
            for o in [o for o in lst if o.time_ns + self.tolerance_ns < until_ns
                      and (since_ns is None or o.time_ns - self.tolerance_ns >= since_ns)]:
                lst.remove(o)
                out.append(self._retract(o, "not_confirmed", now_ns))
        return out

    def expire(self, now_mono: float | None = None) -> list[Pick]:
        """Retract onsets with no decision ``eew.retract_after_s`` after they were first reported (on
        the monotonic clock: a replay of old data is not "late"), e.g. a station that went quiet
        before the final path reached them."""
        now = time.monotonic() if now_mono is None else now_mono
        out: list[Pick] = []
        for lst in self._open.values():
            for o in [o for o in lst if now - o.seen_mono > self.settings.retract_after_s]:
                lst.remove(o)
                out.append(self._retract(o, "timeout", None))
        return out

    def seed(self, picks: list[Pick]) -> None:
        """Onsets left open by an earlier run (read from Redis at start-up): retracted or confirmed
        by this run's final path like its own."""
        for p in picks:
            if self._find(p.station_id, p.phase, p.time_ns) is None:
                self._open.setdefault((p.station_id, p.phase), []).append(_Onset(p.station_id, p.phase, p.time_ns, p))

    def _decided(self, station_id: str, phase: str, time_ns: int) -> bool:
        return any(abs(t - time_ns) <= self.tolerance_ns for t in self._closed.get((station_id, phase), ()))

    def _close(self, station_id: str, phase: str, time_ns: int) -> None:
        self._closed.setdefault((station_id, phase), deque(maxlen=CLOSED_ONSETS_KEPT)).append(time_ns)

    def _retract(self, o: _Onset, reason: str, now_ns: int | None) -> Pick:
        self._close(o.station_id, o.phase, o.time_ns)
        self.counts["retracted"] += 1
        emitted = time.time_ns() if now_ns is None else now_ns
        return replace(o.pick, status="retracted", update=o.pick.update + 1, reason=reason, emitted_ns=emitted)


def provisional_pick(
    window: Window, cand: Candidate, details: PickDetails, provenance: Any, rate_hz: float, steps: int,
) -> Pick:
    """The :class:`Pick` of a fast-path candidate."""
    t_ns = window.start_ns + round(cand.index * NS_PER_S / rate_hz)
    return Pick(
        pick_id=make_pick_id(window.station_id, cand.phase, t_ns, "denoised"),
        station_id=window.station_id,
        phase=cand.phase,
        time_ns=t_ns,
        probability=cand.probability,
        source="denoised",
        denoiser=provenance.denoiser,
        denoiser_version=provenance.denoiser_version,
        picker=provenance.picker,
        picker_version=provenance.picker_version,
        steps=steps,
        emitted_ns=time.time_ns(),
        status="provisional",
        details=replace(details, time_uncertainty_s=cand.uncertainty_s),
    )
