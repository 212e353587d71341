"""``coldstream worker``: windows from the Redis consumer group -> denoise + pick -> results stream."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from streamer.config import Settings
from streamer.loaders import unconfirmed_p_threshold
from streamer.metrics import Metrics
from streamer.records import Window
from streamer.scaleout.queue import result_queue, window_queue
from streamer.worker import BatchResult, DenoiserLike, PickerLike, Worker

log = logging.getLogger(__name__)

WORKERS_GROUP = "workers"
COLLECTOR_GROUP = "collector"

__all__ = ["COLLECTOR_GROUP", "WORKERS_GROUP", "ScaleOutWorker", "run_scaleout_worker"]


class ScaleOutWorker:
    """``coldstream worker``: windows from the Redis consumer group -> denoise + pick -> results stream.

    Each loop: every ``reclaim_interval_s`` take over windows another consumer left pending for
    ``reclaim_idle_s`` (XAUTOCLAIM: a crashed worker's windows), else read new ones; process them as
    one batch (one window at a time if the batch raises, so a bad window fails alone); push one result
    per window (deduplicated by ``window_id``, so a window processed twice after a crash yields one
    result); then acknowledge the input entries. A crash between the push
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
        r = settings.redis
        self.settings = settings
        self.metrics = metrics
        self.consumer = consumer
        def trimmed(stream: str) -> Callable[[int], None]:
            return lambda n: metrics.work_queue_trimmed.labels(stream=stream).inc(n)

        def dead(stream: str) -> Callable[[str], None]:
            return lambda reason: metrics.work_queue_dead_lettered.labels(stream=stream, reason=reason).inc()

        self.windows = window_queue(client, r.stream_prefix, WORKERS_GROUP, consumer, maxlen=r.work_queue_maxlen,
                                    on_trimmed=trimmed("windows"), on_dead_lettered=dead("windows"))
        self.results = result_queue(client, r.stream_prefix, COLLECTOR_GROUP, consumer, maxlen=r.work_queue_maxlen,
                                    on_trimmed=trimmed("results"), on_dead_lettered=dead("results"))
        self.worker = Worker.from_settings(
            denoiser, metrics, lambda _r: None, settings.worker, settings.windows.stride_s,
            picker=picker, raw_picker=settings.picker.raw_comparison,
            p_threshold=settings.picker.p_threshold, unconfirmed_p_threshold=unconfirmed_p_threshold(settings, denoiser),
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
        done = 0
        for part, result in self._process(entries):
            result.extra["worker"] = self.consumer
            for i in range(len(part)):
                self.results.push((result, i))
            self.windows.ack([eid for eid, _ in part])
            done += len(part)
        self.processed += done
        return done

    def _process(self, entries: list[tuple[str, Window]]) -> list[tuple[list[tuple[str, Window]], BatchResult]]:
        """The entries as one batch; if that raises, one window at a time, so a window that fails
        does not take its batch-mates down. A window that fails alone stays pending: it is reclaimed
        and, after ``max_deliveries``, moved to the dead-letter stream."""
        try:
            return [(entries, self.worker.process_batch([w for _, w in entries]))]
        except Exception as exc:
            if len(entries) == 1:
                raise
            batch_error = exc
            log.exception("scale-out worker %s: batch of %d windows failed; running them one at a time",
                          self.consumer, len(entries))
        out: list[tuple[list[tuple[str, Window]], BatchResult]] = []
        for entry in entries:
            try:
                out.append(([entry], self.worker.process_batch([entry[1]])))
            except Exception:
                log.exception("scale-out worker %s: window %s failed; left pending for a retry",
                              self.consumer, entry[1].window_id)
        if not out:  # every window failed: the model, not a window, is broken; the caller backs off
            raise batch_error
        return out

    def run(self, stop: threading.Event) -> None:
        log.info("scale-out worker %s started", self.consumer)
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # Redis down or a bad batch: log, back off, keep going
                log.exception("scale-out worker %s: round failed; retrying", self.consumer)
                stop.wait(1.0)
        log.info("scale-out worker %s stopped after %d windows (%d reclaimed)", self.consumer, self.processed, self.reclaimed)


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
