"""The output stage: model outputs of each window -> final stitched segments and picks -> publisher.

Per station, one :class:`~streamer.stitch.Stitcher` for the denoised data and one each for the P/S
probabilities on the denoised (and, with ``picker.raw_comparison``, the raw) data; one
:class:`~streamer.picks.PickDetector` for all. :meth:`OutputStage.handle` is the whole step for one
batch and is pure (no thread, no I/O beyond the ``publish`` callable); the service runs it on a
thread of its own (:meth:`OutputStage.start`), the offline tools call it directly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamer.ack import AckMarker
from streamer.config import Settings
from streamer.metrics import Metrics
from streamer.eew import Lifecycle, fast_candidates, provisional_pick, window_details
from streamer.inventory import Inventory
from streamer.picks import PickDetails, PickDetector, Provenance
from streamer.records import NS_PER_S, OutputItem, Window
from streamer.stitch import Segment, Stitcher, sample_index, sample_time_ns
from streamer.worker import BatchResult, PickerLike

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5

__all__ = ["OutputStage", "StationView"]


# -------------------------------------------------------------------------------------- output stage
@dataclass
class _Station:
    denoised: Stitcher
    probs: Stitcher | None
    raw_probs: Stitcher | None
    # the pick policy of the station's probability run: its unconfirmed P threshold (None: P at the threshold
    # alone); under it the run stacks a fourth row, the raw P that confirms
    unconfirmed: float | None = None
    last_window_mono: float = field(default_factory=time.monotonic)
    next_start_ns: int = 0  # grid start of the window after the newest one stitched
    steps: int = 0
    picks: int = 0
    latency_s: float = 0.0


@dataclass
class StationView:
    """What the live views show per station."""

    station_id: str
    steps: int
    picks: int
    latency_s: float


class OutputStage:
    """Stitchers, pick detector and the hand-over to the publisher, on a thread of its own.

    ``publish(items)`` queues :class:`~streamer.records.OutputItem` objects in order (the
    publisher's ``publish``, built before this stage). After each batch's outputs comes a marker
    item carrying an :class:`~streamer.ack.AckMarker`. ``on_pick(pick)`` is an optional observer
    (live views).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        publish: Callable[[list[OutputItem]], None],
        *,
        window_samples: int,
        sampling_rate_hz: float,
        picker: PickerLike | None = None,
        idle_flush_s: float | None = None,
        max_out_of_order: int = 0,
        on_pick: Callable[[Any], None] | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        queue_max_batches: int = 64,
        inventory: Inventory | None = None,
        component_order: str = "ENZ",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publish = publish
        self.window_samples = window_samples
        self.sampling_rate_hz = sampling_rate_hz
        self.stride_samples = round(settings.windows.stride_s * sampling_rate_hz)
        self.picker = picker
        self.idle_flush_s = 3 * settings.windows.stride_s if idle_flush_s is None else idle_flush_s
        # a window this far behind its station's run is of an earlier time base (the buffers' rule)
        self._jump_back_ns = round(settings.buffers.max_clock_jump_s * NS_PER_S)
        self.max_out_of_order = max_out_of_order
        self.on_pick = on_pick
        self.on_batch = on_batch
        p = settings.picker
        self.detector = PickDetector(sampling_rate_hz, p.p_threshold, p.s_threshold)
        self.inventory = inventory
        self.component_order = component_order
        # the early-warning lifecycle: provisional reports, then final or retracted (streamer.eew)
        self.lifecycle = Lifecycle(settings.eew) if settings.eew.enabled else None
        self.stations: dict[str, _Station] = {}
        self._published_end: dict[str, int] = {}  # station -> sample index after its last published segment
        self._suppressed_seen: dict[str, int] = {}
        self.on_progress = on_progress
        # bounded: a slow or dead output thread makes the worker wait (visible), never eats memory
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, queue_max_batches))
        self._thread: threading.Thread | None = None
        self._provenance = Provenance()
        self._model: tuple[str, str] = ("", "")
        self.batches = 0
        self.segments = 0
        self.picks = 0

    # --- thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coldstream-output", daemon=True)
        self._thread.start()

    def submit(self, result: BatchResult) -> None:
        """Queue a batch for the output thread; waits while ``queue_max_batches`` are queued."""
        self._events.put(("batch", result))
        self.metrics.output_queue_depth.set(self._events.qsize())

    def submit_fast(self, result: BatchResult) -> None:
        """Queue a fast-path batch (trailing windows) for the output thread."""
        self._events.put(("fast", result))
        self.metrics.output_queue_depth.set(self._events.qsize())

    @property
    def alive(self) -> bool:
        """The output thread runs (False before start and after it ended)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Nothing queued: healthy without progress."""
        return self._events.empty()

    def flush_all(self, timeout_s: float | None = None) -> bool:
        """Flush every stitcher and detector (drain); waits until done when the thread runs. False
        when the thread is dead or does not get to it within ``timeout_s``."""
        done = threading.Event()
        if self._thread is None:
            self._flush_all()
            return True
        if not self.alive:
            return False
        try:
            self._events.put(("flush", done), timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the thread (never waits longer than ``timeout_s``, also when it is dead or wedged)."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self._events.put(("stop", None), timeout=timeout_s)
            except queue.Full:
                log.error("output thread does not take events; leaving it behind")
                return
            self._thread.join(timeout_s)

    @property
    def depth(self) -> int:
        return self._events.qsize()

    def _run(self) -> None:
        last_idle_check = time.monotonic()
        try:
            while True:
                try:
                    kind, arg = self._events.get(timeout=POLL_INTERVAL_S)
                except queue.Empty:
                    kind, arg = "tick", None
                self.metrics.output_queue_depth.set(self._events.qsize())
                try:
                    if kind == "stop":
                        return
                    if kind == "batch":
                        self.handle(arg)
                    elif kind == "fast":
                        self.handle_fast(arg)
                    elif kind == "flush":
                        self._flush_all()
                    if time.monotonic() - last_idle_check >= POLL_INTERVAL_S:
                        last_idle_check = time.monotonic()
                        self.flush_idle()
                        self.expire_onsets()
                except Exception:  # recover inside the loop: one bad batch must not stop the outputs
                    log.exception("output stage failed on a %s event", kind)
                finally:
                    if kind == "flush":
                        arg.set()
                    if kind != "tick" and self.on_progress is not None:
                        self.on_progress()
        except BaseException:
            log.critical("output thread died: no more segments or picks are published", exc_info=True)
            raise

    # --- processing (also callable directly, single-threaded) ------------------------------------
    def handle(self, result: BatchResult, result_ids: Sequence[str] = ()) -> None:
        """Stitch one batch, detect picks, queue the outputs and then an :class:`AckMarker` (carrying
        ``result_ids``, the scale-out result entries the batch came from)."""
        self._model = (result.model, result.model_version)
        self._provenance = Provenance(
            result.model,
            result.model_version,
            str(result.extra.get("picker", getattr(self.picker, "name", ""))),
            str(result.extra.get("picker_version", getattr(self.picker, "version", ""))),
        )
        items: list[OutputItem] = []
        touched: set[str] = set()
        for i, w in enumerate(result.windows):
            old = self.stations.get(w.station_id)
            if old is not None and _instrument_changed(old.denoised.channel_names, w.channels):
                # another instrument (HH -> HN): end the run, never blend two instruments
                log.info("%s: channels %s -> %s: new stitching run", w.station_id,
                         ",".join(old.denoised.channel_names), ",".join(w.channels))
                items.extend(self._flush_station(w.station_id))
                del self.stations[w.station_id]
            elif old is not None and w.start_ns <= old.next_start_ns - self._jump_back_ns:
                # the station's clock jumped back (its buffers restarted in an earlier time base): end
                # the old run, its held tail published and its windows done for acknowledgement (a
                # flushed marker of the old time base); the new run's samples already published by the
                # old one are trimmed (segments_trimmed), the first version of a sample stands
                log.info("%s: window %+.0f s from the station's run (a clock jump back): new stitching run",
                         w.station_id, (w.start_ns - old.next_start_ns) / NS_PER_S)
                items.extend(self._flush_station(w.station_id))
                items.append(OutputItem.marker(AckMarker({w.station_id: old.next_start_ns}, flushed=True)))
                del self.stations[w.station_id]
            st = self._station(w)
            st.last_window_mono = time.monotonic()
            st.steps = result.steps
            st.next_start_ns = max(st.next_start_ns, w.start_ns + round(self.settings.windows.stride_s * NS_PER_S))
            st.latency_s = max(0.0, (time.time_ns() - w.newest_arrival_ns) / NS_PER_S)
            touched.add(w.station_id)
            late = st.denoised.late_windows
            items.extend(self._segments(st.denoised.add_window(w, result.denoised[i], steps=result.steps)))
            if st.denoised.late_windows > late:
                self.metrics.stitch_late_windows.inc(st.denoised.late_windows - late)
            if result.probs is not None:
                # the pick policy: the raw P that confirms is stacked as a fourth row and the detector decides on
                # the stacked curves (models.peaks.cap_unconfirmed_p), so the rule holds for the stack
                policy = result.unconfirmed_p_threshold if result.confirm_p is not None else None
                rows = 3 if policy is None else 4
                if st.probs is not None and (st.probs.channels != rows or st.unconfirmed != policy):
                    # results under another policy (scale-out workers with other weights): end the run
                    log.warning("%s: results under another pick policy (unconfirmed P threshold %s -> %s; workers "
                                "with other weights or settings?): new probability run", w.station_id,
                                st.unconfirmed, policy)
                    items.extend(self._picks(st.probs.flush(), "denoised", st.unconfirmed))
                    st.probs = None
                st.unconfirmed = policy
                # PhaseNet's P, S and noise rows each come from all three components: a sample is valid where
                # any component is (by row, P would follow E's mask, S N's: a Z-only station had no picks)
                st.probs = st.probs or self._stitcher(w, rows, "overlap_add", mask_rows="any")
                block = result.probs[i]
                if result.confirm_p is not None and policy is not None:
                    block = np.concatenate([block, result.confirm_p[i][None].astype(block.dtype, copy=False)])
                segs = st.probs.add_window(w, block, steps=result.steps)
                items.extend(self._picks(segs, "denoised", policy))
            if result.raw_probs is not None:
                st.raw_probs = st.raw_probs or self._stitcher(w, 3, "overlap_add", mask_rows="any")
                segs = st.raw_probs.add_window(w, result.raw_probs[i], steps=0)
                items.extend(self._picks(segs, "raw"))
        if self.lifecycle is not None:
            for sid in sorted(touched):
                # runs that ended within this batch (a hole, a change of pick policy) were judged to their end
                for since_ns, end_ns in self.detector.take_ended_runs(sid, "denoised"):
                    items.extend(self._lifecycle_items(self.lifecycle.judged(sid, end_ns, since_ns=since_ns)))
                until = self.detector.judged_until_ns(sid, "denoised")
                since = self.detector.judged_since_ns(sid, "denoised")
                if until is not None:
                    items.extend(self._lifecycle_items(self.lifecycle.judged(sid, until, since_ns=since)))
        safe = {sid: self._covered_ns(sid) for sid in touched}
        marker = AckMarker({k: v for k, v in safe.items() if v is not None}, result_ids=tuple(result_ids))
        items.append(OutputItem.marker(marker))
        self.publish(items)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(result)

    def handle_fast(self, result: BatchResult) -> None:
        """Provisional picks of one fast-path batch (trailing windows) -> the publisher. Nothing here
        is acknowledged: the final path's windows carry the data's acknowledgement."""
        if self.lifecycle is None or result.probs is None:
            return
        provenance = Provenance(
            result.model, result.model_version,
            str(result.extra.get("picker", "")), str(result.extra.get("picker_version", "")),
        )
        eew = self.settings.eew
        picks = []
        for i, w in enumerate(result.windows):
            triggers = list(w.meta.get("triggers_ns") or [])  # type: ignore[call-overload]
            for cand in fast_candidates(result.probs[i], w.mask, eew, self.sampling_rate_hz, triggers, w.start_ns):
                details = window_details(w, cand.index, self.inventory, self.sampling_rate_hz, result.finished_ns,
                                         self.component_order)
                pick = provisional_pick(w, cand, details, provenance, self.sampling_rate_hz, result.steps)
                if self._final_passed(pick):
                    continue  # the final path has judged these samples already: too late to report
                reported = self.lifecycle.provisional(pick)
                if reported is not None:
                    picks.append(reported)
        items = self._lifecycle_items(picks)
        if items:
            self.publish(items)

    def _final_passed(self, pick: Any) -> bool:
        until = self.detector.judged_until_ns(pick.station_id, "denoised")
        return until is not None and pick.time_ns + self.lifecycle.tolerance_ns < until  # type: ignore[union-attr]

    def _lifecycle_items(self, picks: list[Any]) -> list[OutputItem]:
        out = []
        for pick in picks:
            self.metrics.eew_picks.labels(phase=pick.phase, status=pick.status).inc()
            out.append(OutputItem.of_pick(pick))
            if self.on_pick is not None:
                self.on_pick(pick)
        return out

    def expire_onsets(self) -> None:
        """Retract open onsets that no final decision reached in ``eew.retract_after_s``."""
        if self.lifecycle is not None:
            items = self._lifecycle_items(self.lifecycle.expire())
            if items:
                self.publish(items)

    def seed_open_onsets(self, picks: list[Any]) -> None:
        """Provisional onsets an earlier run left open (from Redis): this run confirms or retracts them."""
        if self.lifecycle is not None and picks:
            self.lifecycle.seed(picks)
            log.info("%d provisional picks of an earlier run are open; the final path decides them", len(picks))

    def _station(self, w: Window) -> _Station:
        st = self.stations.get(w.station_id)
        if st is None:
            st = _Station(self._stitcher(w, 3, self.settings.stitch.mode), None, None)
            self.stations[w.station_id] = st
        return st

    def _stitcher(self, w: Window, channels: int, mode: Any, mask_rows: Any = "per_channel") -> Stitcher:
        return Stitcher(
            self.window_samples,
            self.stride_samples,
            mode,
            channels=channels,
            mask_rows=mask_rows,
            max_out_of_order=self.max_out_of_order,
            station_id=w.station_id,
            sampling_rate_hz=self.sampling_rate_hz,
            channel_names=tuple(w.channels),
        )

    def seed_published_ends(self, end_ns: dict[str, int]) -> None:
        """Where each station's published segments end (``{prefix}:latest`` in Redis, read at start-up),
        so that a restart never publishes a second version of samples already out."""
        for sid, t in end_ns.items():
            idx = sample_index(t, self.sampling_rate_hz)
            self._published_end[sid] = max(self._published_end.get(sid, idx), idx)

    def _segments(self, segs: list[Segment]) -> list[OutputItem]:
        out: list[OutputItem] = []
        for seg in segs:
            kept = self._after_published(seg)
            if kept is not None:
                out.append(OutputItem.of_segment(kept, *self._model))
        self.segments += len(out)
        return out

    def _after_published(self, seg: Segment) -> Segment | None:
        """The part of ``seg`` after what this station already published: a flushed tail (outage,
        restart, instrument change) was published from fewer windows than a later run computes for the
        same samples, and a consumer must never receive two versions of a sample. The first stands."""
        end = self._published_end.get(seg.station_id)
        cut = 0 if end is None else max(0, min(end - seg.start_sample, seg.n_samples))
        self._published_end[seg.station_id] = max(end or seg.end_sample, seg.end_sample)
        if cut == 0:
            return seg
        self.metrics.segments_trimmed.inc(cut)
        if cut >= seg.n_samples:
            return None
        return replace(seg, start_sample=seg.start_sample + cut, data=seg.data[:, cut:], mask=seg.mask[:, cut:])

    def _picks(self, segs: list[Segment], source: str, unconfirmed: float | None = None) -> list[OutputItem]:
        out: list[OutputItem] = []
        for seg in segs:
            picks = self.detector.process(seg, source=source, provenance=self._provenance,
                                          unconfirmed_p_threshold=unconfirmed)
            out.extend(self._emit_picks(picks))
        return out

    def _emit_picks(self, picks: list[Any]) -> list[OutputItem]:
        out = []
        for pick in picks:
            if self.lifecycle is not None and pick.source == "denoised":
                pick = self.lifecycle.final(self._with_station_details(pick))
                self.metrics.eew_picks.labels(phase=pick.phase, status="final").inc()
            out.append(OutputItem.of_pick(pick))
            self._count_pick(pick)
        d = self.detector
        for reason, total in (("run_edge", d.edge_suppressed), ("duplicate", d.suppressed)):
            seen = self._suppressed_seen.get(reason, 0)
            if total > seen:
                self.metrics.picks_suppressed.labels(reason=reason).inc(total - seen)
                self._suppressed_seen[reason] = total
        return out

    def _with_station_details(self, pick: Any) -> Any:
        """A final pick with the station's coordinates (from the inventory, when there is one)."""
        if self.inventory is None:
            return pick
        lat = lon = elev = None
        for seed_id, epochs in self.inventory.epochs.items():
            if seed_id.rsplit(".", 1)[0] == pick.station_id:
                ep = next((e for e in epochs if e.covers(pick.time_ns)), None)
                if ep is not None:
                    lat, lon, elev = ep.latitude_deg, ep.longitude_deg, ep.elevation_m
                    break
        return replace(pick, details=PickDetails(latitude_deg=lat, longitude_deg=lon, elevation_m=elev))

    def _count_pick(self, pick: Any) -> None:
        self.picks += 1
        st = self.stations.get(pick.station_id)
        if st is not None:
            st.picks += 1
        if self.on_pick is not None:
            self.on_pick(pick)

    def _covered_ns(self, station_id: str) -> int | None:
        """Time before which every output of the station is final and queued."""
        st = self.stations[station_id]
        ends: list[int] = []
        for stitcher, lag in (
            (st.denoised, 0),
            (st.probs, self.detector.held_samples(st.unconfirmed is not None)),
            (st.raw_probs, self.detector.latency_samples),
        ):
            if stitcher is None:
                continue
            end = stitcher.final_end_sample
            if end is None:
                return None
            ends.append(end - lag)
        return sample_time_ns(min(ends), self.sampling_rate_hz)

    def _flush_station(self, station_id: str) -> list[OutputItem]:
        """Emit the station's held tails: stitchers, then the pick detector's held samples."""
        st = self.stations[station_id]
        items = self._segments(st.denoised.flush())
        if st.probs is not None:
            items.extend(self._picks(st.probs.flush(), "denoised", st.unconfirmed))
        if st.raw_probs is not None:
            items.extend(self._picks(st.raw_probs.flush(), "raw"))
        since = self.detector.judged_since_ns(station_id, "denoised")  # before the flush ends the run
        items.extend(self._emit_picks(self.detector.flush(provenance=self._provenance, station_id=station_id)))
        ended = self.detector.take_ended_runs(station_id, "denoised")
        if self.lifecycle is not None:
            for since_ns, end_ns in ended:  # runs that ended before (a hole, a change of pick policy)
                items.extend(self._lifecycle_items(self.lifecycle.judged(station_id, end_ns, since_ns=since_ns)))
            # the run ended: every sample the final path had is judged
            end = st.denoised.final_end_sample
            if end is not None:
                until = sample_time_ns(end, self.sampling_rate_hz)
                items.extend(self._lifecycle_items(self.lifecycle.judged(station_id, until, since_ns=since)))
        return items

    def _flush_all(self) -> None:
        items: list[OutputItem] = []
        for sid in list(self.stations):
            items.extend(self._flush_station(sid))
        items.extend(self._emit_picks(self.detector.flush(provenance=self._provenance)))
        # the next window of each station needs data from its start on: acknowledge up to there
        safe = {sid: st.next_start_ns for sid, st in self.stations.items()}
        items.append(OutputItem.marker(AckMarker(safe, flushed=True)))
        self.publish(items)

    def flush_idle(self) -> None:
        """Emit the held tail of stations that sent no window for ``idle_flush_s`` (the output thread
        calls it; without that thread, whoever calls :meth:`handle` must call it too)."""
        now = time.monotonic()
        for sid, st in list(self.stations.items()):
            if now - st.last_window_mono >= self.idle_flush_s and st.denoised.final_end_sample is not None:
                items = self._flush_station(sid)
                items.append(OutputItem.marker(AckMarker({sid: st.next_start_ns}, flushed=True)))
                self.publish(items)
                del self.stations[sid]

    def views(self) -> list[StationView]:
        return [
            StationView(sid, st.steps, st.picks, st.latency_s) for sid, st in sorted(list(self.stations.items()))
        ]


def _instrument_changed(old: Sequence[str], new: Sequence[str]) -> bool:
    """Another band/instrument in any component slot both name (a missing component, "", is no change)."""
    return any(a and b and a[:2] != b[:2] for a, b in zip(old, new))
