"""The ingest stage: miniSEED payloads in, model windows out.

``Ingestor`` is what the service's I/O loop calls for every SeedLink payload: decode
(``streamer.mseed``) → per-station ring buffers (``streamer.buffers``) → grid windows
(``streamer.windows``). It never raises for bad data: every problem is counted in the metrics
and logged once per station and kind (gaps at most once a minute per station), and the other
stations, and the rest of the same station's stream, keep flowing.

Not thread-safe: call it from one thread (the I/O loop), or hold a lock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from models.spec import DEFAULT_SPEC, ModelSpec
from streamer.buffers import HeldBlock, StationBuffer, StationInsert
from streamer.config import BufferSettings, WindowSettings
from streamer.eew import FastScheduler
from streamer.logutil import RateLimitedLog
from streamer.ack import station_key
from streamer.inventory import Inventory
from streamer.metrics import Metrics
from streamer.mseed import RecordDecodeError, IngestError, decode_payload
from streamer.records import NS_PER_S, PacketRef, SampleBlock, Window
from streamer.windows import WindowBatch, Windower

__all__ = ["Ingestor", "IngestError", "RecordDecodeError", "TimeBaseReset"]

log = logging.getLogger(__name__)

UNKNOWN_STATION = "unknown"
REPORTING_WINDOW_S = 60.0  # "stations reporting": data arrived within this many seconds
GAP_LOG_INTERVAL_S = 60.0
SILENCE_LOG_S = 30.0  # a station without data this long is logged once as silent (gap opened)
MAX_RELEASED_STATIONS = 100_000  # at most one gap line per station per interval
MAX_LOGGED_KEYS = 100_000  # station/kind pairs the log limiters remember


@dataclass(frozen=True)
class TimeBaseReset:
    """A station's buffer was reset to an earlier time base (a clock jump back, confirmed) by the
    block of ``packet``, whose data start at ``start_ns``. The old time base's data not yet cut into
    windows are gone; its packets can be acknowledged once its windows already cut are published
    (``AckBook.new_time_base``, ``StateTracker.time_base_reset``): the new time base's safe time
    lies before their data times."""

    station_id: str
    packet: PacketRef
    start_ns: int


@dataclass(frozen=True)
class _StationCounters:
    records_received: Any
    bytes_received: Any
    windows_emitted: Any


class Ingestor:
    """Decode, buffer and window the data of every station.

    ``now_ns`` is the wall clock (ns since the epoch); tests and replays inject their own.
    """

    def __init__(
        self,
        spec: ModelSpec = DEFAULT_SPEC,
        buffer_settings: BufferSettings | None = None,
        window_settings: WindowSettings | None = None,
        metrics: Metrics | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        inventory: Inventory | None = None,
        mono_ns: Callable[[], int] | None = None,
        fast: FastScheduler | None = None,
    ) -> None:
        self.spec = spec
        self.buffer_settings = buffer_settings if buffer_settings is not None else BufferSettings()
        self.window_settings = window_settings if window_settings is not None else WindowSettings()
        self.metrics = metrics if metrics is not None else Metrics()
        self.now_ns = now_ns
        # durations (silence, eviction, window ages) come from a monotonic clock, never from wall-time
        # differences (a clock step would release every buffer); an injected wall clock (tests,
        # replays) serves both unless a monotonic one is injected too
        self.mono_ns = mono_ns if mono_ns is not None else (time.monotonic_ns if now_ns is time.time_ns else now_ns)
        self._last_seen_mono: dict[str, int] = {}
        self.windower = Windower(spec, self.window_settings, self.buffer_settings, inventory)
        self._stations: dict[str, StationBuffer] = {}
        # one line per station and kind of problem, ever (bounded under a flood of bogus codes)
        self._once = RateLimitedLog(log, math.inf, max_keys=MAX_LOGGED_KEYS)
        # gaps: one line per station per GAP_LOG_INTERVAL_S of the injected clock, with the count held back
        self._gap_log = RateLimitedLog(
            log, GAP_LOG_INTERVAL_S, suffix=" ({n} more gaps since the last report)", max_keys=MAX_LOGGED_KEYS
        )
        # blocks rejected as clock jumps not confirmed (stray headers): one line per station per GAP_LOG_INTERVAL_S
        self._jump_log = RateLimitedLog(
            log, GAP_LOG_INTERVAL_S, suffix=" ({n} more since the last report)", max_keys=MAX_LOGGED_KEYS
        )
        self._station_counters: dict[str, _StationCounters] = {}
        # packets whose data will never be in a window (undecodable, rejected): handled, to acknowledge.
        # A packet held by its station buffer (a forward jump not confirmed yet) is neither: it is
        # acknowledged by its data time once buffered, or becomes handled when given up.
        self._handled: list[PacketRef] = []
        self._time_base_resets: list[TimeBaseReset] = []  # stations reset by a jump back, to take
        self._silent: set[str] = set()  # stations logged as silent (no data for SILENCE_LOG_S)
        self._released: dict[str, int] = {}  # station -> newest sample time, for silent stations
        # the early-warning fast path: triggers and trailing windows of armed stations (never acknowledged)
        self.fast = fast
        self._fast_windows: list[Window] = []

    # -- input -----------------------------------------------------------------------------------

    def add_payload(self, payload: bytes, arrival_ns: int, packet: PacketRef | None = None) -> list[Window]:
        """Decode a payload (one or more miniSEED records) and buffer its blocks; returns the
        windows that became ready. Bad data is counted and skipped, never raised."""
        try:
            blocks = decode_payload(payload, arrival_ns, packet)
            error: RecordDecodeError | None = None
        except RecordDecodeError as exc:
            blocks, error = exc.blocks, exc
        m = self.metrics
        if error is not None:
            station = self._error_station(error, packet)
            label = m.station(station)
            m.decode_errors.labels(label).inc()
            m.records_received.labels(label).inc()
            self._once.log((station, "decode"), logging.WARNING, "%s: undecodable record skipped (%s)", station, error.reason)
            if packet is not None and not blocks:
                self._handled.append(packet)
        if packet is not None and error is None and not blocks:
            self._handled.append(packet)  # a record without samples (log text, empty): nothing to wait for
        if blocks:
            self._counters(blocks[0].station_id).bytes_received.inc(len(payload))
        elif error is not None:
            m.bytes_received.labels(m.station(self._error_station(error, packet))).inc(len(payload))
        windows: list[Window] = []
        for block in blocks:
            self._counters(block.station_id).records_received.inc()
            windows.extend(self.add_block(block))
        return windows

    def add_block(self, block: SampleBlock) -> list[Window]:
        """Buffer one decoded block; returns the windows that became ready."""
        station_id = block.station_id
        if len(block.samples) == 0:
            return []
        station = self._stations.get(station_id)
        is_new = station is None
        if station is None:
            station = StationBuffer(station_id, self.spec, self.buffer_settings)
        now = self.now_ns()
        try:
            result = station.insert(block, now)
        except (ValueError, TypeError, OverflowError, IndexError) as exc:
            # a block that passes decoding but that the buffer cannot place (absurd header
            # values): count it and go on with the next one
            result = StationInsert(rejected="invalid")
            self._once.log((station_id, "invalid"), logging.WARNING, "%s: block rejected (%s)", block.seed_id, exc)
        self._count_insert(block, result, now)
        self._settle_held(result, now)
        if result.clock_jump and result.jump_s < 0 and block.packet is not None:
            self._time_base_resets.append(TimeBaseReset(station_id, block.packet, block.start_ns))
        if result.held:
            return []  # waits for the jump to be confirmed; its packet is not handled meanwhile
        if result.rejected is not None:
            if block.packet is not None:
                self._handled.append(block.packet)
            return []
        if is_new:  # stations exist only once they have buffered data (bogus codes cost nothing)
            self._stations[station_id] = station
            self._released.pop(station_id, None)
        self._last_seen_mono[station_id] = self.mono_ns()
        if station_id in self._silent:
            self._silent.discard(station_id)
            log.info("%s: gap closed: data flowing again", station_id)
        windows = self._emit(self.windower.collect(station, now_ns=self.mono_ns()))
        if self.fast is not None and not result.clock_jump:
            self._fast_path(block, station)
        return windows

    def _fast_path(self, block: SampleBlock, station: StationBuffer) -> None:
        triggers = self.fast.observe(block) if self.fast is not None else []
        if triggers:
            self.metrics.eew_triggers.labels(self.metrics.station(block.station_id)).inc(len(triggers))
        if self.fast is None:
            return
        w = self.fast.collect(station, self.windower)
        if w is not None:
            wall, mono = self.now_ns(), self.mono_ns()
            w.newest_arrival_mono_ns = mono - max(0, wall - w.newest_arrival_ns)
            self._fast_windows.append(w)

    def take_fast(self) -> list[Window]:
        """Trailing windows of the early-warning fast path cut since the last call."""
        out, self._fast_windows = self._fast_windows, []
        return out

    def poll(self, now_ns: int | None = None) -> list[Window]:
        """Decide windows of stations that have been silent for a lag (monotonic clock; ``now_ns``:
        a reading of it) although their newest data already covers the window; also drops stations
        silent for two horizons."""
        now = self.mono_ns() if now_ns is None else now_ns
        out: list[Window] = []
        evict_ns = round(2 * self.buffer_settings.horizon_s * NS_PER_S)
        for station_id, station in list(self._stations.items()):
            last = self._last_seen_mono.get(station_id)
            if last is None:
                continue
            silent_ns = now - last
            if silent_ns >= self.windower.lag_ns(station):
                out.extend(self._emit(self.windower.collect(station, flush=True)))
            else:  # late windows whose grace ended (windows.late_grace_s)
                out.extend(self._emit(self.windower.collect(station, now_ns=now)))
            if silent_ns >= SILENCE_LOG_S * NS_PER_S and station_id not in self._silent:
                self._silent.add(station_id)
                log.info("%s: gap opened: no data for %.0f s", station_id, silent_ns / NS_PER_S)
            if silent_ns >= evict_ns:
                del self._stations[station_id]
                self._reject_held(station.drop_held())
                self._last_seen_mono.pop(station_id, None)
                self.windower.forget(station_id)
                if self.fast is not None:
                    self.fast.forget(station_id)
                newest = station.newest_sample_ns()
                if newest is not None and len(self._released) < MAX_RELEASED_STATIONS:
                    self._released[station_id] = newest
                log.info("%s: no data for %.0f s, buffers released", station_id, silent_ns / NS_PER_S)
        return out

    def take_handled(self) -> list[PacketRef]:
        """Packets (since the last call) whose data no window will ever hold: undecodable or rejected
        records. Their SeedLink position may be acknowledged without waiting for outputs."""
        out, self._handled = self._handled, []
        return out

    def take_time_base_resets(self) -> list[TimeBaseReset]:
        """Stations reset to an earlier time base (a confirmed clock jump back) since the last call,
        with the packet that confirmed it: the caller books the old time base apart for
        acknowledgement (``AckBook.new_time_base``, ``StateTracker.time_base_reset``)."""
        out, self._time_base_resets = self._time_base_resets, []
        return out

    def uncut_ns(self, keys: Collection[str] | None = None) -> dict[str, int]:
        """Per buffered station (of the SeedLink keys ``NET_STA`` given, default all), where its data
        not yet cut into windows begins (the next grid window's start, or its first sample before any
        window was decided). Data before it is in windows already (emitted or skipped) or before the
        grid. For a channel at another rate than the model's, the next window also reads native
        samples before its start (the resampling filter's reach), so the time moves back by that
        much: a restart resumed from it cuts that window as this process would have.
        Safe to call from another thread."""
        out: dict[str, int] = {}
        for station_id, station in list(self._stations.items()):
            if keys is not None and station_key(station_id) not in keys:
                continue
            nxt = self.windower.next_start_ns(station_id)
            if nxt is not None:
                nxt -= self._read_before_ns(station)
            else:
                nxt = station.first_start_ns
            if nxt is not None:
                out[station_id] = nxt
        return out

    def read_before_ns(self, keys: Collection[str] | None = None) -> dict[str, int]:
        """Per buffered station (of the SeedLink keys ``NET_STA`` given, default all) that has a channel
        at another rate than the model's: how far before a window's start cutting it reads native data
        (the resampling filter's reach). A window not yet published needs its data from that much
        earlier after a restart. Stations at the model rate are left out (0)."""
        out: dict[str, int] = {}
        for station_id, station in list(self._stations.items()):
            if keys is not None and station_key(station_id) not in keys:
                continue
            reach = self._read_before_ns(station)
            if reach:
                out[station_id] = reach
        return out

    def _read_before_ns(self, station: StationBuffer) -> int:
        """How far before a window's start cutting it reads native samples: the resampling
        margin of the station's channels at another rate (0 when all are at the model rate)."""
        model_rate = self.windower.rate
        reach_ns = 0
        for chan in station.channels():
            rate = chan.rate
            if rate == model_rate:
                continue
            down = (model_rate / rate).denominator
            # the margin the windower reads before a window (a multiple of ``down`` native samples)
            margin = down * math.ceil((self.windower._filter_reach(chan) + 1) / down)
            reach_ns = max(reach_ns, -(-margin * NS_PER_S * rate.denominator // rate.numerator))
        return reach_ns

    def flush(self) -> list[Window]:
        """Decide every window that the buffered data covers, for all stations (the end of a
        finished recording; the live path does this per station in :meth:`poll`)."""
        out: list[Window] = []
        for station in list(self._stations.values()):
            out.extend(self._emit(self.windower.collect(station, flush=True)))
        return out

    # -- state -----------------------------------------------------------------------------------

    def stations(self) -> list[str]:
        """Station ids (``NET.STA.LOC``) currently buffered, sorted."""
        return sorted(self._stations)

    def station_buffer(self, station_id: str) -> StationBuffer | None:
        return self._stations.get(station_id)

    def update_gauges(self, now_ns: int | None = None) -> None:
        """Refresh data latency, newest sample time, buffer fill and stations reporting.

        Stations released by ``poll`` keep their latency growing (their newest sample time is
        remembered), so a dead station stays visible to alerts.
        """
        now = self.now_ns() if now_ns is None else now_ns
        mono_now = self.mono_ns() if now_ns is None else now_ns  # an explicit reading serves both (tests)
        m = self.metrics
        reporting = 0
        for station_id, station in self._stations.items():
            newest_ns = station.newest_sample_ns()
            if newest_ns is None:
                continue
            label = m.station(station_id)
            m.data_latency.labels(label).set((now - newest_ns) / NS_PER_S)
            m.last_data_timestamp.labels(label).set(newest_ns / NS_PER_S)
            m.buffer_fill.labels(label).set(station.fill_ratio())
            seen = self._last_seen_mono.get(station_id)
            if seen is not None and mono_now - seen <= REPORTING_WINDOW_S * NS_PER_S:
                reporting += 1
        for station_id, newest_ns in self._released.items():
            label = m.station(station_id)
            m.data_latency.labels(label).set((now - newest_ns) / NS_PER_S)
            m.buffer_fill.labels(label).set(0.0)
        m.stations_reporting.set(reporting)

    # -- internals -------------------------------------------------------------------------------

    def _emit(self, batch: WindowBatch) -> list[Window]:
        m = self.metrics
        wall, mono = self.now_ns(), self.mono_ns()
        for w in batch.windows:
            self._counters(w.station_id).windows_emitted.inc()
            # the newest sample's arrival on the monotonic clock, for ages measured later
            w.newest_arrival_mono_ns = mono - max(0, wall - w.newest_arrival_ns)
        for s in batch.skipped:
            m.windows_skipped.labels(m.station(s.station_id), s.reason).inc()
        return batch.windows

    def _settle_held(self, r: StationInsert, now_ns: int) -> None:
        """Count the blocks an insert buffered or gave up from those its station held earlier."""
        for block, replay in r.replayed:
            self._count_insert(block, replay, now_ns)
            if replay.rejected is not None and block.packet is not None:
                self._handled.append(block.packet)
        self._reject_held(r.discarded)

    def _reject_held(self, held: list[HeldBlock]) -> None:
        """Held blocks given up (the jump they stood for was not confirmed): rejected, handled."""
        for h in held:
            self._reject_unconfirmed(h.block, "clock_jump", h.jump_s)
            if h.block.packet is not None:
                self._handled.append(h.block.packet)

    def _reject_unconfirmed(self, block: SampleBlock, reason: str, jump_s: float) -> None:
        """Count and log (once a minute per station) a block rejected as a clock jump not confirmed."""
        m = self.metrics
        station_id = block.station_id
        m.records_rejected.labels(m.station(station_id), reason).inc()
        self._jump_log.log(
            station_id, logging.WARNING,
            "%s: block %+.0f s from the station's data: a clock jump not confirmed, block rejected (%s); "
            "the station stays on its time base until %.0f s of data in the new one confirm a jump",
            block.seed_id, jump_s, reason, self.spec.window_s,
            now_s=self.mono_ns() / NS_PER_S,
        )

    def _count_insert(self, block: SampleBlock, r: StationInsert, now_ns: int) -> None:
        m = self.metrics
        station_id = block.station_id
        label = m.station(station_id)
        if r.held:
            return  # counted once buffered (replayed) or given up (discarded)
        if r.clock_jump and r.after_outage:
            m.clock_jumps.labels(label).inc()
            log.info("%s: data resume %+.0f s after the station's newest, at %s, after as long a silence "
                     "(an outage, not a clock jump): station buffer reset", station_id, r.jump_s, block.seed_id)
        elif r.clock_jump:
            m.clock_jumps.labels(label).inc()
            log.warning("%s: clock jump of %+.0f s at %s confirmed by %.0f s of data, station buffer reset",
                        station_id, r.jump_s, block.seed_id, self.spec.window_s)
        if r.channel_reset:
            self._once.log((station_id, "rate_change"), logging.WARNING, "%s: sampling rate changed to %s Hz, channel restarted", block.seed_id, block.sampling_rate_hz)
        if r.rejected is not None and r.jump_s:
            # a block far from the station's own time base: a stray header (or, past the bound on
            # held blocks, part of a real jump; backward: before the jump is confirmed)
            self._reject_unconfirmed(block, r.rejected, r.jump_s)
            return
        if r.rejected is not None:
            m.records_rejected.labels(label, r.rejected).inc()
            self._once.log(
                (station_id, r.rejected), logging.WARNING,
                "%s: block rejected (%s): start %d ns, %d samples at %s Hz; further ones only counted",
                block.seed_id, r.rejected, block.start_ns, len(block.samples), block.sampling_rate_hz,
            )
            return
        c = r.channel
        if r.resampled:
            m.resampled_blocks.labels(label).inc()
        if c.overlap_samples:
            m.overlaps.labels(label).inc()
        if c.nonfinite_samples:
            m.nonfinite_samples.labels(label).inc(c.nonfinite_samples)
            self._once.log((station_id, "nonfinite"), logging.WARNING, "%s: non-finite samples masked", block.seed_id)
        if c.gap_samples:
            m.gaps.labels(label).inc()
            m.gap_seconds.labels(label).inc(r.gap_s)
            self._log_gap(station_id, block.seed_id, r.gap_s, now_ns)

    def _log_gap(self, station_id: str, seed_id: str, gap_s: float, now_ns: int) -> None:
        self._gap_log.log(
            station_id, logging.INFO, "%s: gap of %.2f s closed, data resumed", seed_id, gap_s, now_s=now_ns / NS_PER_S
        )

    def _counters(self, station_id: str) -> _StationCounters:
        """The per-station children of the hot counters (``labels()`` costs microseconds)."""
        c = self._station_counters.get(station_id)
        if c is None:
            m = self.metrics
            label = m.station(station_id)
            c = _StationCounters(
                m.records_received.labels(label), m.bytes_received.labels(label), m.windows_emitted.labels(label)
            )
            if len(self._station_counters) < MAX_RELEASED_STATIONS:
                self._station_counters[station_id] = c
        return c

    @staticmethod
    def _error_station(error: RecordDecodeError, packet: PacketRef | None) -> str:
        if error.seed_id is not None:
            return error.seed_id.rsplit(".", 1)[0]
        if packet is not None:
            return packet.station_key.replace("_", ".")  # NET.STA: the location is unknown
        return UNKNOWN_STATION
