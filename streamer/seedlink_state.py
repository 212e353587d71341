"""SeedLink resume state: what was delivered, what downstream acknowledged, and the state file.

- ``StateStore``: the JSON state file (per server, per station ``NET_STA``: the acknowledged sequence
  number and the end time of that packet), written atomically (temp file in the same directory,
  fsync, ``os.replace``, fsync of the directory).
- ``StateTracker``: in-memory bookkeeping of packets handed downstream and of how far downstream
  has acknowledged them. ``acknowledge(station_key, safe_ns)`` is the only way the saved state
  advances: it moves the acknowledged sequence over the longest prefix (in arrival order) of
  delivered packets whose data end at or before ``safe_ns``. A packet that is delivered but not
  yet acknowledged is therefore asked for again after a restart (a duplicate, absorbed by
  idempotent output IDs downstream), never skipped (a gap). Two kinds of packets are passed
  whatever their data time: *handled* ones (rejected or undecodable: no output needs them), and
  those of a time base their station left by a clock jump back, once that time base has nothing
  left to publish (``time_base_reset``, then ``old_time_base_done``): their data times lie after
  the new time base's, which may not reach them for days.
- ``save_state_periodically``: the task that writes the file every ``save_interval_s`` while
  something was acknowledged.

Limitations: pending (delivered, unacknowledged) packets are kept in memory, about 100 bytes each,
until acknowledged; the file holds one resume point per server and station (not per channel). One
safe time serves all location codes of a ``NET_STA``: a location whose clock jumped back while
another's did not holds the other's packets until its new time base reaches theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.config import SeedLinkSettings
from streamer.errors import StreamerError
from streamer.logutil import RateLimitedLog
from streamer.metrics import Metrics
from streamer.records import NS_PER_S, PacketRef

log = logging.getLogger(__name__)

STATE_FORMAT = "coldstream-seedlink-state"
STATE_VERSION = 1

class SeedLinkStateError(StreamerError):
    """The state file cannot be read or written."""


# ---------------------------------------------------------------------------------------------
# time helpers
# ---------------------------------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def ns_to_iso(t_ns: int) -> str:
    """``2026-11-25T12:00:05.120000Z`` (microsecond resolution, UTC). Times outside the calendar
    (years 1-9999; a corrupt header's) give its first or last instant, never an error."""
    sec, rem = divmod(int(t_ns), NS_PER_S)
    try:
        d = _EPOCH + dt.timedelta(seconds=sec, microseconds=rem // 1000)
    except OverflowError:
        d = (dt.datetime.max if sec > 0 else dt.datetime.min).replace(tzinfo=dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_to_ns(text: str) -> int:
    """Inverse of ``ns_to_iso`` (accepts any ISO 8601 UTC time)."""
    d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    delta = d - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


# ---------------------------------------------------------------------------------------------
# state file
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationState:
    """A resume point: SeedLink sequence number ``seq`` and the end time of that packet."""

    seq: int
    end_ns: int


ServerStates = dict[str, dict[str, StationState]]  # server "host:port" -> station "NET_STA" -> state


class StateStore:
    """The SeedLink state file: JSON, written atomically.

    Format (``docs/seedlink.md``)::

        {"format": "coldstream-seedlink-state", "version": 1, "saved_at": "...Z",
         "servers": {"host:port": {"NET_STA": {"seq": 1234, "end": "2026-...Z", "end_ns": 17...}}}}

    ``seq`` is the last acknowledged sequence number (decimal), ``end``/``end_ns`` the end time of
    that packet (the ISO string is for people; ``end_ns`` is what is read back).
    """

    def __init__(self, path: Path | str, metrics: Metrics | None = None) -> None:
        self.path = Path(path)
        self.metrics = metrics

    def load(self) -> ServerStates:
        """The saved states; empty when the file does not exist.

        A corrupt or unreadable file is logged as an error, counted, moved aside to
        ``<name>.corrupt-<unix time>`` for inspection, and an empty state is returned: the
        client then starts from real time rather than crashing.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("no SeedLink state file at %s: starting without resume points", self.path)
            return {}
        except OSError as exc:
            self._corrupt(f"cannot read: {exc}", move=False)
            return {}
        try:
            return self._parse(json.loads(raw.decode("utf-8")))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # UnicodeDecodeError is a ValueError
            self._corrupt(str(exc), move=True)
            return {}

    @staticmethod
    def _parse(data: Any) -> ServerStates:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError("not a coldstream SeedLink state file")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        out: ServerStates = {}
        for server, stations in data["servers"].items():
            per: dict[str, StationState] = {}
            for key, entry in stations.items():
                seq = entry["seq"]
                end_ns = entry["end_ns"]
                if not isinstance(seq, int) or not isinstance(end_ns, int) or seq < 0:
                    raise ValueError(f"bad entry for {server} {key}: {entry!r}")
                per[str(key)] = StationState(seq, end_ns)
            out[str(server)] = per
        return out

    def _corrupt(self, why: str, move: bool) -> None:
        if self.metrics is not None:
            self.metrics.state_file_errors.inc()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        if move:
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
        log.error(
            "SeedLink state file %s is unusable (%s); kept as %s; starting from real time without resume points",
            self.path, why, aside,
        )

    def save(self, states: ServerStates) -> None:
        """Write ``states`` atomically: a crash at any point leaves the old file or the new one.

        Raises ``SeedLinkStateError`` when the file cannot be written (the old file stays).
        """
        data = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "saved_at": ns_to_iso(time.time_ns()),
            "servers": {
                server: {
                    key: {"seq": st.seq, "end": ns_to_iso(st.end_ns), "end_ns": st.end_ns}
                    for key, st in sorted(stations.items())
                }
                for server, stations in sorted(states.items())
            },
        }
        text = json.dumps(data, indent=1) + "\n"
        directory = self.path.parent if str(self.path.parent) else Path(".")
        tmp_name: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, self.path)
            tmp_name = None
            _fsync_dir(directory)
        except OSError as exc:
            raise SeedLinkStateError(f"cannot write SeedLink state file {self.path}: {exc}") from exc
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# acknowledgement bookkeeping
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Delivered:
    """A packet handed downstream and not yet acknowledged.

    ``end_ns`` is its data end (its resume time once acknowledged); ``station_id`` the
    ``NET.STA.LOC`` its header names (None when unknown: undecodable). ``handled``: no output
    needs its data (rejected, undecodable, or of an old time base that is done), so it is passed
    whatever its time. ``old_base``: it belongs to a time base its station left by a clock jump
    back, and waits for ``old_time_base_done`` whatever its time.
    """

    seq: int
    end_ns: int
    station_id: str | None = None
    handled: bool = False
    old_base: bool = False

    def passable(self, safe_ns: int) -> bool:
        return self.handled or (not self.old_base and self.end_ns <= safe_ns)

    def state(self) -> StationState:
        return StationState(self.seq, self.end_ns)


class StateTracker:
    """Delivered and acknowledged SeedLink positions, per server and station.

    ``record()`` is called by the source for every packet it hands downstream; ``acknowledge()``
    by the service once every output that needs data before ``safe_ns`` has been published.
    Thread-safe (acknowledgements may come from a publisher thread).
    """

    def __init__(
        self,
        store: StateStore | None = None,
        save_interval_s: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.save_interval_s = save_interval_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._acked: ServerStates = {}
        self._delivered: ServerStates = {}
        # station key -> server -> delivered, unacknowledged packets in arrival order
        self._pending: dict[str, dict[str, deque[_Delivered]]] = {}
        self._dirty = False
        self._last_save_s: float | None = None
        # a failing save is retried every tick (0.5 s): one ERROR a minute, every failure counted
        self._save_error_log = RateLimitedLog(log, 60.0)
        self._save_failing = False

    @classmethod
    def from_settings(cls, settings: SeedLinkSettings, metrics: Metrics | None = None) -> StateTracker:
        """A tracker on ``settings.state_file``, already loaded."""
        tracker = cls(StateStore(settings.state_file, metrics), settings.state_save_interval_s, metrics)
        tracker.load()
        return tracker

    def load(self) -> None:
        """Read the acknowledged positions from the store (replacing what is in memory)."""
        loaded = self.store.load() if self.store is not None else {}
        with self._lock:
            self._acked = {server: dict(st) for server, st in loaded.items()}
            self._delivered = {}
            self._pending.clear()
            self._dirty = False
        n = sum(len(v) for v in loaded.values())
        if n:
            log.info("SeedLink state: %d station resume points loaded from %s", n, self.store.path if self.store else "-")

    def record(self, ref: PacketRef, start_ns: int, end_ns: int, station_id: str | None = None) -> None:
        """A packet was handed downstream (not yet acknowledged); ``station_id``: the ``NET.STA.LOC``
        of its header, when readable (what ``time_base_reset`` selects by)."""
        with self._lock:
            self._delivered.setdefault(ref.server, {})[ref.station_key] = StationState(ref.sequence, end_ns)
            self._pending.setdefault(ref.station_key, {}).setdefault(ref.server, deque()).append(
                _Delivered(ref.sequence, end_ns, station_id)
            )

    def acknowledge(self, station_key: str, safe_ns: int, server: str | None = None) -> int:
        """Advance the acknowledged position of ``station_key`` (on ``server``, or on every server).

        Moves over the longest run, in arrival order, of delivered packets whose data end at or
        before ``safe_ns``; stops at the first that ends later, even if packets after it (other
        channels) end earlier, so a restart never skips data that was not yet published.
        Returns the number of packets acknowledged.
        """
        done = 0
        with self._lock:
            for srv, pending in self._pending.get(station_key, {}).items():
                if server is not None and srv != server:
                    continue
                last: _Delivered | None = None
                while pending and pending[0].passable(safe_ns):
                    last = pending.popleft()
                    done += 1
                if last is not None:
                    self._acked.setdefault(srv, {})[station_key] = last.state()
                    self._dirty = True
        return done

    def handled(self, ref: PacketRef) -> None:
        """The packet's data will never be in an output (rejected or undecodable): ``acknowledge``
        moves over it whatever its data time, so one bad header cannot freeze its station, and its
        resume time becomes that of the packet delivered before it (a bad header's time would make
        a resume by time ask for far too much, or for nothing until that time)."""
        with self._lock:
            pending = self._pending.get(ref.station_key, {}).get(ref.server, deque())
            # normally the newest entry (handled right after its delivery)
            i = self._index_of(pending, ref.sequence)
            if i < 0:
                return  # already acknowledged by its data time: a mark left now would pass a later packet
            # its header time is not data time (0 when undecodable, far future or past when rejected):
            # a resume by time starts after the data before it, not there
            acked = self._acked.get(ref.server, {}).get(ref.station_key)
            before = pending[i - 1].end_ns if i > 0 else (acked.end_ns if acked is not None else None)
            if before is not None:
                pending[i].end_ns = before
                delivered = self._delivered.get(ref.server, {})
                if ref.station_key in delivered and delivered[ref.station_key].seq == ref.sequence:
                    delivered[ref.station_key] = StationState(ref.sequence, before)
            pending[i].handled = True

    @staticmethod
    def _index_of(pending: deque[_Delivered], seq: int) -> int:
        """Index of the newest pending entry numbered ``seq`` (-1 when none: already acknowledged)."""
        return next((j for j in range(len(pending) - 1, -1, -1) if pending[j].seq == seq), -1)

    def time_base_reset(self, ref: PacketRef, station_id: str, resume_ns: int) -> int:
        """The packet ``ref`` (being handled now) reset ``station_id`` to an earlier time base (a
        clock jump back). Its packets delivered before it and not handled belong to the old time
        base: from now on they are passed only after ``old_time_base_done`` (never by data time,
        which the new time base's safe time may reach while an old window is still unpublished), and
        their resume time becomes ``resume_ns`` (the new time base's first data kept): a resume by
        time then repeats the old time base rather than skipping the new one. Returns their number.
        Packets of the station's other location codes, and of other stations, are not touched."""
        n = 0
        with self._lock:
            for srv, pending in self._pending.get(ref.station_key, {}).items():
                # delivered before ``ref``: on its server the entries before it (none left when it was
                # acknowledged already); elsewhere all entries so far (each is handled when delivered)
                stop = max(0, self._index_of(pending, ref.sequence)) if srv == ref.server else len(pending)
                for j in range(stop):
                    entry = pending[j]
                    if entry.station_id == station_id and not entry.handled:
                        entry.old_base = True
                        entry.end_ns = min(entry.end_ns, resume_ns)
                        n += 1
        return n

    def old_time_base_done(self, station_key: str, station_id: str) -> int:
        """Every output of ``station_id``'s time base before its clock jump back was published (or
        will never be: shed, or data not cut into windows before the reset): its packets waiting
        since ``time_base_reset`` are passed by ``acknowledge`` from now on, as handled ones are.
        Returns their number."""
        n = 0
        with self._lock:
            for pending in self._pending.get(station_key, {}).values():
                for entry in pending:
                    if entry.old_base and entry.station_id == station_id:
                        entry.old_base = False
                        entry.handled = True
                        n += 1
        if n:
            log.info("SeedLink state of %s passes %d packets of %s from before its clock jump back "
                     "(published, or lost with the reset)", station_key, n, station_id)
        return n

    def keys(self) -> list[str]:
        """Station keys with delivered, unacknowledged packets."""
        with self._lock:
            return [k for k, by_server in self._pending.items() if any(by_server.values())]

    def acknowledge_all(self, safe_ns: int) -> int:
        """``acknowledge`` for every station seen (e.g. on a drain where everything was published)."""
        with self._lock:
            keys = list(self._pending)
        return sum(self.acknowledge(key, safe_ns) for key in keys)

    def acked(self, server: str, station_key: str) -> StationState | None:
        with self._lock:
            return self._acked.get(server, {}).get(station_key)

    def acked_states(self) -> ServerStates:
        with self._lock:
            return {srv: dict(st) for srv, st in self._acked.items()}

    def pending_count(self, server: str | None = None, station_key: str | None = None) -> int:
        """Delivered packets not yet acknowledged."""
        with self._lock:
            return sum(
                len(p)
                for key, per_server in self._pending.items()
                for srv, p in per_server.items()
                if (server is None or srv == server) and (station_key is None or key == station_key)
            )

    def pending_counts(self) -> dict[str, int]:
        """Delivered, unacknowledged packets per station key, over all servers (one pass)."""
        with self._lock:
            return {key: sum(len(p) for p in per_server.values()) for key, per_server in self._pending.items()}

    def resume_points(self, server: str) -> dict[str, StationState]:
        """Where to ask ``server`` to continue, per station.

        Within one process a reconnect continues after the last *delivered* packet (those data
        are already in the pipeline); after a restart only the *acknowledged* position exists.
        """
        with self._lock:
            out = dict(self._acked.get(server, {}))
            out.update(self._delivered.get(server, {}))
            return out

    def last_delivered(self, server: str, station_key: str) -> StationState | None:
        with self._lock:
            return self._delivered.get(server, {}).get(station_key)

    def save(self, now_s: float | None = None) -> bool:
        """Write the acknowledged positions now; False (logged) when the write failed."""
        if self.store is None:
            return False
        with self._lock:
            snapshot = {srv: dict(st) for srv, st in self._acked.items()}
            self._dirty = False
        now = time.monotonic() if now_s is None else now_s
        try:
            self.store.save(snapshot)
        except SeedLinkStateError as exc:
            if self.metrics is not None:
                self.metrics.state_save_errors.inc()
            self._save_failing = True
            self._save_error_log.log("save", logging.ERROR, "%s (retried; the state does not advance on disk)",
                                     exc, now_s=now)
            with self._lock:
                self._dirty = True
            return False
        if self._save_failing:
            self._save_failing = False
            log.info("SeedLink state file %s written again", self.store.path)
        self._last_save_s = now
        if self.metrics is not None:
            self.metrics.state_saves.inc()
            self.metrics.state_save_timestamp.set(time.time())
        return True

    def save_if_due(self, now_s: float | None = None) -> bool:
        """Save when something was acknowledged and ``save_interval_s`` has passed since the last
        save (``now_s`` is a monotonic time in seconds). Returns True if a save happened."""
        now = time.monotonic() if now_s is None else now_s
        with self._lock:
            dirty = self._dirty
        if not dirty:
            return False
        if self._last_save_s is not None and now - self._last_save_s < self.save_interval_s:
            return False
        return self.save(now)



async def save_state_periodically(tracker: StateTracker, stop: asyncio.Event, tick_s: float = 0.5) -> None:
    """Call ``tracker.save_if_due()`` until ``stop`` is set (no final save: the caller decides)."""
    while not stop.is_set():
        tracker.save_if_due()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick_s)
