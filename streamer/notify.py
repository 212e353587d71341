"""systemd service notification (``sd_notify``) and a progress-gated watchdog, without libsystemd.

systemd's side of the protocol (``man sd_notify``): for a ``Type=notify`` unit the service
manager sets ``NOTIFY_SOCKET`` to an ``AF_UNIX`` datagram socket (a leading ``@`` means the
Linux abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (the timeout in
microseconds) and ``WATCHDOG_PID`` (the process expected to ping). The service sends datagrams of
newline-separated ``KEY=VALUE`` lines: ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``STOPPING=1``, ``EXTEND_TIMEOUT_USEC=...``.

These three variables belong to systemd's protocol, not to coldstream's configuration, so
:class:`Notifier` is handed them as a mapping by the caller (the service passes ``os.environ``;
tests pass a dict). Nothing here reads files or the environment on its own, starts threads or
installs signal handlers.

Pieces:

- :class:`Notifier` sends messages; every method is a no-op outside systemd, and send errors are
  logged once per failure streak and never raised, so notification can never take the service down.
- :class:`HealthMonitor` records when each pipeline stage (ingest, worker, publisher, ...) last
  made progress or reported that it is idle, and names the stages that have stalled.
- :class:`WatchdogPinger` is the small object the service calls every
  ``notifier.watchdog_interval_s``: it sends ``WATCHDOG=1`` only while every stage is healthy, so
  a hung CUDA call or a wedged publisher stops the pings and systemd restarts the service
  (``WatchdogSec=`` + ``Restart=on-failure``) instead of a pinging thread hiding the hang.

Limitations: only ``AF_UNIX`` notify sockets (not the ``vsock:`` addresses of systemd >= 253, used
for virtual machines); no file-descriptor passing (``FDSTORE``); the notifier does not unset
``NOTIFY_SOCKET`` for child processes (units use ``NotifyAccess=main`` so children are ignored).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.metrics import Metrics

log = logging.getLogger(__name__)

# How often STATUS= is refreshed when systemd runs the service without a watchdog.
DEFAULT_STATUS_INTERVAL_S = 10.0


class Notifier:
    """Send ``sd_notify`` messages to the socket systemd named in ``NOTIFY_SOCKET``.

    ``environ`` is the process environment as a mapping (default ``os.environ``); only
    ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are read, once, here. ``pid`` is this
    process's id (default ``os.getpid()``): the watchdog is enabled only when ``WATCHDOG_PID`` is
    unset or equals it, as ``sd_watchdog_enabled(3)`` prescribes, so a child that inherited the
    variables never pings for its parent.

    Thread-safe: one datagram socket guarded by a lock.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        self._address = self._parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = self._parse_watchdog(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    # -- configuration parsed from systemd's variables -------------------------------------------

    @staticmethod
    def _parse_address(raw: str) -> str | None:
        if not raw:
            return None
        if raw.startswith("@"):
            return "\0" + raw[1:]  # abstract namespace
        if raw.startswith("/"):
            return raw
        log.warning("NOTIFY_SOCKET %r is not an AF_UNIX path; systemd notification disabled", raw)
        return None

    def _parse_watchdog(self, usec: str | None, pid: str | None) -> int | None:
        if self._address is None or not usec:
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", usec)
            return None
        if value <= 0:
            return None
        if pid:
            try:
                owner = int(pid)
            except ValueError:
                log.warning("WATCHDOG_PID=%r is not an integer; watchdog disabled", pid)
                return None
            if owner != self._pid:
                log.info("WATCHDOG_PID=%d is not this process (%d); watchdog disabled", owner, self._pid)
                return None
        return value

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self._watchdog_usec is not None

    @property
    def watchdog_timeout_s(self) -> float | None:
        """``WatchdogSec=`` as seconds, or None when the watchdog is off for this process."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1e6

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of ``WATCHDOG_USEC`` (``sd_watchdog_enabled(3)``); None when off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    # -- messages --------------------------------------------------------------------------------

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; keys are upper-cased (``ready=1`` -> ``READY=1``).

        Newlines inside values are replaced by spaces (the protocol is line-based). Returns True
        when the datagram was sent, False outside systemd or on error (logged once per streak).
        """
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key.upper()}={text}")
        payload = "\n".join(lines).encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                if not self._failing:
                    log.warning("cannot notify systemd at %r: %s (further failures not logged)", self._printable_address, exc)
                    self._failing = True
                self._close_locked()
                return False
            if self._failing:
                log.info("systemd notification works again")
                self._failing = False
            return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished (model loaded and warmed up), optionally with a STATUS."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=text``: shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self, status: str | None = None) -> bool:
        """``WATCHDOG=1`` (no-op when the watchdog is off for this process)."""
        if self._watchdog_usec is None:
            return False
        if status is None:
            return self.notify(WATCHDOG=1)
        return self.notify(WATCHDOG=1, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown (drain) has begun."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: the current start/stop job may run ``seconds`` longer from now.

        Re-send before it runs out when loading or draining takes longer still.
        """
        usec = max(0, int(seconds * 1e6))
        return self.notify(EXTEND_TIMEOUT_USEC=usec)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    @property
    def _printable_address(self) -> str:
        addr = self._address or ""
        return "@" + addr[1:] if addr.startswith("\0") else addr

    def __repr__(self) -> str:
        return (
            f"Notifier(socket={self._printable_address!r}, watchdog_interval_s={self.watchdog_interval_s!r})"
            if self.enabled
            else "Notifier(disabled)"
        )


class HealthMonitor:
    """When each pipeline stage last showed life, and which have stalled.

    A stage calls :meth:`progress` when it did work (ingest decoded a record, the worker finished a
    batch, the publisher wrote to Redis) and :meth:`idle` when it is alive with nothing to do (the
    worker's queue is empty, the publisher has nothing pending). Either refreshes the stage; a
    stage that has done neither for more than ``stall_s`` seconds is stalled. Every stage starts
    fresh at construction, so a slow first connection gets a full ``stall_s`` of grace.

    ``clock`` is monotonic seconds (injectable for tests). When ``metrics`` is given, progress also
    sets ``coldstream_stage_last_progress_timestamp_seconds{stage}`` from ``wall_clock``.
    Thread-safe: stages report from their own threads or tasks.
    """

    def __init__(
        self,
        stages: Sequence[str],
        stall_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        metrics: Metrics | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not stages:
            raise ValueError("HealthMonitor needs at least one stage")
        if len(set(stages)) != len(stages):
            raise ValueError(f"duplicate stage names in {list(stages)}")
        if stall_s <= 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s}")
        self.stages: tuple[str, ...] = tuple(stages)
        self.stall_s = float(stall_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._metrics = metrics
        self._lock = threading.Lock()
        now = clock()
        self._last_seen: dict[str, float] = {s: now for s in self.stages}
        self._idle: dict[str, bool] = {s: False for s in self.stages}

    def _check(self, stage: str) -> None:
        if stage not in self._last_seen:
            raise KeyError(f"unknown stage {stage!r}; known: {', '.join(self.stages)}")

    def progress(self, stage: str) -> None:
        """``stage`` did useful work just now."""
        self._check(stage)
        now = self._clock()
        with self._lock:
            self._last_seen[stage] = now
            self._idle[stage] = False
        if self._metrics is not None:
            wall = self._wall_clock()
            self._metrics.stage_progress.labels(stage=stage).set(wall)
            self._metrics.stage_heartbeat.labels(stage=stage).set(wall)

    def idle(self, stage: str) -> None:
        """``stage`` is alive and has nothing to do (counts as healthy)."""
        self._check(stage)
        now = self._clock()
        with self._lock:
            self._last_seen[stage] = now
            self._idle[stage] = True
        if self._metrics is not None:
            self._metrics.stage_heartbeat.labels(stage=stage).set(self._wall_clock())

    def reset(self) -> None:
        """Start every stage fresh now, e.g. when the service becomes ready, so that a long model
        load does not count against ``stall_s``."""
        now = self._clock()
        with self._lock:
            for s in self.stages:
                self._last_seen[s] = now
                self._idle[s] = False
        if self._metrics is not None:
            wall = self._wall_clock()
            for s in self.stages:
                self._metrics.stage_heartbeat.labels(stage=s).set(wall)

    def age_s(self, stage: str, now: float | None = None) -> float:
        """Seconds since ``stage`` last reported progress or idleness."""
        self._check(stage)
        t = self._clock() if now is None else now
        with self._lock:
            return max(0.0, t - self._last_seen[stage])

    def is_idle(self, stage: str) -> bool:
        self._check(stage)
        with self._lock:
            return self._idle[stage]

    def healthy(self, now: float | None = None) -> tuple[bool, list[str]]:
        """``(all stages healthy, names of stalled stages in stage order)``."""
        t = self._clock() if now is None else now
        with self._lock:
            stalled = [s for s in self.stages if t - self._last_seen[s] > self.stall_s]
        return (not stalled, stalled)


class WatchdogPinger:
    """Send ``WATCHDOG=1`` only while every stage of ``monitor`` is healthy.

    The service calls :meth:`tick` every :attr:`interval_s` (or runs :meth:`run` /
    :meth:`run_async` in its supervision thread or task). Each healthy tick pings and increments
    ``coldstream_watchdog_pings_total``; an unhealthy tick sends no ping, logs the stalled stages
    once per episode and puts them in ``STATUS=`` so ``systemctl status`` shows why the watchdog
    will fire. ``status`` is an optional callable returning a short status line
    (``"stations=87/92 queue=3"``) sent with each ping.
    """

    def __init__(
        self,
        notifier: Notifier,
        monitor: HealthMonitor,
        metrics: Metrics | None = None,
        status: Callable[[], str] | None = None,
        status_interval_s: float = DEFAULT_STATUS_INTERVAL_S,
    ) -> None:
        self.notifier = notifier
        self.monitor = monitor
        self.metrics = metrics
        self._status = status
        self._status_interval_s = status_interval_s
        self._stalled: list[str] = []

    @property
    def interval_s(self) -> float | None:
        """Seconds between ticks: half the watchdog timeout, else the status refresh interval when
        under systemd without a watchdog, else None (nothing to do)."""
        if self.notifier.watchdog_interval_s is not None:
            return self.notifier.watchdog_interval_s
        return self._status_interval_s if self.notifier.enabled else None

    def _status_text(self) -> str | None:
        if self._status is None:
            return None
        try:
            return self._status()
        except Exception:  # a broken status line must not stop the watchdog
            log.exception("status callback failed")
            return None

    def tick(self, now: float | None = None) -> bool:
        """Check health once; ping when healthy. Returns True when a ping was sent."""
        ok, stalled = self.monitor.healthy(now)
        if not ok:
            if stalled != self._stalled:
                ages = ", ".join(f"{s} {self.monitor.age_s(s, now):.0f} s" for s in stalled)
                log.warning("watchdog pings withheld: stalled stages: %s", ages)
                self.notifier.status("stalled: " + ", ".join(stalled))
            self._stalled = stalled
            return False
        if self._stalled:
            log.info("all stages healthy again; watchdog pings resume")
            self._stalled = []
        text = self._status_text()
        if not self.notifier.watchdog_enabled:
            if text is not None:
                self.notifier.status(text)
            return False
        sent = self.notifier.watchdog(text)
        if sent and self.metrics is not None:
            self.metrics.watchdog_pings.inc()
        return sent

    def run(self, stop: threading.Event) -> None:
        """Tick every :attr:`interval_s` until ``stop`` is set (for a supervision thread)."""
        interval = self.interval_s
        if interval is None:
            return
        while not stop.wait(interval):
            self.tick()

    async def run_async(self, stop: asyncio.Event) -> None:
        """Tick every :attr:`interval_s` until ``stop`` is set (for an asyncio supervision task)."""
        interval = self.interval_s
        if interval is None:
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                self.tick()

    @property
    def stalled(self) -> list[str]:
        """Stalled stages seen at the last tick."""
        return list(self._stalled)
