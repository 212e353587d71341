"""Phase picks from stacked PhaseNet probability traces, emitted once each, deterministically.

The picker runs on every (denoised or raw) window; a :class:`streamer.stitch.Stitcher` in
``overlap_add`` mode stacks the ``(3, N)`` P/S/noise probability windows into continuous traces and
hands over only **final** samples. :class:`PickDetector` finds picks in those final samples:

A pick of phase X at sample ``i`` is a local maximum of the stacked probability ``p`` over
``[i - d, i + d]`` (``d = round(min_distance_s * rate)``) with ``p[i] >= threshold_X``: strictly greater
than the ``d`` samples before it and not smaller than the ``d`` after (on a plateau the first sample
wins); the rule is :func:`models.peaks.local_peaks`, which the window evaluation uses too. The rule only looks ``d`` samples either side, so the detector holds back the newest ``d``
samples until the next segment arrives, and the picks do not depend on how the trace was chunked:
grid-aligned windows and the same data give the same picks, with the same ``pick_id``, every time
(restarts and replays included). Masked samples (no valid data) count as probability 0. A hole in the
trace ends the run: the held-back samples are judged then. A maximum within ``d`` of a run's start
or end (the first samples after a hole or a restart, a drained tail) is shaped by the run's edge,
not by data on both sides, and is not a pick (counted in ``edge_suppressed``).

Picks are de-duplicated: a candidate within ``tolerance_s`` of a pick already emitted for the same
station, phase and source is suppressed (a short history is kept), which matters only around holes
and restarts because the local-maximum rule already keeps picks ``d`` samples apart.

The pick time is the sample time (no sub-sample interpolation); ``pick_id`` is the first 16 hex digits
of ``sha1("station|phase|source|round(time / 10 ms)")``.

Under the pick policy on denoised output (the weights' ``unconfirmed_p_threshold``), each probability segment
carries a fourth row, the raw input's P stacked the same way (zero where the raw window lacks data on a
component), and a P sample counts only where that stacked raw P reaches the P threshold within
``confirm_within_s`` or its own P reaches the unconfirmed threshold (:func:`models.peaks.cap_unconfirmed_p`,
the rule ``coldstream evaluate`` applies to single windows). The detector then holds back
``d + confirm_within_s``, so the rule sees its whole reach and the picks still do not depend on the chunking.

These are the *final* picks; the early-warning fast path (``streamer.eew``) reports provisional ones
earlier, and the output stage links each final pick to the provisional report of its onset.

Limitations: latency is the stitcher's hold plus ``min_distance_s`` (plus ``confirm_within_s`` under the pick
policy).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from models.peaks import CONFIRM_WITHIN_S, cap_unconfirmed_p, edge_candidates, local_peaks
from streamer.records import NS_PER_S
from streamer.stitch import Segment, sample_time_ns

PHASES = ("P", "S")
SOURCES = ("denoised", "raw")
PICK_ID_RESOLUTION_NS = 10_000_000  # 10 ms


def make_pick_id(station_id: str, phase: str, time_ns: int, source: str = "denoised") -> str:
    """Stable pick identity: 16 hex digits of sha1 over station, phase, source and time in 10 ms.

    The source is part of the identity so a raw-data pick at the same time as a denoised one is not
    taken for a duplicate of it."""
    ticks = round(time_ns / PICK_ID_RESOLUTION_NS)
    return hashlib.sha1(f"{station_id}|{phase}|{source}|{ticks}".encode()).hexdigest()[:16]


def format_time_iso(time_ns: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds)."""
    seconds, rem_ns = divmod(time_ns, NS_PER_S)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem_ns // 1000:06d}Z"


@dataclass(frozen=True)
class Provenance:
    """Names and versions of the models that produced a pick."""

    denoiser: str = ""
    denoiser_version: str = ""
    picker: str = ""
    picker_version: str = ""


@dataclass(frozen=True)
class PickDetails:
    """What an early-warning consumer needs beside the pick time (``streamer.eew``); None: unknown.

    ``amplitudes``: ``(seconds, Pd m, Pv m/s, Pa m/s^2, tau_c s)`` over the first 1, 2, 3 s after the
    onset that had arrived, from the raw vertical corrected with the inventory's sensitivity.
    Times in ns since the epoch: the newest sample of the window the pick came from, its arrival,
    the arrival of the onset sample, and the end of the inference."""

    latitude_deg: float | None = None
    longitude_deg: float | None = None
    elevation_m: float | None = None
    time_uncertainty_s: float | None = None
    polarity: str = ""
    snr_db: float | None = None
    amplitudes: tuple[tuple[int, float, float, float, float], ...] = ()
    newest_sample_ns: int = 0
    newest_arrival_ns: int = 0
    onset_arrival_ns: int = 0
    inference_ns: int = 0


PICK_STATUSES = ("provisional", "final", "retracted")


@dataclass(frozen=True)
class Pick:
    """One phase pick. ``time_ns`` ns since the epoch; ``probability`` the stacked value in [0, 1];
    ``source`` ``"denoised"`` or ``"raw"``; ``steps`` the sampler steps of the windows under the pick
    (0 for raw); ``emitted_ns`` the wall-clock time the pick was found. ``status`` and ``update``
    are the pick's lifecycle (``provisional`` reports of the early-warning fast path, then ``final``
    or ``retracted``; ``update`` counts the reports of one onset from 0); ``reason`` says why a pick
    was retracted."""

    pick_id: str
    station_id: str
    phase: str
    time_ns: int
    probability: float
    source: str
    denoiser: str
    denoiser_version: str
    picker: str
    picker_version: str
    steps: int
    emitted_ns: int
    status: str = "final"
    update: int = 0
    reason: str = ""
    details: PickDetails | None = None

    @property
    def time_iso(self) -> str:
        return format_time_iso(self.time_ns)


@dataclass
class _Trace:
    """Held-back part of one station/source probability trace: absolute samples ``[start, start + n)``
    of which ``[start, evaluated)`` serve only as left context; the run without a hole began at
    ``run_start``."""

    start: int
    evaluated: int
    probs: np.ndarray  # (2, n) float64: P, S (and a third row, the raw P that confirms, under the pick policy)
    steps: np.ndarray  # (n,) int32
    run_start: int
    unconfirmed: float | None = None  # the pick policy's unconfirmed P threshold (None: P at the threshold alone)

    @property
    def end(self) -> int:
        return self.start + int(self.probs.shape[1])


@dataclass
class _History:
    times: dict[str, deque[int]] = field(default_factory=lambda: {p: deque() for p in PHASES})


class PickDetector:
    """Finds picks in final stacked probability segments, for any number of stations and sources.

    ``phase_rows`` maps a phase to its row in the probability segments (PhaseNet: P=0, S=1, noise=2).
    """

    def __init__(
        self,
        sampling_rate_hz: float = 100.0,
        p_threshold: float = 0.3,
        s_threshold: float = 0.3,
        min_distance_s: float = 1.0,
        *,
        tolerance_s: float | None = None,
        history_s: float = 120.0,
        phase_rows: dict[str, int] | None = None,
        confirm_within_s: float = CONFIRM_WITHIN_S,
    ) -> None:
        if not (0 < p_threshold <= 1 and 0 < s_threshold <= 1):
            raise ValueError("thresholds must be in (0, 1]")
        self.sampling_rate_hz = sampling_rate_hz
        self.thresholds = {"P": float(p_threshold), "S": float(s_threshold)}
        self.distance_samples = max(1, round(min_distance_s * sampling_rate_hz))
        self.tolerance_ns = round((min_distance_s if tolerance_s is None else tolerance_s) * NS_PER_S)
        self.history_ns = round(history_s * NS_PER_S)
        self.phase_rows = phase_rows or {"P": 0, "S": 1}
        # the pick policy (models.peaks.cap_unconfirmed_p): raw P this close confirms a P sample
        self.confirm_samples = max(0, round(confirm_within_s * sampling_rate_hz))
        self._traces: dict[tuple[str, str], _Trace] = {}
        # runs that ended (a hole, a change of policy, a flush), (run_start, end) samples, every sample judged; for
        # the early-warning lifecycle (take_ended_runs), bounded per station and source
        self._ended: dict[tuple[str, str], deque[tuple[int, int]]] = {}
        self._history: dict[tuple[str, str], _History] = {}
        self.suppressed = 0  # duplicates of picks already emitted
        self.edge_suppressed = 0  # maxima only the edge of a run made (no d samples of data on one side)

    @property
    def latency_samples(self) -> int:
        """Samples held back for right context (without the pick policy; see :meth:`held_samples`)."""
        return self.distance_samples

    def held_samples(self, confirming: bool) -> int:
        """Samples held back for right context: ``d``, plus the confirmation reach under the pick policy (the
        raw P that may confirm a neighbour of a candidate lies up to that much further on)."""
        return self.distance_samples + (self.confirm_samples if confirming else 0)

    def process(
        self,
        segment: Segment,
        *,
        source: str = "denoised",
        provenance: Provenance = Provenance(),
        now_ns: int | None = None,
        unconfirmed_p_threshold: float | None = None,
        confirm_row: int = 3,
    ) -> list[Pick]:
        """Take the next final probability segment of ``segment.station_id``; return new picks in time
        order. ``segment.data`` rows follow ``phase_rows``; masked samples count as 0.

        With ``unconfirmed_p_threshold`` (above the P threshold), the pick policy applies to the stacked
        curves: row ``confirm_row`` is the stacked raw-input P, and a P sample that no raw P within
        ``confirm_within_s`` confirms needs ``unconfirmed_p_threshold`` (:func:`models.peaks.cap_unconfirmed_p`).
        A change of policy within a station's run ends the run there."""
        key = (segment.station_id, source)
        unconfirmed = (None if unconfirmed_p_threshold is None or unconfirmed_p_threshold <= self.thresholds["P"]
                       else float(unconfirmed_p_threshold))
        rows = [self.phase_rows[p] for p in PHASES] + ([confirm_row] if unconfirmed is not None else [])
        probs = np.where(segment.mask[rows], segment.data[rows], 0.0).astype(np.float64)
        steps = np.full(segment.n_samples, segment.steps_min, np.int32)
        out: list[Pick] = []
        trace = self._traces.get(key)
        if trace is not None and (trace.end != segment.start_sample or trace.unconfirmed != unconfirmed):
            out.extend(self._evaluate(key, trace, trace.end, provenance, source, now_ns))
            self._end_run(key, trace)
            trace = None
        if trace is None:
            trace = _Trace(segment.start_sample, segment.start_sample, probs, steps, segment.start_sample, unconfirmed)
        else:
            trace = _Trace(
                trace.start,
                trace.evaluated,
                np.concatenate([trace.probs, probs], axis=1),
                np.concatenate([trace.steps, steps]),
                trace.run_start,
                unconfirmed,
            )
        held = self.held_samples(unconfirmed is not None)
        out.extend(self._evaluate(key, trace, trace.end - held, provenance, source, now_ns))
        # keep left context before the first unevaluated sample: d samples, and under the policy the raw P
        # that confirms the first of them
        keep_from = max(trace.start, trace.evaluated - held)
        cut = keep_from - trace.start
        self._traces[key] = _Trace(keep_from, trace.evaluated, trace.probs[:, cut:], trace.steps[cut:], trace.run_start,
                                   unconfirmed)
        return out

    def judged_until_ns(self, station_id: str, source: str = "denoised") -> int | None:
        """Time before which every sample of the station's trace has been judged (None: no trace)."""
        trace = self._traces.get((station_id, source))
        return None if trace is None else sample_time_ns(trace.evaluated, self.sampling_rate_hz)

    def judged_since_ns(self, station_id: str, source: str = "denoised") -> int | None:
        """Start (ns) of the trace's run without a hole: samples from there to
        :meth:`judged_until_ns` have been judged; those before it, in a hole, were not (None: no trace)."""
        trace = self._traces.get((station_id, source))
        return None if trace is None else sample_time_ns(trace.run_start, self.sampling_rate_hz)

    def flush(
        self, *, provenance: Provenance = Provenance(), now_ns: int | None = None, station_id: str | None = None
    ) -> list[Pick]:
        """Judge every held-back sample (of ``station_id`` only, when given) with the context there
        is: the run ends (shutdown, a station gone quiet)."""
        out: list[Pick] = []
        for key, trace in list(self._traces.items()):
            if station_id is not None and key[0] != station_id:
                continue
            out.extend(self._evaluate(key, trace, trace.end, provenance, key[1], now_ns))
            self._end_run(key, trace)
            del self._traces[key]
        return out

    def take_ended_runs(self, station_id: str, source: str = "denoised") -> list[tuple[int, int]]:
        """``(since_ns, until_ns)`` of the station's runs that ended since the last call (a hole in the trace, a
        change of pick policy, a flush), oldest first: every sample from ``since_ns`` to ``until_ns`` was judged.
        At most the last 16 are kept."""
        runs = self._ended.pop((station_id, source), ())
        return [(sample_time_ns(a, self.sampling_rate_hz), sample_time_ns(b, self.sampling_rate_hz)) for a, b in runs]

    def _end_run(self, key: tuple[str, str], trace: _Trace) -> None:
        self._ended.setdefault(key, deque(maxlen=16)).append((trace.run_start, trace.end))

    def _evaluate(
        self,
        key: tuple[str, str],
        trace: _Trace,
        until: int,
        provenance: Provenance,
        source: str,
        now_ns: int | None,
    ) -> list[Pick]:
        """Find picks at samples ``[trace.evaluated, until)``; advances ``trace.evaluated``."""
        lo = trace.evaluated - trace.start
        hi = until - trace.start
        if hi <= lo:
            return []
        found: list[tuple[int, str, float, int]] = []
        for phase_idx, phase in enumerate(PHASES):
            p = trace.probs[phase_idx]
            if phase == "P" and trace.unconfirmed is not None:
                # the curves are float32 PhaseNet output held as float64: compare with the threshold as float32
                # holds it, as coldstream evaluate does on the float32 curves (0.45 is 0.44999998 there)
                p = cap_unconfirmed_p(p, trace.probs[len(PHASES)], self.thresholds["P"],
                                      float(np.float32(trace.unconfirmed)), self.confirm_samples)
            for i in local_peaks(p, self.thresholds[phase], self.distance_samples, lo, hi):
                found.append((trace.start + i, phase, float(p[i]), int(trace.steps[i])))
            self.edge_suppressed += len(edge_candidates(p, self.thresholds[phase], self.distance_samples, lo, hi))
        trace.evaluated = until
        found.sort()
        emitted = time.time_ns() if now_ns is None else now_ns
        history = self._history.setdefault(key, _History())
        picks: list[Pick] = []
        station_id, _ = key
        for index, phase, prob, steps in found:
            t_ns = sample_time_ns(index, self.sampling_rate_hz)
            times = history.times[phase]
            while times and times[0] < t_ns - self.history_ns:
                times.popleft()
            if any(abs(t_ns - t) < self.tolerance_ns for t in times):
                self.suppressed += 1
                continue
            times.append(t_ns)
            picks.append(
                Pick(
                    pick_id=make_pick_id(station_id, phase, t_ns, source),
                    station_id=station_id,
                    phase=phase,
                    time_ns=t_ns,
                    probability=prob,
                    source=source,
                    denoiser=provenance.denoiser if source == "denoised" else "",
                    denoiser_version=provenance.denoiser_version if source == "denoised" else "",
                    picker=provenance.picker,
                    picker_version=provenance.picker_version,
                    steps=steps if source == "denoised" else 0,
                    emitted_ns=emitted,
                )
            )
        return picks
