"""The ingest role's window sink: windows -> Redis work stream; worker results -> output stage.

Two threads of its own: the push loop (windows from an in-memory queue to ``{prefix}:windows``,
retrying while Redis is down) and the :class:`~streamer.scaleout.collector.ResultCollector` (results
from ``{prefix}:results`` back into window order, then the output stage, whose markers carry the
result entry ids so they are acknowledged only after Redis accepted the outputs).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from streamer.config import Settings
from streamer.logutil import RateLimitedLog
from streamer.metrics import Metrics
from streamer.output import OutputStage
from streamer.publish import connect
from streamer.records import Window
from streamer.scaleout.collector import ResultCollector
from streamer.scaleout.queue import WorkQueue, result_queue, window_queue
from streamer.scaleout.worker import COLLECTOR_GROUP, WORKERS_GROUP
from streamer.sinks import Deadline
from streamer.worker import BatchResult

log = logging.getLogger(__name__)

__all__ = ["INGEST_CONSUMER", "RedisSink"]

INGEST_CONSUMER = "ingest"
"""The ingest's consumer name in the results group: stable across restarts, so a restarted ingest
reads the results its predecessor had not finished (one ingest per stream prefix)."""


class RedisSink:
    """Scale-out ingest: see the module docstring. ``on_progress`` is called for every window pushed
    (or refused as a duplicate: queued before a restart, reported to the collector)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        output: OutputStage,
        *,
        on_progress: Callable[[], None] | None = None,
        on_shed: Callable[[list[Window], str], None] | None = None,
        consumer: str = INGEST_CONSUMER,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.output = output
        self.on_progress = on_progress
        self.on_shed = on_shed
        self.consumer = consumer
        self.window_queue: WorkQueue[Window, Window] | None = None
        self.result_queue: WorkQueue[tuple[BatchResult, int], BatchResult] | None = None
        self.collector: ResultCollector | None = None
        self.windows_pushed = 0
        self.windows_refused = 0  # pushes refused as duplicates (replays after a restart)
        self.windows_shed = 0
        # bounded like the in-process worker's queue; while Redis is down the oldest are shed (counted)
        self._push_queue: queue.Queue[Window] = queue.Queue(maxsize=max(1, settings.worker.queue_max_windows))
        self._stop = threading.Event()
        self._cancelled = threading.Event()  # abandon queued windows: no more pushes, no more retries
        self._threads: list[threading.Thread] = []
        self._rl = RateLimitedLog(log, 10.0)

    def start(self) -> None:
        """Build the queues and start the push and collect threads. Never waits for Redis: the
        consumer groups are created by the threads, which retry while Redis is down."""
        r = self.settings.redis
        client = connect(r)

        def trimmed(stream: str) -> Callable[[int], None]:
            return lambda n: self.metrics.work_queue_trimmed.labels(stream=stream).inc(n)

        def dead(stream: str) -> Callable[[str], None]:
            return lambda reason: self.metrics.work_queue_dead_lettered.labels(stream=stream, reason=reason).inc()

        self.window_queue = window_queue(client, r.stream_prefix, WORKERS_GROUP, self.consumer,
                                         on_trimmed=trimmed("windows"), on_dead_lettered=dead("windows"), maxlen=r.work_queue_maxlen)
        self.result_queue = result_queue(client, r.stream_prefix, COLLECTOR_GROUP, self.consumer,
                                         on_trimmed=trimmed("results"), on_dead_lettered=dead("results"), maxlen=r.work_queue_maxlen)
        give_up_s = 2 * self.settings.worker.reclaim_idle_s
        self.collector = ResultCollector(self.output, self.result_queue, self.metrics, give_up_s=give_up_s)
        for target, tname in ((self._push_loop, "coldstream-push"), (self.collector.run, "coldstream-collect")):
            t = threading.Thread(target=target, args=(self._stop,), name=tname, daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, windows: Sequence[Window]) -> None:
        """Event loop: queue windows for the push thread; never blocks (the oldest are shed when full)."""
        if self.collector is not None:
            self.collector.expect(windows)
        shed: list[Window] = []
        for w in windows:
            while True:
                try:
                    self._push_queue.put_nowait(w)
                    break
                except queue.Full:
                    try:
                        shed.append(self._push_queue.get_nowait())
                    except queue.Empty:
                        pass
        if shed:
            self.windows_shed += len(shed)
            self.metrics.windows_shed.labels(reason="queue_full").inc(len(shed))
            self._rl.log("shed", logging.WARNING, "push queue full (Redis unreachable?): shed %d oldest windows",
                         len(shed))
            if self.collector is not None:
                self.collector.forget(shed)
            if self.on_shed is not None:
                self.on_shed(shed, "queue_full")

    @property
    def idle(self) -> bool:
        # the workers are other processes; our side of the work is the push
        return self._push_queue.empty()

    @property
    def depth(self) -> int:
        return self._push_queue.qsize()

    def ack_results(self, entry_ids: Sequence[str]) -> None:
        """Result entries whose outputs Redis accepted (publisher thread): acknowledge and delete them,
        and release the windows' de-duplication marks, so a replay may compute them again."""
        if self.result_queue is None or self.window_queue is None or not entry_ids:
            return
        window_ids = self.collector.window_ids(entry_ids) if self.collector is not None else []
        # one round trip: the acknowledgement and the release of the marks go together, so a crash
        # cannot leave a finished window marked in flight (its replay would then wait for nothing)
        client = self.result_queue.client
        pipe = client.pipeline(transaction=True)
        pipe.xack(self.result_queue.key, self.result_queue.group, *entry_ids)
        pipe.xdel(self.result_queue.key, *entry_ids)
        marks = [q.keys.windowseen(w, q.stream) for q in (self.window_queue, self.result_queue) for w in window_ids]
        if marks:
            pipe.delete(*marks)
        pipe.execute()
        if self.collector is not None:
            self.collector.acknowledged(entry_ids)

    def _push_loop(self, stop: threading.Event) -> None:
        assert self.window_queue is not None  # built in start() before this thread
        while not (stop.is_set() and self._push_queue.empty()) and not self._cancelled.is_set():
            try:
                w = self._push_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            backoff_s = 0.2
            while True:
                try:
                    if self.window_queue.push(w) is not None:
                        self.windows_pushed += 1
                    else:  # queued before a restart and not finished: its result may have come already
                        self.windows_refused += 1
                        resolved = self.collector is not None and self.collector.refused([w]) > 0
                        self._rl.log("refused", logging.INFO, "window %s was queued before a restart (push "
                                     "refused as a duplicate); its result %s", w.window_id,
                                     "was collected already" if resolved else "is still awaited")
                    if self.on_progress is not None:
                        self.on_progress()
                    break
                except Exception as exc:  # Redis down: keep the window, retry with capped back-off
                    if self._cancelled.is_set():
                        return  # abandoned: replayed after a restart (never acknowledged)
                    self._rl.log("push", logging.WARNING, "window push failed (%s); retrying", exc)
                    if self.on_progress is not None:
                        self.on_progress()  # alive and doing the one thing it can: the watchdog is for hangs
                    # not stop.wait: a drain still pushes what it can; a cancel ends the wait
                    self._cancelled.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)

    def drain(self, left: Deadline) -> bool:
        self._stop.set()
        for t in self._threads:
            t.join(left())
        return not any(t.is_alive() for t in self._threads)

    def cancel(self) -> None:
        """Abandon the windows not yet pushed (a second signal): the push thread ends at once, Redis up or down;
        they were never acknowledged, so they are replayed after a restart."""
        self._cancelled.set()
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
