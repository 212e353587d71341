"""The live service: SeedLink -> ingest -> worker (denoiser + PhaseNet) -> stitch + picks -> Redis.

Threads and tasks (only this module starts them and installs signal handlers):

- the asyncio loop in the main thread: one :class:`~streamer.seedlink.SeedLinkSource` per server
  (``Ingestor.add_payload`` runs in ``on_packet``), a poll timer (silent stations' windows, gauges,
  idle stitchers, health), the periodic state save and the watchdog;
- the worker thread (:class:`~streamer.worker.Worker`): batches, denoises, runs the picker;
- the output thread (:class:`OutputStage`): per-station stitchers for the denoised data and the P/S
  probabilities, the pick detector, and the hand-over to the publisher;
- the publisher thread (:class:`~streamer.publish.RedisPublisher`), and the metrics HTTP server.

Acknowledgement (SeedLink state advances only behind what Redis accepted): :class:`AckBook` keeps,
per station, the windows that are not yet fully published. After each batch the output stage queues
its segments and picks and then a *marker* carrying, per station, the time up to which every output
is final and queued. The publisher returns the marker only after Redis accepted everything queued
before it; then windows ending at or before that time are done, and the station's safe time is the
start of its oldest window not done (shed windows count as done: they will never be published, and
that is counted in ``coldstream_windows_shed_total``). ``StateTracker.acknowledge`` moves the saved
sequence over packets whose data end at or before the safe time, so a restart replays everything
needed to rebuild unpublished outputs, and the idempotent output IDs absorb the repeats.

Shutdown: the first SIGTERM/SIGINT sends ``STOPPING=1``, stops SeedLink, lets the worker finish the
queued windows, flushes stitchers and pick detectors, publishes, acknowledges and writes the state
file, all within ``service.drain_timeout_s``; exit status 0. A second signal (or the timeout) cancels:
queued windows are abandoned (their data are replayed after a restart, since they were never
acknowledged), the state acknowledged so far is written, exit status 1.

Health (systemd watchdog): stages ``ingest``, ``worker`` and ``publisher``. Ingest shows progress for
every packet; no data at all for ``service.watchdog_stall_s`` withholds the pings (a silent upstream
or a wedged connection gets the daemon restarted). The worker is idle (healthy) while its queue is
empty, and the publisher while its backlog is empty or while it is retrying an unreachable Redis (a
restart cannot fix Redis and would lose the backlog); either stalls only with work pending and no
progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.config import Settings
from streamer.ingest import Ingestor
from streamer.metrics import Metrics, serve_metrics
from streamer.picks import PickDetector, Provenance
from streamer.publish import OutputItem, RedisPublisher
from streamer.records import NS_PER_S, PacketRef, Window
from streamer.stitch import Segment, Stitcher, sample_index, sample_time_ns
from streamer.worker import BatchResult, DenoiserLike, PickerLike, Worker

log = logging.getLogger(__name__)

STAGES = ("ingest", "worker", "publisher")
POLL_INTERVAL_S = 0.5
SOURCE_STOP_S = 3.0  # how long SeedLink tasks get to end after stop before they are cancelled


class ServiceError(Exception):
    """The service cannot start (bad weights, unusable picker, Redis URL, ...)."""


def station_key(station_id: str) -> str:
    """SeedLink station key ``NET_STA`` of a ``NET.STA.LOC`` station id."""
    parts = station_id.split(".")
    return f"{parts[0]}_{parts[1]}" if len(parts) >= 2 else station_id


# ---------------------------------------------------------------------------------- acknowledgement
class AckBook:
    """Which windows of each station are not yet fully published (thread-safe, pure bookkeeping)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[int, int]] = {}  # station -> {start_ns: end_ns}
        self._published_ns: dict[str, int] = {}

    def add(self, windows: Iterable[Window]) -> None:
        with self._lock:
            for w in windows:
                self._pending.setdefault(w.station_id, {})[w.start_ns] = w.end_ns

    def drop(self, windows: Iterable[Window]) -> None:
        """Windows that will never be published (shed): no longer hold the safe time back."""
        with self._lock:
            for w in windows:
                self._pending.get(w.station_id, {}).pop(w.start_ns, None)

    def published_through(self, station_id: str, until_ns: int, flushed: bool = False) -> None:
        """Every output of ``station_id`` before ``until_ns`` was accepted by Redis; with ``flushed``
        the stitchers were flushed, so every window starting before ``until_ns`` is done."""
        with self._lock:
            pend = self._pending.get(station_id, {})
            done = [s for s, e in pend.items() if (s < until_ns if flushed else e <= until_ns)]
            for start in done:
                del pend[start]
            self._published_ns[station_id] = max(self._published_ns.get(station_id, until_ns), until_ns)

    def safe_ns(self, station_id: str) -> int | None:
        """Start of the oldest window not fully published, else the published time; None if unknown."""
        with self._lock:
            pend = self._pending.get(station_id)
            if pend:
                return min(pend)
            return self._published_ns.get(station_id)

    def safe_by_key(self, station_ids: Iterable[str]) -> dict[str, int]:
        """Safe time per SeedLink key ``NET_STA`` (the minimum over its location codes)."""
        out: dict[str, int] = {}
        for sid in station_ids:
            s = self.safe_ns(sid)
            if s is None:
                continue
            key = station_key(sid)
            out[key] = min(out.get(key, s), s)
        return out

    def stations(self) -> list[str]:
        with self._lock:
            return sorted(set(self._pending) | set(self._published_ns))

    def pending_windows(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())


# -------------------------------------------------------------------------------------- output stage
@dataclass
class _Station:
    denoised: Stitcher
    probs: Stitcher | None
    raw_probs: Stitcher | None
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

    ``publish(items)`` queues :class:`~streamer.publish.OutputItem` objects in order (normally
    ``RedisPublisher.publish``). Markers carry ``{"safe": {station_id: until_ns}}`` tokens; see
    :class:`AckBook`. ``on_pick(pick)`` is an optional observer (live views).
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
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publish = publish
        self.window_samples = window_samples
        self.sampling_rate_hz = sampling_rate_hz
        self.stride_samples = round(settings.windows.stride_s * sampling_rate_hz)
        self.picker = picker
        self.idle_flush_s = 3 * settings.windows.stride_s if idle_flush_s is None else idle_flush_s
        self.max_out_of_order = max_out_of_order
        self.on_pick = on_pick
        self.on_batch = on_batch
        p = settings.picker
        self.detector = PickDetector(sampling_rate_hz, p.p_threshold, p.s_threshold)
        self.stations: dict[str, _Station] = {}
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
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
        self._events.put(("batch", result))

    def flush_all(self, timeout_s: float | None = None) -> bool:
        """Flush every stitcher and detector (drain); waits until done when the thread runs."""
        done = threading.Event()
        if self._thread is None:
            self._flush_all()
            return True
        self._events.put(("flush", done))
        return done.wait(timeout_s)

    def stop(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._events.put(("stop", None))
            self._thread.join(timeout_s)

    @property
    def depth(self) -> int:
        return self._events.qsize()

    def _run(self) -> None:
        last_idle_check = time.monotonic()
        while True:
            try:
                kind, arg = self._events.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                kind, arg = "tick", None
            try:
                if kind == "stop":
                    return
                if kind == "batch":
                    self.handle(arg)
                elif kind == "flush":
                    self._flush_all()
            except Exception:  # recover inside the loop: one bad batch must not stop the outputs
                log.exception("output stage failed on a %s event", kind)
            finally:
                if kind == "flush":
                    arg.set()
            if time.monotonic() - last_idle_check >= POLL_INTERVAL_S:
                last_idle_check = time.monotonic()
                self._flush_idle()

    # --- processing (also callable directly, single-threaded) ------------------------------------
    def handle(self, result: BatchResult, token_extra: dict[str, Any] | None = None) -> None:
        """Stitch one batch, detect picks, queue the outputs and then an acknowledgement marker."""
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
            st = self._station(w)
            st.last_window_mono = time.monotonic()
            st.steps = result.steps
            st.next_start_ns = max(st.next_start_ns, w.start_ns + round(self.settings.windows.stride_s * NS_PER_S))
            st.latency_s = max(0.0, (time.time_ns() - w.newest_arrival_ns) / NS_PER_S)
            touched.add(w.station_id)
            items.extend(self._segments(st.denoised.add_window(w, result.denoised[i], steps=result.steps)))
            if result.probs is not None:
                st.probs = st.probs or self._stitcher(w, 3, "overlap_add")
                segs = st.probs.add_window(w, result.probs[i], steps=result.steps)
                items.extend(self._picks(segs, "denoised"))
            if result.raw_probs is not None:
                st.raw_probs = st.raw_probs or self._stitcher(w, 3, "overlap_add")
                segs = st.raw_probs.add_window(w, result.raw_probs[i], steps=0)
                items.extend(self._picks(segs, "raw"))
        safe = {sid: self._covered_ns(sid) for sid in touched}
        token: dict[str, Any] = {"safe": {k: v for k, v in safe.items() if v is not None}}
        token.update(token_extra or {})
        items.append(OutputItem.marker(token))
        self.publish(items)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(result)

    def _station(self, w: Window) -> _Station:
        st = self.stations.get(w.station_id)
        if st is None:
            st = _Station(self._stitcher(w, 3, self.settings.stitch.mode), None, None)
            self.stations[w.station_id] = st
        return st

    def _stitcher(self, w: Window, channels: int, mode: Any) -> Stitcher:
        return Stitcher(
            self.window_samples,
            self.stride_samples,
            mode,
            channels=channels,
            max_out_of_order=self.max_out_of_order,
            station_id=w.station_id,
            sampling_rate_hz=self.sampling_rate_hz,
            channel_names=tuple(w.channels),
        )

    def _segments(self, segs: list[Segment]) -> list[OutputItem]:
        self.segments += len(segs)
        return [OutputItem.of_segment(s, *self._model) for s in segs]

    def _picks(self, segs: list[Segment], source: str) -> list[OutputItem]:
        out: list[OutputItem] = []
        for seg in segs:
            for pick in self.detector.process(seg, source=source, provenance=self._provenance):
                out.append(OutputItem.of_pick(pick))
                self._count_pick(pick)
        return out

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
            (st.probs, self.detector.latency_samples),
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
        st = self.stations[station_id]
        items = self._segments(st.denoised.flush())
        if st.probs is not None:
            items.extend(self._picks(st.probs.flush(), "denoised"))
        if st.raw_probs is not None:
            items.extend(self._picks(st.raw_probs.flush(), "raw"))
        return items

    def _flush_all(self) -> None:
        items: list[OutputItem] = []
        for sid in list(self.stations):
            items.extend(self._flush_station(sid))
        for pick in self.detector.flush(provenance=self._provenance):
            items.append(OutputItem.of_pick(pick))
            self._count_pick(pick)
        # the next window of each station needs data from its start on: acknowledge up to there
        safe = {sid: st.next_start_ns for sid, st in self.stations.items()}
        items.append(OutputItem.marker({"safe": safe, "flushed": True}))
        self.publish(items)

    def _flush_idle(self) -> None:
        """Emit the held tail of stations that sent no window for ``idle_flush_s``."""
        now = time.monotonic()
        for sid, st in list(self.stations.items()):
            if now - st.last_window_mono >= self.idle_flush_s and st.denoised.final_end_sample is not None:
                items = self._flush_station(sid)
                items.append(OutputItem.marker({"safe": {sid: st.next_start_ns}, "flushed": True}))
                self.publish(items)
                del self.stations[sid]

    def views(self) -> list[StationView]:
        return [
            StationView(sid, st.steps, st.picks, st.latency_s) for sid, st in sorted(list(self.stations.items()))
        ]




# -------------------------------------------------------------------------------------------- service
def load_denoiser(settings: Settings) -> DenoiserLike:
    """The configured denoiser (shipped weights when ``model.weights`` is unset); fails fast."""
    from models.denoiser import Denoiser
    from models.errors import ModelsError

    try:
        return Denoiser.load(
            settings.model.weights,
            device=settings.worker.device,
            mixed_precision=settings.worker.mixed_precision,
            sha256=settings.model.sha256,
            residual_mix=settings.model.residual_mix,
        )
    except (ModelsError, OSError) as exc:
        raise ServiceError(f"cannot load the denoiser: {exc}") from exc


def load_picker(settings: Settings, device: str = "cpu") -> PickerLike:
    """The configured PhaseNet picker; raises ServiceError when its weights are unavailable."""
    from models.errors import ModelsError
    from models.picker import Picker

    p = settings.picker
    try:
        return Picker(p.model, p.weights_name, cache_root=p.seisbench_cache, device=device)
    except (ModelsError, OSError) as exc:
        raise ServiceError(f"cannot load the picker: {exc}") from exc


class Service:
    """The whole pipeline in one process (``coldstream run`` and ``coldstream demo``).

    ``denoiser``/``picker``: already loaded models (tests, demo); None loads them from ``settings``
    (the picker only when ``picker.enabled``). ``environ`` is handed to the systemd notifier.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        denoiser: DenoiserLike | None = None,
        picker: PickerLike | None = None,
        *,
        load_picker_model: bool = True,
        environ: dict[str, str] | None = None,
        on_pick: Callable[[Any], None] | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
        role: str = "all",
    ) -> None:
        from streamer.notify import HealthMonitor, Notifier

        if role not in ("all", "ingest"):
            raise ValueError(f"unknown service role {role!r}")
        self.role = role
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.denoiser = denoiser
        self.picker = picker
        self.load_picker_model = load_picker_model
        self.notifier = Notifier(os.environ if environ is None else environ)
        self.health = HealthMonitor(list(STAGES), settings.service.watchdog_stall_s, metrics=self.metrics)
        self.on_pick = on_pick
        self.on_batch = on_batch
        self.acks = AckBook()
        self.exit_code = 0
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.tracker: Any = None
        self.worker: Worker | None = None
        self.output: OutputStage | None = None
        self.publisher: RedisPublisher | None = None
        self.ingestor: Ingestor | None = None
        self.sources: list[Any] = []
        self.metrics_server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._cancel: asyncio.Event | None = None
        self._signals = 0
        self._cancelled = threading.Event()  # seen by the drain thread: stop waiting at once
        # scale-out ingest role
        self._push_queue: queue.Queue[Window] = queue.Queue()
        self._scaleout_stop = threading.Event()
        self._scaleout_threads: list[threading.Thread] = []
        self.window_queue: Any = None
        self.result_queue: Any = None
        self.collector: ResultCollector | None = None
        self.windows_pushed = 0

    # --- start-up ------------------------------------------------------------------------------------
    def load_models(self) -> None:
        """Load the denoiser (and picker) and run the warm-up inference; fails fast. The ingest role
        of scale-out runs no model: it only builds the output stage."""
        if self.role == "ingest":
            self._build_output(max_out_of_order=self.settings.worker.scaleout_max_out_of_order)
            return
        t0 = time.perf_counter()
        self.notifier.extend_timeout(300)
        self.notifier.status("loading models")
        if self.denoiser is None:
            self.denoiser = load_denoiser(self.settings)
        if self.picker is None and self.load_picker_model and self.settings.picker.enabled:
            self.picker = load_picker(self.settings, str(getattr(self.denoiser, "device", "cpu")))
        self.metrics.build_info.info(
            {
                "model": str(getattr(self.denoiser, "name", "")),
                "model_version": str(getattr(self.denoiser, "version", "")),
                "picker": str(getattr(self.picker, "name", "none")),
            }
        )
        self._build_worker()
        self.notifier.extend_timeout(300)
        assert self.worker is not None
        self.worker.warm_up()
        if self.picker is not None:
            spec = getattr(self.denoiser, "spec", None)
            n = int(getattr(spec, "window_samples", 3000))
            self.picker.predict(np.zeros((1, 3, n), np.float32))
        self.metrics.model_load_seconds.set(time.perf_counter() - t0)
        log.info("models loaded and warmed up in %.1f s", time.perf_counter() - t0)

    def _spec(self) -> Any:
        from models.spec import DEFAULT_SPEC

        return getattr(self.denoiser, "spec", None) or DEFAULT_SPEC

    def _build_output(self, max_out_of_order: int = 0) -> None:
        spec = self._spec()
        self.output = OutputStage(
            self.settings,
            self.metrics,
            self._publish,
            window_samples=spec.window_samples,
            sampling_rate_hz=spec.sampling_rate_hz,
            picker=self.picker,
            max_out_of_order=max_out_of_order,
            on_pick=self.on_pick,
            on_batch=self.on_batch,
        )

    def _build_worker(self) -> None:
        assert self.denoiser is not None
        s = self.settings
        self._build_output()
        self.worker = Worker.from_settings(
            self.denoiser,
            self.metrics,
            self._on_result,
            s.worker,
            s.windows.stride_s,
            picker=self.picker,
            raw_picker=s.picker.raw_comparison,
            on_shed=self._on_shed,
            on_progress=lambda: self.health.progress("worker"),
        )

    def _publish(self, items: list[OutputItem]) -> None:
        assert self.publisher is not None
        self.publisher.publish(items)

    def _on_result(self, result: BatchResult) -> None:
        assert self.output is not None
        self.output.submit(result)

    def _on_shed(self, windows: list[Window], reason: str) -> None:
        self.acks.drop(windows)

    def _on_acked(self, items: list[OutputItem]) -> None:
        """Publisher thread: Redis accepted ``items``; advance the SeedLink state behind them."""
        self.health.progress("publisher")
        for item in items:
            if item.kind != "marker" or not isinstance(item.token, dict):
                continue
            flushed = bool(item.token.get("flushed", False))
            for sid, until in item.token.get("safe", {}).items():
                self.acks.published_through(sid, until, flushed)
            if item.token.get("results") and self.result_queue is not None:
                self.result_queue.ack(item.token["results"])
            if self.tracker is not None:
                for key, safe in self.acks.safe_by_key(item.token.get("safe", {})).items():
                    self.tracker.acknowledge(key, safe)

    # --- packets -------------------------------------------------------------------------------------
    def on_packet(self, payload: bytes, ref: PacketRef, arrival_ns: int) -> None:
        """Event loop: one SeedLink payload in; windows that became ready go to the worker."""
        assert self.ingestor is not None
        windows = self.ingestor.add_payload(payload, arrival_ns, ref)
        self.health.progress("ingest")
        self._submit(windows)

    def _submit(self, windows: list[Window]) -> None:
        if not windows:
            return
        self.acks.add(windows)
        if self.role == "ingest":
            if self.collector is not None:
                self.collector.expect(windows)
            for w in windows:
                self._push_queue.put(w)
            return
        assert self.worker is not None
        self.worker.submit(windows)

    # --- running -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Blocking main for the CLI: installs SIGTERM/SIGINT handlers; returns the exit status."""
        return asyncio.run(self.run_async(install_signals=True))

    async def run_async(self, install_signals: bool = False) -> int:
        from streamer.seedlink import StateTracker, build_sources, save_state_periodically

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._cancel = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.request_stop)
        if self.output is None:
            await asyncio.to_thread(self.load_models)
        s = self.settings
        self.tracker = StateTracker.from_settings(s.seedlink, self.metrics)
        self.publisher = RedisPublisher(s.redis, self.metrics, self._on_acked)
        self.publisher.start()
        assert self.output is not None
        if self.role == "ingest":
            self._start_scaleout_ingest()
        else:
            assert self.worker is not None
            self.output.start()
            self.worker.start()
        self.ingestor = Ingestor(self._spec(), s.buffers, s.windows, self.metrics)
        if s.metrics.enabled:
            self.metrics_server = serve_metrics(self.metrics, s.metrics.bind_address, s.metrics.port)
        self.sources = build_sources(s.seedlink, self.on_packet, self.tracker, self.metrics)
        tasks = [asyncio.create_task(src.run(self._stop), name=f"seedlink-{src.name}") for src in self.sources]
        tasks.append(asyncio.create_task(save_state_periodically(self.tracker, self._stop), name="state-save"))
        tasks.append(asyncio.create_task(self._poll_loop(), name="poll"))
        tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        self.metrics.ready.set(1)
        self.notifier.ready(f"ready: {len(self.sources)} SeedLink server(s)")
        self.ready.set()
        log.info("coldstream ready")
        try:
            await self._stop.wait()
            await self._shutdown(tasks)
        finally:
            self.stopped.set()
        return self.exit_code

    def request_stop(self) -> None:
        """First call: graceful drain; second call: cancel. Safe from any thread."""
        loop = self._loop
        if loop is None:
            return
        if threading.current_thread() is threading.main_thread() and loop.is_running():
            self._on_signal()
        else:
            loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        assert self._stop is not None and self._cancel is not None
        self._signals += 1
        if self._signals == 1:
            log.info("stop requested: draining (second signal cancels)")
            self.notifier.stopping("draining")
            self._stop.set()
        else:
            log.warning("second stop request: cancelling the drain")
            self._cancelled.set()
            self._cancel.set()

    async def _poll_loop(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=POLL_INTERVAL_S)
            if self._stop.is_set():
                return
            self._poll_once()

    def _poll_once(self) -> None:
        assert self.ingestor is not None and self.publisher is not None
        self._submit(self.ingestor.poll())
        self.ingestor.update_gauges()
        if self.worker is not None and self.worker.idle:
            self.health.idle("worker")
        elif self.role == "ingest" and self._push_queue.empty():
            self.health.idle("worker")  # the workers are other processes; our side is the push
        if self.publisher.backlog_size == 0 or not self.publisher.connected:
            self.health.idle("publisher")

    async def _watchdog(self) -> None:
        from streamer.notify import WatchdogPinger

        assert self._stop is not None
        pinger = WatchdogPinger(self.notifier, self.health, self.metrics, status=self.status_line)
        await pinger.run_async(self._stop)

    def status_line(self) -> str:
        stations = len(self.ingestor.stations()) if self.ingestor is not None else 0
        depth = self.worker.depth if self.worker is not None else 0
        backlog = self.publisher.backlog_size if self.publisher is not None else 0
        return f"stations={stations} queue={depth} redis_backlog={backlog}"

    # --- shutdown ------------------------------------------------------------------------------------
    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        assert self._cancel is not None
        deadline = time.monotonic() + self.settings.service.drain_timeout_s
        # the tasks end once stop is set; a SeedLink session stuck closing its socket must not hold
        # the drain, so it gets a few seconds and is then cancelled
        _done, stuck = await asyncio.wait(tasks, timeout=min(SOURCE_STOP_S, self.settings.service.drain_timeout_s))
        for task in stuck:
            log.warning("task %s did not stop within %.0f s; cancelling it", task.get_name(), SOURCE_STOP_S)
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=1.0)
        drain = asyncio.create_task(asyncio.to_thread(self._drain, deadline))
        cancel = asyncio.create_task(self._cancel.wait())
        remaining = max(deadline - time.monotonic(), 0.1)
        done, _ = await asyncio.wait({drain, cancel}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        drained = drain in done and bool(drain.result())
        cancel.cancel()
        if not drained:
            self._cancelled.set()
            log.warning("drain %s: abandoning queued work (it is replayed after a restart)",
                        "cancelled" if self._cancel.is_set() else "timed out")
            self.exit_code = 1
            if self.worker is not None:
                self.worker.cancel()
        self._close(flush_s=0.0 if not drained else 1.0)

    def _drain(self, deadline: float) -> bool:
        """Worker thread drains, output flushes, publisher writes, state is acknowledged. True if done."""
        assert self.output is not None and self.publisher is not None
        def left() -> float:
            return 0.0 if self._cancelled.is_set() else max(deadline - time.monotonic(), 0.0)

        if self.role == "ingest":
            return self._drain_scaleout_ingest(left)
        assert self.worker is not None
        if not self.worker.stop(drain=True, timeout_s=left()):
            return False
        if not self.output.flush_all(timeout_s=left()):
            return False
        ok = self.publisher.flush(timeout_s=left())
        log.info("drained: %d batches, publisher %s", self.worker.batches_done, "flushed" if ok else "NOT flushed")
        return ok

    # --- scale-out ingest role ------------------------------------------------------------------------
    def _start_scaleout_ingest(self) -> None:
        from streamer.publish import WindowQueue, connect

        r = self.settings.redis
        client = connect(r)
        name = f"ingest-{os.getpid()}"
        self.window_queue = WindowQueue(client, r.stream_prefix, "workers", name, stream=WINDOWS_STREAM, maxlen=r.maxlen)
        self.window_queue.ensure_group()
        self.result_queue = WindowQueue(client, r.stream_prefix, "collector", name, stream=RESULTS_STREAM, maxlen=r.maxlen)
        self.result_queue.ensure_group()
        assert self.output is not None
        give_up_s = 2 * self.settings.worker.reclaim_idle_s
        self.collector = ResultCollector(self.output, self.result_queue, self.metrics, give_up_s=give_up_s)
        for target, tname in ((self._push_loop, "coldstream-push"), (self.collector.run, "coldstream-collect")):
            t = threading.Thread(target=target, args=(self._scaleout_stop,), name=tname, daemon=True)
            t.start()
            self._scaleout_threads.append(t)

    def _push_loop(self, stop: threading.Event) -> None:
        while not (stop.is_set() and self._push_queue.empty()):
            try:
                w = self._push_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            while True:
                try:
                    self.window_queue.push(w)
                    self.windows_pushed += 1
                    self.health.progress("worker")
                    break
                except Exception as exc:  # Redis down: keep the window, retry
                    log.warning("window push failed (%s); retrying", exc)
                    time.sleep(1.0)

    def _drain_scaleout_ingest(self, left: Callable[[], float]) -> bool:
        assert self.output is not None and self.publisher is not None
        self._scaleout_stop.set()
        for t in self._scaleout_threads:
            t.join(left())
        if any(t.is_alive() for t in self._scaleout_threads):
            return False
        return self.publisher.flush(timeout_s=left())

    def _close(self, flush_s: float) -> None:
        self._scaleout_stop.set()
        if self.output is not None:
            self.output.stop(timeout_s=2.0)
        if self.publisher is not None:
            self.publisher.close(flush_timeout_s=flush_s)
        if self.tracker is not None:
            self.tracker.save()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.metrics.ready.set(0)
        self.notifier.close()
        log.info("coldstream stopped (exit status %d)", self.exit_code)


# ------------------------------------------------------------------------------------------ scale-out
RESULT_ROWS = ("denoised", "probs", "raw_probs")
WINDOWS_STREAM = "windows"
RESULTS_STREAM = "results"


def encode_result(window: Window, result: BatchResult, i: int) -> Window:
    """Worker output for ``result.windows[i]`` as a Window for the results stream.

    ``data`` stacks the denoised window and, when present, the P/S/noise probabilities (denoised and
    raw): ``(3 * k, N)`` float32; ``meta["rows"]`` names the blocks; the mask repeats the input's.
    """
    blocks = [("denoised", result.denoised[i])]
    if result.probs is not None:
        blocks.append(("probs", result.probs[i]))
    if result.raw_probs is not None:
        blocks.append(("raw_probs", result.raw_probs[i]))
    meta = dict(window.meta)
    meta.update(
        rows=[name for name, _ in blocks],
        steps=result.steps,
        steps_chosen=result.steps_chosen,
        model=result.model,
        model_version=result.model_version,
        **{k: str(v) for k, v in result.extra.items()},
    )
    return Window(
        window.station_id,
        window.start_ns,
        window.sampling_rate_hz,
        np.concatenate([b for _, b in blocks]).astype(np.float32),
        np.tile(window.mask, (len(blocks), 1)),
        window.newest_arrival_ns,
        window.channels,
        meta,
    )


def decode_result(result_window: Window) -> BatchResult:
    """Inverse of :func:`encode_result`: a one-window :class:`BatchResult`."""
    meta = dict(result_window.meta)
    rows = list(meta.get("rows", ["denoised"]))  # type: ignore[call-overload]
    blocks = {name: result_window.data[3 * k : 3 * k + 3][None] for k, name in enumerate(rows)}
    window = Window(
        result_window.station_id,
        result_window.start_ns,
        result_window.sampling_rate_hz,
        blocks["denoised"][0],
        result_window.mask[:3],
        result_window.newest_arrival_ns,
        result_window.channels,
        meta,
    )
    steps = int(meta.get("steps", 0))  # type: ignore[call-overload]
    return BatchResult(
        [window],
        blocks["denoised"],
        blocks.get("probs"),
        blocks.get("raw_probs"),
        steps,
        int(meta.get("steps_chosen", steps)),  # type: ignore[call-overload]
        None,
        0.0,
        0.0,
        model=str(meta.get("model", "")),
        model_version=str(meta.get("model_version", "")),
        extra={k: str(meta[k]) for k in ("picker", "picker_version") if k in meta},
    )


class ScaleOutWorker:
    """``coldstream worker``: windows from the Redis consumer group -> denoise + pick -> results stream.

    Each loop: every ``reclaim_interval_s`` take over windows another consumer left pending for
    ``reclaim_idle_s`` (XAUTOCLAIM: a crashed worker's windows), else read new ones; process them as
    one batch; push one result per window (deduplicated by ``window_id``, so a window processed twice
    after a crash yields one result); then acknowledge the input entries. A crash between the push
    and the acknowledgement only repeats work, never loses or duplicates output.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        denoiser: DenoiserLike,
        picker: PickerLike | None,
        client: Any,
        consumer: str,
        *,
        reclaim_idle_s: float | None = None,
        reclaim_interval_s: float = 1.0,
    ) -> None:
        from streamer.publish import WindowQueue

        r = settings.redis
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer
        self.windows = WindowQueue(client, r.stream_prefix, "workers", consumer, stream=WINDOWS_STREAM, maxlen=r.maxlen)
        self.results = WindowQueue(client, r.stream_prefix, "collector", consumer, stream=RESULTS_STREAM, maxlen=r.maxlen)
        self.worker = Worker.from_settings(
            denoiser, metrics, lambda _r: None, settings.worker, settings.windows.stride_s,
            picker=picker, raw_picker=settings.picker.raw_comparison,
        )
        self.reclaim_idle_ms = int(1000 * (settings.worker.reclaim_idle_s if reclaim_idle_s is None else reclaim_idle_s))
        self.reclaim_interval_s = reclaim_interval_s
        self._last_reclaim = 0.0
        self.processed = 0
        self.reclaimed = 0

    def run_once(self, block_ms: int = 500) -> int:
        """One read-process-push-ack round; returns the number of windows processed."""
        entries: list[tuple[str, Window]] = []
        now = time.monotonic()
        if now - self._last_reclaim >= self.reclaim_interval_s:
            self._last_reclaim = now
            entries = self.windows.reclaim(self.reclaim_idle_ms, count=self.worker.batch_size)
            self.reclaimed += len(entries)
        if not entries:
            entries = self.windows.read(count=self.worker.batch_size, block_ms=block_ms)
        if not entries:
            return 0
        batch = [w for _, w in entries]
        result = self.worker.process_batch(batch)
        result.extra["worker"] = self.consumer
        for i, w in enumerate(batch):
            self.results.push(encode_result(w, result, i))
        self.windows.ack([eid for eid, _ in entries])
        self.processed += len(entries)
        return len(entries)

    def run(self, stop: threading.Event) -> None:
        log.info("scale-out worker %s started", self.consumer)
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # Redis down or a bad batch: log, back off, keep going
                log.exception("scale-out worker %s: round failed; retrying", self.consumer)
                stop.wait(1.0)
        log.info("scale-out worker %s stopped after %d windows (%d reclaimed)", self.consumer, self.processed, self.reclaimed)


class ResultCollector:
    """``coldstream ingest`` side of scale-out: results stream -> stitchers + picks -> publisher.

    Results of one station arrive out of order (several workers; a crashed worker's windows come back
    only after ``reclaim_idle_s``). The collector knows which windows were pushed (:meth:`expect`) and
    hands each station's results to the output stage in window order, holding later ones until the
    earlier arrive; a window whose result has not come ``give_up_s`` after a later one did is given up
    (the stitcher then sees a hole, as for a skipped window) and counted in
    ``coldstream_windows_shed_total{reason="lost"}``. Results of windows it was not told about (pushed
    before a restart) pass straight through. A result entry is acknowledged only after Redis accepted
    the outputs that needed it (marker token).
    """

    def __init__(self, output: OutputStage, results: Any, metrics: Metrics | None = None, give_up_s: float = 120.0) -> None:
        self.output = output
        self.results = results
        self.metrics = metrics
        self.give_up_s = give_up_s
        self.collected = 0
        self.given_up = 0
        self._lock = threading.Lock()
        self._expected: dict[str, list[int]] = {}
        self._held: dict[str, dict[int, tuple[str, BatchResult, float]]] = {}

    def expect(self, windows: Iterable[Window]) -> None:
        """Windows pushed to the workers (any thread)."""
        with self._lock:
            for w in windows:
                exp = self._expected.setdefault(w.station_id, [])
                if not exp or w.start_ns > exp[-1]:
                    exp.append(w.start_ns)
                elif w.start_ns not in exp:
                    exp.append(w.start_ns)
                    exp.sort()

    def run_once(self, block_ms: int = 500) -> int:
        entries = self.results.read(count=64, block_ms=block_ms)
        now = time.monotonic()
        ready: list[tuple[str, BatchResult]] = []
        with self._lock:
            for eid, w in entries:
                result = decode_result(w)
                exp = self._expected.get(w.station_id)
                if not exp or w.start_ns not in exp:
                    ready.append((eid, result))
                else:
                    self._held.setdefault(w.station_id, {})[w.start_ns] = (eid, result, now)
            for sid in list(self._held):
                ready.extend(self._release(sid, now))
        for eid, result in ready:
            self.output.handle(result, {"results": [eid]})
        self.collected += len(entries)
        return len(entries)

    def _release(self, station_id: str, now: float) -> list[tuple[str, BatchResult]]:
        exp = self._expected[station_id]
        held = self._held[station_id]
        out: list[tuple[str, BatchResult]] = []
        while exp:
            if exp[0] in held:
                eid, result, _t = held.pop(exp.pop(0))
                out.append((eid, result))
            elif held and now - min(t for _e, _r, t in held.values()) >= self.give_up_s:
                exp.pop(0)
                self.given_up += 1
                if self.metrics is not None:
                    self.metrics.windows_shed.labels(reason="lost").inc()
                log.warning("%s: no worker result for a window after %.0f s; given up", station_id, self.give_up_s)
            else:
                break
        return out

    @property
    def holding(self) -> int:
        with self._lock:
            return sum(len(h) for h in self._held.values())

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("result collector: round failed; retrying")
                stop.wait(1.0)


def run_scaleout_worker(worker: ScaleOutWorker) -> int:
    """Blocking main of ``coldstream worker``: SIGTERM/SIGINT finish the current batch (exit 0); a
    second signal abandons it (its windows stay pending and another worker reclaims them)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("signal %d: finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run(stop)
    return 0


def run_in_thread(service: Service) -> threading.Thread:
    """Run ``service`` in a background thread with its own event loop (tests, embedding)."""
    t = threading.Thread(target=lambda: asyncio.run(service.run_async()), name="coldstream-service", daemon=True)
    t.start()
    return t


__all__ = [
    "AckBook",
    "OutputStage",
    "Service",
    "ServiceError",
    "StationView",
    "load_denoiser",
    "load_picker",
    "run_in_thread",
    "sample_index",
    "station_key",
    "NS_PER_S",
]
