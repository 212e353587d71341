"""Where the service sends the windows it cut: one interface, two implementations.

:class:`WindowSink` is what :class:`~streamer.service.Service` holds. :class:`LocalSink` runs the
windows through the in-process :class:`~streamer.worker.Worker` and the output stage (``coldstream
run``); :class:`streamer.scaleout.sink.RedisSink` pushes them to the scale-out work stream and feeds
the workers' results to the same output stage (``coldstream ingest``). The outputs and the
acknowledgement rule are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from streamer.output import OutputStage
from streamer.records import Window
from streamer.worker import Worker

__all__ = ["LocalSink", "WindowSink"]

Deadline = Callable[[], float]
"""Seconds left for a drain step (0 once the drain is cancelled)."""


class WindowSink(Protocol):
    """The stage after ingest. ``submit`` is called on the event loop and must never block."""

    def start(self) -> None: ...

    def submit(self, windows: Sequence[Window]) -> None: ...

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in progress on this side."""
        ...

    @property
    def depth(self) -> int:
        """Windows waiting."""
        ...

    def drain(self, left: Deadline) -> bool:
        """Finish the queued windows and hand every output to the publisher; True when done in time."""
        ...

    def cancel(self) -> None:
        """Abandon queued windows (second signal); they are replayed after a restart."""
        ...

    def ack_results(self, entry_ids: Sequence[str]) -> None:
        """Scale-out result entries whose outputs Redis accepted (publisher thread)."""
        ...

    def close(self) -> None: ...


class LocalSink:
    """Windows -> in-process worker thread -> output thread -> publisher."""

    def __init__(self, worker: Worker, output: OutputStage) -> None:
        self.worker = worker
        self.output = output

    def start(self) -> None:
        self.output.start()
        self.worker.start()

    def submit(self, windows: Sequence[Window]) -> None:
        self.worker.submit(windows)

    @property
    def idle(self) -> bool:
        return self.worker.idle

    @property
    def depth(self) -> int:
        return self.worker.depth

    def drain(self, left: Deadline) -> bool:
        if not self.worker.stop(drain=True, timeout_s=left()):
            return False
        return self.output.flush_all(timeout_s=left())

    def cancel(self) -> None:
        self.worker.cancel()

    def ack_results(self, entry_ids: Sequence[str]) -> None:
        """Nothing to acknowledge: the worker runs in this process."""

    def close(self) -> None:
        self.output.stop(timeout_s=2.0)
