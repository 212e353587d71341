"""The ingest role's window sink: windows -> Redis work stream; worker results -> output stage.

Two threads of its own: the push loop (windows from an in-memory queue to ``{prefix}:windows``,
retrying while Redis is down) and the :class:`~streamer.scaleout.collector.ResultCollector` (results
from ``{prefix}:results`` back into window order, then the output stage, whose markers carry the
result entry ids so they are acknowledged only after Redis accepted the outputs).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

from streamer.config import Settings
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

__all__ = ["RedisSink"]


class RedisSink:
    """Scale-out ingest: see the module docstring. ``on_progress`` is called for every window pushed."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        output: OutputStage,
        *,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.output = output
        self.on_progress = on_progress
        self.window_queue: WorkQueue[Window, Window] | None = None
        self.result_queue: WorkQueue[tuple[BatchResult, int], BatchResult] | None = None
        self.collector: ResultCollector | None = None
        self.windows_pushed = 0
        self._push_queue: queue.Queue[Window] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        r = self.settings.redis
        client = connect(r)
        name = f"ingest-{os.getpid()}"
        self.window_queue = window_queue(client, r.stream_prefix, WORKERS_GROUP, name, maxlen=r.maxlen)
        self.window_queue.ensure_group()
        self.result_queue = result_queue(client, r.stream_prefix, COLLECTOR_GROUP, name, maxlen=r.maxlen)
        self.result_queue.ensure_group()
        give_up_s = 2 * self.settings.worker.reclaim_idle_s
        self.collector = ResultCollector(self.output, self.result_queue, self.metrics, give_up_s=give_up_s)
        for target, tname in ((self._push_loop, "coldstream-push"), (self.collector.run, "coldstream-collect")):
            t = threading.Thread(target=target, args=(self._stop,), name=tname, daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, windows: Sequence[Window]) -> None:
        if self.collector is not None:
            self.collector.expect(windows)
        for w in windows:
            self._push_queue.put(w)

    @property
    def idle(self) -> bool:
        # the workers are other processes; our side of the work is the push
        return self._push_queue.empty()

    @property
    def depth(self) -> int:
        return self._push_queue.qsize()

    def ack_results(self, entry_ids: Sequence[str]) -> None:
        """Result entries whose outputs Redis accepted (publisher thread)."""
        if self.result_queue is not None and entry_ids:
            self.result_queue.ack(entry_ids)

    def _push_loop(self, stop: threading.Event) -> None:
        assert self.window_queue is not None  # built in start() before this thread
        while not (stop.is_set() and self._push_queue.empty()):
            try:
                w = self._push_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            while True:
                try:
                    self.window_queue.push(w)
                    self.windows_pushed += 1
                    if self.on_progress is not None:
                        self.on_progress()
                    break
                except Exception as exc:  # Redis down: keep the window, retry
                    log.warning("window push failed (%s); retrying", exc)
                    time.sleep(1.0)

    def drain(self, left: Deadline) -> bool:
        self._stop.set()
        for t in self._threads:
            t.join(left())
        return not any(t.is_alive() for t in self._threads)

    def cancel(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
