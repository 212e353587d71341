"""The live service: build the stages in order, run the tasks, handle signals, drain.

The path of one window, from SeedLink packet to Redis entry (each step one call; open the stage
from here):

1. ``SeedLinkSource`` (``seedlink.py``) reads a packet and calls :meth:`Service.on_packet`;
2. ``Ingestor.add_payload`` (``ingest.py``: ``mseed.py`` -> ``buffers.py`` -> ``windows.py``) decodes
   it into the station's ring buffer and returns the windows that became ready;
3. :class:`~streamer.ack.AckBook` notes them as pending, and the :class:`~streamer.sinks.WindowSink`
   takes them: :class:`~streamer.sinks.LocalSink` queues them for the
   :class:`~streamer.worker.Worker` thread (``Worker.process_batch``: denoiser + PhaseNet), or
   :class:`~streamer.scaleout.sink.RedisSink` sends them to the scale-out workers;
4. the :class:`~streamer.output.OutputStage` (``OutputStage.handle``) stitches each batch into final
   segments, finds picks, and queues them and an :class:`~streamer.ack.AckMarker` on the publisher;
5. :class:`~streamer.publish.RedisPublisher` writes them (idempotent ids) and hands the marker back
   to :meth:`Service._on_acked`, which moves the SeedLink state behind what Redis accepted.

The offline tools run steps 2-4 through the same code (:mod:`streamer.offline`).

Collaborators are built in the order they are needed (:meth:`Service.build`): publisher, output
stage (given ``publisher.publish``), sink (given the output stage), ingestor. Only this module (and
the sinks and stages it starts) starts threads; only it installs signal handlers.

Shutdown: the first SIGTERM/SIGINT sends ``STOPPING=1``, stops SeedLink, lets the sink finish the
queued windows and flush, publishes, acknowledges and writes the state file, all within
``service.drain_timeout_s``; exit status 0. A second signal (or the timeout) cancels: queued windows
are abandoned (their data are replayed after a restart, since they were never acknowledged), the
state acknowledged so far is written, exit status 1.

Health (systemd watchdog): stages ``ingest``, ``worker``, ``output`` and ``publisher``. Ingest shows progress for
every packet; no data at all for ``service.watchdog_stall_s`` withholds the pings (a silent upstream
or a wedged connection gets the daemon restarted). The worker is idle (healthy) while its sink is
idle, the output stage while its bounded queue is empty and its thread alive, and the publisher while its backlog is empty or while it is retrying an unreachable Redis (a
restart cannot fix Redis and would lose the backlog); either stalls only with work pending and no
progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from streamer.ack import AckBook, AckMarker, station_key
from streamer.config import Settings
from streamer.eew import FastScheduler
from streamer.ingest import Ingestor
from streamer.loaders import ServiceError, load_denoiser, load_inventory, load_picker, unconfirmed_p_threshold
from streamer.metrics import Metrics, serve_metrics
from streamer.output import OutputStage
from streamer.publish import RedisPublisher
from streamer.records import NS_PER_S, OutputItem, PacketRef, Window
from streamer.sinks import LocalSink, WindowSink
from streamer.worker import BatchResult, DenoiserLike, PickerLike, Worker

log = logging.getLogger(__name__)

STAGES = ("ingest", "worker", "output", "publisher")
POLL_INTERVAL_S = 0.5
SOURCE_STOP_S = 3.0  # how long SeedLink tasks get to end after stop before they are cancelled

Role = Literal["all", "ingest"]

__all__ = ["Service", "ServiceError", "ServiceThread", "run_in_thread"]


class Service:
    """The whole pipeline in one process (``coldstream run``, ``coldstream demo``; with
    ``role="ingest"`` the scale-out front end ``coldstream ingest``).

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
        role: Role = "all",
    ) -> None:
        from streamer.notify import HealthMonitor, Notifier

        if role not in ("all", "ingest"):
            raise ValueError(f"unknown service role {role!r}")
        self.role: Role = role
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
        self._cut_lock = threading.Lock()  # cutting windows + booking them vs reading where uncut data starts
        self.exit_code = 0
        self.ready = threading.Event()
        self.stopped = threading.Event()
        # built by build(), in this order
        self.publisher: RedisPublisher | None = None
        self.output: OutputStage | None = None
        self.worker: Worker | None = None  # role "all" only
        self.sink: WindowSink | None = None
        self.ingestor: Ingestor | None = None
        # started by run_async()
        self.tracker: Any = None
        self.sources: list[Any] = []
        self.metrics_server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._cancel: asyncio.Event | None = None
        self._signals = 0
        self._cancelled = threading.Event()  # seen by the drain thread: stop waiting at once

    # --- start-up ------------------------------------------------------------------------------------
    def load_models(self) -> None:
        """Load the denoiser (and picker), build the stages and run the warm-up inference; fails fast.
        The ingest role of scale-out runs no model: it only builds the stages."""
        if self.role == "ingest":
            self.build()
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
        worker = self.build()
        self.notifier.extend_timeout(300)
        if worker is not None:
            worker.warm_up()
        if self.picker is not None:
            self.picker.predict(np.zeros((1, 3, self._spec().window_samples), np.float32))
        self.metrics.model_load_seconds.set(time.perf_counter() - t0)
        log.info("models loaded and warmed up in %.1f s", time.perf_counter() - t0)

    def _spec(self) -> Any:
        from models.spec import DEFAULT_SPEC

        return getattr(self.denoiser, "spec", None) or DEFAULT_SPEC

    def build(self) -> Worker | None:
        """Build publisher -> output stage -> sink -> ingestor, each given the one after it needs.
        Returns the in-process worker (None in the ingest role)."""
        s = self.settings
        spec = self._spec()
        self.publisher = RedisPublisher(s.redis, self.metrics, self._on_acked, on_dropped=self._on_dropped,
                                        match_tolerance_s=s.eew.match_tolerance_s)
        inventory = load_inventory(s)
        # the early-warning fast path needs the picker and runs where the worker runs (role "all")
        fast_path = s.eew.enabled and self.role == "all" and self.picker is not None
        self.output = OutputStage(
            s,
            self.metrics,
            self.publisher.publish,
            window_samples=spec.window_samples,
            sampling_rate_hz=spec.sampling_rate_hz,
            picker=self.picker,
            max_out_of_order=s.worker.scaleout_max_out_of_order if self.role == "ingest" else 0,
            on_pick=self.on_pick,
            on_batch=self.on_batch,
            on_progress=lambda: self.health.progress("output"),
            inventory=inventory,
            component_order=spec.component_order,
        )
        if not fast_path:
            self.output.lifecycle = None
        self.output.seed_published_ends(self.publisher.read_latest())
        if fast_path:
            self.output.seed_open_onsets(self.publisher.read_open_picks())
        if self.role == "ingest":
            from streamer.scaleout.sink import RedisSink

            self.sink = RedisSink(s, self.metrics, self.output, on_progress=lambda: self.health.progress("worker"),
                                  on_shed=self._on_shed)
        else:
            if self.denoiser is None:
                raise ServiceError("no denoiser: call load_models() or pass one")
            unconfirmed = unconfirmed_p_threshold(s, self.denoiser) if self.picker is not None else None
            if fast_path and unconfirmed is not None and s.eew.p_threshold < unconfirmed:
                log.warning("eew.p_threshold %.2f is below the unconfirmed P threshold %.2f of the final path: "
                            "provisional picks the raw input does not confirm will be retracted",
                            s.eew.p_threshold, unconfirmed)
            self.worker = Worker.from_settings(
                self.denoiser,
                self.metrics,
                self.output.submit,
                s.worker,
                s.windows.stride_s,
                picker=self.picker,
                raw_picker=s.picker.raw_comparison,
                on_shed=self._on_shed,
                on_progress=lambda: self.health.progress("worker"),
                on_fast_result=self.output.submit_fast if fast_path else None,
                p_threshold=s.picker.p_threshold,
                unconfirmed_p_threshold=unconfirmed,
                fast_steps=s.eew.steps,
                fast_max_age_s=s.eew.max_age_s,
                fast_queue_max_windows=s.eew.queue_max_windows,
                fast_reported=self._fast_reported if fast_path else None,
            )
            self.sink = LocalSink(self.worker, self.output)
        fast = FastScheduler(s.eew, spec.sampling_rate_hz) if fast_path else None
        self.ingestor = Ingestor(spec, s.buffers, s.windows, self.metrics, inventory=inventory, fast=fast)
        if s.eew.enabled and not fast_path:
            log.info("early-warning fast path off: %s", "needs the picker" if self.role == "all" and self.picker is None
                     else "runs only in the all-in-one service (coldstream run), not in the scale-out roles")
        return self.worker

    def _fast_reported(self, window: Window) -> bool:
        """Worker thread: the window's station has a provisional P out already (its window only adds
        amplitude updates), so windows of stations still waiting for a first report go first."""
        lifecycle = self.output.lifecycle if self.output is not None else None
        return lifecycle is not None and lifecycle.reported(window.station_id)

    def _on_shed(self, windows: list[Window], reason: str) -> None:
        self.acks.drop(windows)

    def _on_acked(self, items: list[OutputItem]) -> None:
        """Publisher thread: Redis accepted ``items``; advance the SeedLink state behind them."""
        self.health.progress("publisher")
        for item in items:
            marker = item.token
            if item.kind != "marker" or not isinstance(marker, AckMarker):
                continue
            self.acks.apply(marker)
            if marker.result_ids and self.sink is not None:
                try:
                    self.sink.ack_results(marker.result_ids)
                except Exception as exc:  # Redis hiccup: the results are read again after a restart
                    log.warning("could not acknowledge %d scale-out results: %s", len(marker.result_ids), exc)
            self._acknowledge(marker.safe_ns)

    def _acknowledge(self, station_ids: Iterable[str]) -> None:
        """Move the SeedLink state of the stations' ``NET_STA`` keys to their safe time (every location
        code of a key counts, and data not yet cut into windows too)."""
        if self.tracker is None:
            return
        station_ids = list(station_ids)
        keys = {station_key(sid) for sid in station_ids}
        with self._cut_lock:
            self._release_old_time_bases()
            uncut = self.ingestor.uncut_ns(keys) if self.ingestor is not None else {}
            before = self.ingestor.read_before_ns(keys) if self.ingestor is not None else {}
            safe = self.acks.safe_by_key(station_ids, uncut, before)
            # still under the lock: a clock jump back booked and released after the safe time was
            # taken would otherwise let that (old time base) time pass the new time base's packets
            for key, t in safe.items():
                self.tracker.acknowledge(key, t)

    def _release_old_time_bases(self) -> None:
        """Under the cut lock (a jump back booked meanwhile must not be released with an older one):
        the packets of old time bases with nothing left to publish become passable."""
        for sid in self.acks.old_time_bases_done():
            self.tracker.old_time_base_done(station_key(sid), sid)

    def _acknowledge_every_key(self) -> None:
        """Poll: acknowledge every ``NET_STA`` with delivered packets, also those no batch touches
        (only rejected records, state-of-health channels, windows all skipped): their handled packets
        and data already cut must not hold the state for ever. Updates the pending-packet gauge."""
        if self.tracker is None:
            return
        keys = self.tracker.keys()
        if not keys:
            return
        with self._cut_lock:
            self._release_old_time_bases()
            uncut = self.ingestor.uncut_ns() if self.ingestor is not None else {}
            before = self.ingestor.read_before_ns() if self.ingestor is not None else {}
            safe = self.acks.safe_by_key([*uncut, *self.acks.stations()], uncut, before)
            for key in keys:  # under the lock, as in _acknowledge
                self.tracker.acknowledge(key, safe.get(key, -(2**62)))  # unknown key: only handled packets
        for key, n in self.tracker.pending_counts().items():
            self.metrics.seedlink_pending_packets.labels(self.metrics.station(key)).set(n)

    def _on_dropped(self, items: list[OutputItem]) -> None:
        """Publisher (under its lock, before any later marker can be written): outputs dropped from a
        full backlog. A dropped pick holds the state behind the data it needs, so a restart publishes
        it; a dropped segment stays a hole (later segments were stored; segments only append)."""
        window_ns = round(self._spec().window_s * NS_PER_S)
        for item in items:
            if item.pick is not None and item.pick.status == "final":  # a restart reports final picks again
                self.acks.lost(item.pick.station_id, item.pick.time_ns - window_ns)

    # --- packets -------------------------------------------------------------------------------------
    def on_packet(self, payload: bytes, ref: PacketRef, arrival_ns: int) -> None:
        """Event loop: one SeedLink payload in; windows that became ready go to the sink."""
        assert self.ingestor is not None  # built before the SeedLink tasks start
        with self._cut_lock:  # windows cut are pending in the book before anyone reads "uncut"
            windows = self.ingestor.add_payload(payload, arrival_ns, ref)
            # a clock jump back: the old time base's windows and packets are booked apart. A SeedLink
            # payload is one record, so the windows it gave are all of the new time base
            for reset in self.ingestor.take_time_base_resets():
                self.acks.new_time_base(reset.station_id)
                if self.tracker is not None:
                    self.tracker.time_base_reset(reset.packet, reset.station_id, reset.start_ns)
            self.acks.add(windows)
        self.health.progress("ingest")
        if self.tracker is not None:
            for handled in self.ingestor.take_handled():
                self.tracker.handled(handled)
        self._submit(windows)
        if self.worker is not None:
            self.worker.submit_fast(self.ingestor.take_fast())

    def _submit(self, windows: list[Window]) -> None:
        """Hand windows (already in the book) to the sink."""
        if not windows:
            return
        assert self.sink is not None
        self.sink.submit(windows)

    # --- running -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Blocking main for the CLI: installs SIGTERM/SIGINT handlers; returns the exit status (2 on a
        start-up error, logged)."""
        try:
            return asyncio.run(self.run_async(install_signals=True))
        except ServiceError as exc:
            log.error("cannot start: %s", exc)
            return 2

    async def run_async(self, install_signals: bool = False) -> int:
        from streamer.seedlink import build_sources
        from streamer.seedlink_state import StateTracker, save_state_periodically

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._cancel = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.request_stop)
        if self.sink is None:
            await asyncio.to_thread(self.load_models)
        assert self.publisher is not None and self.sink is not None
        self.health.reset()  # the model load and warm-up are not a stall of any stage
        s = self.settings
        if s.metrics.enabled:  # before any thread starts: a port in use stops the start, nothing left running
            try:
                self.metrics_server = serve_metrics(self.metrics, s.metrics.bind_address, s.metrics.port)
            except OSError as exc:
                raise ServiceError(
                    f"cannot serve metrics on {s.metrics.bind_address}:{s.metrics.port} "
                    f"(metrics.bind_address, metrics.port): {exc}"
                ) from exc
        self.tracker = StateTracker.from_settings(s.seedlink, self.metrics)
        self.publisher.start()
        self.sink.start()
        self.sources = build_sources(s.seedlink, self.on_packet, self.tracker, self.metrics,
                                     max_clock_jump_s=s.buffers.max_clock_jump_s, jump_confirm_s=self._spec().window_s)
        tasks = [asyncio.create_task(src.run(self._stop), name=f"seedlink-{src.name}") for src in self.sources]
        tasks.append(asyncio.create_task(save_state_periodically(self.tracker, self._stop), name="state-save"))
        tasks.append(asyncio.create_task(self._poll_loop(), name="poll"))
        tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        # coldstream_ready: 1 at the first SeedLink handshake (SeedLinkSource._note_connected), not before
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
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:  # not on any event loop's thread
            on_loop = False
        if on_loop:
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
        assert self.ingestor is not None and self.publisher is not None and self.sink is not None
        with self._cut_lock:
            windows = self.ingestor.poll()
            self.acks.add(windows)
        self._submit(windows)
        self.ingestor.update_gauges()
        self._acknowledge_every_key()
        if self.sink.idle:
            self.health.idle("worker")
        if self.output is not None and self.output.idle and (self.output.alive or self.role == "ingest"):
            self.health.idle("output")  # a dead output thread is never idle: the watchdog stops
        if self.publisher.backlog_size == 0 or not self.publisher.connected:
            self.health.idle("publisher")

    async def _watchdog(self) -> None:
        from streamer.notify import WatchdogPinger

        assert self._stop is not None
        pinger = WatchdogPinger(self.notifier, self.health, self.metrics, status=self.status_line)
        await pinger.run_async(self._stop)

    def status_line(self) -> str:
        stations = len(self.ingestor.stations()) if self.ingestor is not None else 0
        depth = self.sink.depth if self.sink is not None else 0
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
            if self.sink is not None:
                self.sink.cancel()
        self._close(flush_s=0.0 if not drained else 1.0)

    def _drain(self, deadline: float) -> bool:
        """The sink finishes its windows and flushes, the publisher writes. True if done in time."""
        assert self.sink is not None and self.publisher is not None

        def left() -> float:
            return 0.0 if self._cancelled.is_set() else max(deadline - time.monotonic(), 0.0)

        if not self.sink.drain(left):
            return False
        ok = self.publisher.flush(timeout_s=left())
        batches = self.worker.batches_done if self.worker is not None else 0
        log.info("drained: %d batches, publisher %s", batches, "flushed" if ok else "NOT flushed")
        return ok

    def _close(self, flush_s: float) -> None:
        if self.sink is not None:
            self.sink.close()
        if self.publisher is not None:
            self.publisher.close(flush_timeout_s=flush_s)
        if self.tracker is not None:
            self.tracker.save()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()  # release the port (a restart in this process binds it again)
        self.metrics.ready.set(0)
        self.notifier.close()
        log.info("coldstream stopped (exit status %d)", self.exit_code)


class ServiceThread(threading.Thread):
    """The thread of :func:`run_in_thread`. ``error``: what ended the service with an exception (None
    while it runs and after a normal stop). A :class:`ServiceError` (cannot start: a port in use,
    bad weights, ...) is logged as one error line, anything else with its traceback; neither reaches
    ``threading.excepthook``, so an embedding program gets the cause here, not a stray traceback."""

    def __init__(self, service: Service) -> None:
        super().__init__(name="coldstream-service", daemon=True)
        self.service = service
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.service.run_async())
        except ServiceError as exc:
            self.error = exc
            log.error("coldstream cannot run: %s", exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller through .error
            self.error = exc
            log.exception("coldstream service thread failed")


def run_in_thread(service: Service) -> ServiceThread:
    """Run ``service`` in a background thread with its own event loop (tests, embedding); the
    thread's ``error`` says why it ended when it failed."""
    t = ServiceThread(service)
    t.start()
    return t
