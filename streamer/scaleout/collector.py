"""The ingest side of scale-out: worker results back into window order, then the output stage."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable

from streamer.metrics import Metrics
from streamer.output import OutputStage
from streamer.records import Window
from streamer.scaleout.queue import WorkQueue
from streamer.worker import BatchResult

log = logging.getLogger(__name__)

__all__ = ["ResultCollector"]


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

    After a restart SeedLink replays windows whose push Redis refuses as duplicates (pushed before,
    not finished: the de-duplication mark is released only with the result's acknowledgement). The
    sink reports those (:meth:`refused`); one whose result this collector already handed over (taken
    over from the ingest that died, before the replay told it to expect the window) is not waited for,
    so the station's later results go on at once; one whose result has not come is still in flight
    and is waited for in window order as usual.
    """

    def __init__(
        self, output: OutputStage, results: WorkQueue[tuple[BatchResult, int], BatchResult], metrics: Metrics | None = None, give_up_s: float = 120.0
    ) -> None:
        self.output = output
        self.results = results
        self.metrics = metrics
        self.give_up_s = give_up_s
        self.collected = 0
        self.given_up = 0
        self._lock = threading.Lock()
        self._expected: dict[str, list[int]] = {}
        self._held: dict[str, dict[int, tuple[str, BatchResult, float]]] = {}
        self._window_of: dict[str, str] = {}  # result entry id -> window id, until acknowledged
        # window id -> until when (monotonic s) a refused push of it means "its result was handed over":
        # inf until the result is acknowledged, then give_up_s more (a push may have been refused just
        # before the acknowledgement released the mark)
        self._handed: dict[str, float] = {}
        self._handed_expiry: deque[tuple[float, str]] = deque()
        self._orphans_claimed = False

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

    def forget(self, windows: Iterable[Window]) -> None:
        """Windows that will never be pushed (shed): do not wait for their results."""
        with self._lock:
            for w in windows:
                exp = self._expected.get(w.station_id)
                if exp and w.start_ns in exp:
                    exp.remove(w.start_ns)

    def refused(self, windows: Iterable[Window]) -> int:
        """Windows whose push Redis refused as duplicates (push thread): those whose result was handed
        over already are not waited for any more (their later results are released in the next round);
        the others are in flight and still expected. Returns how many were resolved."""
        resolved = 0
        with self._lock:
            for w in windows:
                if w.window_id not in self._handed:
                    continue
                exp = self._expected.get(w.station_id)
                if exp and w.start_ns in exp and w.start_ns not in self._held.get(w.station_id, {}):
                    exp.remove(w.start_ns)
                    resolved += 1
        return resolved

    def window_ids(self, entry_ids: Iterable[str]) -> list[str]:
        """The window ids of handled result entries."""
        with self._lock:
            return [wid for eid in entry_ids if (wid := self._window_of.get(eid)) is not None]

    def acknowledged(self, entry_ids: Iterable[str]) -> None:
        """The entries were acknowledged: forget them."""
        now = time.monotonic()
        with self._lock:
            for eid in entry_ids:
                wid = self._window_of.pop(eid, None)
                if wid is not None and wid in self._handed:
                    self._handed[wid] = now + self.give_up_s
                    self._handed_expiry.append((now + self.give_up_s, wid))
            while self._handed_expiry and self._handed_expiry[0][0] <= now:
                until, wid = self._handed_expiry.popleft()
                if self._handed.get(wid) == until:  # not handed over again since
                    del self._handed[wid]

    def claim_orphans(self) -> int:
        """Take over results left pending on other consumer names of this group (an ingest of an
        earlier version, whose consumer name changed on every restart) and handle them now."""
        # one sweep over the whole pending list; our own pending entries come with it, so the
        # queue's own-pending pass is not needed any more
        total = self._handle_entries(self.results.reclaim_all(0))
        self.results.skip_own_pending()
        if total:
            log.info("collector took over %d results left pending by an earlier ingest", total)
        return total

    def run_once(self, block_ms: int = 500) -> int:
        if not self._orphans_claimed:
            self.claim_orphans()
            self._orphans_claimed = True
        return self._handle_entries(self.results.read(count=64, block_ms=block_ms))

    def _handle_entries(self, entries: list[tuple[str, BatchResult]]) -> int:
        now = time.monotonic()
        ready: list[tuple[str, BatchResult]] = []
        with self._lock:
            for eid, result in entries:
                w = result.windows[0]
                self._window_of[eid] = w.window_id
                exp = self._expected.get(w.station_id)
                if not exp or w.start_ns not in exp:
                    ready.append((eid, result))
                else:
                    self._held.setdefault(w.station_id, {})[w.start_ns] = (eid, result, now)
            for sid in list(self._held):
                ready.extend(self._release(sid, now))
            for _eid, result in ready:
                self._handed[result.windows[0].window_id] = math.inf
        for eid, result in ready:
            try:
                self.output.handle(result, result_ids=(eid,))
            except Exception:  # one bad result (wrong shape, ...) must not lose the others read with it
                log.exception("result %s of window %s cannot be stitched: dropped", eid, result.windows[0].window_id)
                self._drop(eid)
        self.collected += len(entries)
        return len(entries)

    def _drop(self, entry_id: str) -> None:
        """Acknowledge a result entry that can never be used (counted as shed, ``reason="error"``)."""
        if self.metrics is not None:
            self.metrics.windows_shed.labels(reason="error").inc()
        try:
            self.results.ack([entry_id])
        except Exception as exc:  # Redis hiccup: a restart takes the entry over and drops it again
            log.warning("could not acknowledge dropped result %s: %s", entry_id, exc)
            return
        self.acknowledged([entry_id])

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
        """Collect until ``stop``; also flushes and forgets stations gone quiet (this thread owns the
        output stage in the ingest role)."""
        while not stop.is_set():
            try:
                self.run_once()
                self.output.flush_idle()
            except Exception:
                log.exception("result collector: round failed; retrying")
                stop.wait(1.0)
