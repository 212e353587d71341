"""The acknowledgement rule: SeedLink state advances only behind outputs Redis has accepted.

:class:`AckBook` keeps, per station (``NET.STA.LOC``), the windows that are not yet fully published.
After each batch the output stage queues its segments and picks and then an :class:`AckMarker`
naming, per station, the time up to which every output is final and queued. The publisher hands the
marker back only after Redis accepted everything queued before it; then windows ending at or before
that time are done, and the station's safe time is the start of its oldest window not done (shed
windows count as done: they will never be published, and that is counted in
``coldstream_windows_shed_total``). The service then moves the SeedLink state of ``NET_STA`` over
packets whose data end at or before the safe time, so a restart replays everything needed to rebuild
unpublished outputs, and the idempotent output ids absorb the repeats.

A station whose clock jumps back (its buffer reset to an earlier time base: ``new_time_base``) may
leave windows of the old time base pending. They are booked apart, because times of the two time bases
cannot be compared: the safe time follows the new time base only (the old packets' data times lie after
it, and the service passes those packets once the old time base is done), and while old windows are
pending a marker of the station applies to them only (the output stage still finishing the old run
names old times, after which every new window would look published). ``old_time_bases_done`` names a
station once every old window is done and no output of the station was lost; the old data not cut into
windows were lost with the reset, counted as the clock jump.

Pure bookkeeping (thread-safe), no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from streamer.records import Window

__all__ = ["AckBook", "AckMarker", "station_key"]


def station_key(station_id: str) -> str:
    """SeedLink station key ``NET_STA`` of a ``NET.STA.LOC`` station id."""
    parts = station_id.split(".")
    return f"{parts[0]}_{parts[1]}" if len(parts) >= 2 else station_id


def _frozen(mapping: Mapping[str, int] | None) -> Mapping[str, int]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class AckMarker:
    """What the publisher hands back once Redis accepted everything queued before it.

    ``safe_ns``: per station id, the time (ns) before which every output of the station is final and
    queued. ``flushed``: the stations' stitchers were flushed, so every window *starting* before that
    time is done (not only those ending before it). ``result_ids``: scale-out result entries whose
    outputs are all queued before this marker; they may be acknowledged on the results stream.
    """

    safe_ns: Mapping[str, int] = field(default_factory=lambda: _frozen(None))
    flushed: bool = False
    result_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "safe_ns", _frozen(self.safe_ns))
        object.__setattr__(self, "result_ids", tuple(self.result_ids))

    def with_results(self, result_ids: Iterable[str]) -> AckMarker:
        """The same marker, also carrying scale-out result entry ids."""
        return AckMarker(self.safe_ns, self.flushed, (*self.result_ids, *result_ids))


class AckBook:
    """Which windows of each station are not yet fully published (thread-safe, pure bookkeeping)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[int, int]] = {}  # station -> {start_ns: end_ns}
        self._published_ns: dict[str, int] = {}
        self._lost_ns: dict[str, int] = {}  # station -> earliest data time of an output Redis never got
        # station -> {start_ns: end_ns} of the windows of the time base it left by a clock jump back,
        # pending until done and the old time base reported done; stations with a lost output meanwhile
        self._old_base: dict[str, dict[int, int]] = {}
        self._old_base_lost: set[str] = set()

    def add(self, windows: Iterable[Window]) -> None:
        with self._lock:
            for w in windows:
                self._pending.setdefault(w.station_id, {})[w.start_ns] = w.end_ns

    def drop(self, windows: Iterable[Window]) -> None:
        """Windows that will never be published (shed): no longer hold the safe time back."""
        with self._lock:
            for w in windows:
                self._pending.get(w.station_id, {}).pop(w.start_ns, None)
                self._old_base.get(w.station_id, {}).pop(w.start_ns, None)

    def published_through(self, station_id: str, until_ns: int, flushed: bool = False) -> None:
        """Every output of ``station_id`` before ``until_ns`` was accepted by Redis; with ``flushed``
        the stitchers were flushed, so every window starting before ``until_ns`` is done. While windows
        of a time base the station left by a clock jump back are pending, only they are meant."""
        with self._lock:
            pend = self._old_base.get(station_id) or self._pending.get(station_id, {})
            done = [s for s, e in pend.items() if (s < until_ns if flushed else e <= until_ns)]
            for start in done:
                del pend[start]
            self._published_ns[station_id] = max(self._published_ns.get(station_id, until_ns), until_ns)

    def apply(self, marker: AckMarker) -> None:
        """Record what an accepted marker says."""
        for sid, until in marker.safe_ns.items():
            self.published_through(sid, until, marker.flushed)

    def lost(self, station_id: str, from_ns: int) -> None:
        """A pick of ``station_id`` needing data from ``from_ns`` on never reached Redis (dropped
        from a full backlog): the station's safe time stays at or before ``from_ns`` for the rest of
        this run, so a restart asks the server for that data again and publishes the pick then.
        (A dropped segment cannot be repaired that way: later segments of the station were stored,
        and segments are only ever appended; it stays a hole, counted.)"""
        with self._lock:
            self._lost_ns[station_id] = min(self._lost_ns.get(station_id, from_ns), from_ns)
            if station_id in self._old_base:  # of either time base: the old one is never done (conservative)
                self._old_base_lost.add(station_id)

    def new_time_base(self, station_id: str) -> None:
        """``station_id`` restarted in an earlier time base (its clock jumped back; call it before
        adding the new time base's windows): the windows pending now are its old time base's, booked
        apart until done; its packets from before the jump wait for them (``old_time_bases_done``). A
        lost output of the station keeps the old time base from ever being done in this run, as it
        keeps the safe time back."""
        with self._lock:
            self._old_base.setdefault(station_id, {}).update(self._pending.pop(station_id, {}))
            if station_id in self._lost_ns:
                self._old_base_lost.add(station_id)

    def old_time_bases_done(self) -> list[str]:
        """Stations (each named once per ``new_time_base``) whose old time base has nothing left to
        publish: every window of it is done and no output of the station was lost."""
        with self._lock:
            done = sorted(sid for sid, pend in self._old_base.items() if not pend and sid not in self._old_base_lost)
            for sid in done:
                del self._old_base[sid]
            return done

    def safe_ns(self, station_id: str, uncut_ns: int | None = None) -> int | None:
        """The time before which the station needs no data again: the start of its oldest window not
        fully published, at most ``uncut_ns`` (where its data not yet cut into windows begins) and
        at most any lost output's data; without any of these, the published time; None if unknown."""
        with self._lock:
            candidates = []
            pend = self._pending.get(station_id)
            if pend:
                candidates.append(min(pend))
            if uncut_ns is not None:
                candidates.append(uncut_ns)
            if not candidates and station_id in self._published_ns:
                candidates.append(self._published_ns[station_id])
            if station_id in self._lost_ns:
                candidates.append(self._lost_ns[station_id])
            return min(candidates) if candidates else None

    def safe_by_key(
        self, station_ids: Iterable[str], uncut: Mapping[str, int] | None = None,
        read_before: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        """Safe time per SeedLink key ``NET_STA`` of the given stations: the minimum over **every**
        location code of that key the book or ``uncut`` knows (``uncut``: station id -> start of its
        data not yet cut into windows, from the ingestor), not only the ones named, so data of one
        location still pending or uncut is never passed because another location's outputs were
        published. ``read_before``: station id -> how far before a window's start its data is read
        (resampled channels): a pending window holds the state back by that much more."""
        uncut = uncut or {}
        read_before = read_before or {}
        keys = {station_key(sid) for sid in station_ids}
        with self._lock:
            pending = {sid: min(p) - read_before.get(sid, 0) for sid, p in self._pending.items()
                       if p and station_key(sid) in keys}
            published = {sid: t for sid, t in self._published_ns.items() if station_key(sid) in keys}
            lost = {sid: t for sid, t in self._lost_ns.items() if station_key(sid) in keys}
        # a location constrains its key only while it has windows pending, data not yet cut or a lost
        # output: one that stopped sending (retired, evicted) must not freeze the others' state
        constrained: dict[str, int] = {}
        for source in (pending, lost, {sid: t for sid, t in uncut.items() if station_key(sid) in keys}):
            for sid, t in source.items():
                key = station_key(sid)
                constrained[key] = min(constrained.get(key, t), t)
        out = dict(constrained)
        for sid, t in published.items():
            key = station_key(sid)
            if key not in constrained:
                out[key] = min(out.get(key, t), t)
        return out

    def stations(self) -> list[str]:
        with self._lock:
            return sorted(set(self._pending) | set(self._published_ns) | set(self._old_base))

    def pending_windows(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values()) + sum(len(p) for p in self._old_base.values())
