"""SeedLink resume state across a station's clock jump back: the old time base's packets whose data
can never be published are passed once everything of that time base that can be published is, and
the new time base's packets are acknowledged as their windows are published (so a restart does not
replay the station from before the jump)."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.config import SeedLinkServer, SeedLinkSettings, load_settings
from streamer.metrics import Metrics
from streamer.mseed import decode_payload
from streamer.output import OutputStage
from streamer.records import NS_PER_S, Window
from streamer.seedlink import SeedLinkSource
from streamer.seedlink_state import StateStore, StateTracker, StationState
from streamer.worker import BatchResult

pytestmark = pytest.mark.timeout(60)

KEY, STATION = "XX_BCK", "XX.BCK.00"
DAY_S = 86_400
# a past, whole minute: the wall clock's "future" rule never applies
OLD_T0_S = (time.time_ns() // NS_PER_S // 60) * 60 - 3600


def records(t0_s: float, duration_s: float, seed: int) -> list[bytes]:
    """512-byte Steim2 records of a three-component 100 Hz station, interleaved by end time."""
    from obspy import Stream, Trace, UTCDateTime

    rng = np.random.default_rng(seed)
    n = int(duration_s * 100)
    out: list[tuple[int, str, bytes]] = []
    for comp in "ENZ":
        x = np.round(np.cumsum(rng.normal(0, 20, n))).astype(np.int32)
        tr = Trace(x, header={"network": "XX", "station": "BCK", "location": "00", "channel": "HH" + comp,
                              "sampling_rate": 100.0, "starttime": UTCDateTime(t0_s)})
        buf = io.BytesIO()
        Stream([tr]).write(buf, format="MSEED", reclen=512, encoding="STEIM2")
        raw = buf.getvalue()
        for i in range(0, len(raw), 512):
            (block,) = decode_payload(raw[i : i + 512], 0)
            out.append((block.end_ns, comp, raw[i : i + 512]))
    out.sort(key=lambda r: (r[0], r[1]))
    return [r for _, _, r in out]


class _Packet:
    """What ``SeedLinkSource._deliver`` reads from a ``seedlink_client`` packet."""

    def __init__(self, payload: bytes, seqnum: int) -> None:
        self.payload, self.seqnum, self.station_id, self.payload_format = payload, seqnum, KEY, "2"

    def record(self):  # noqa: ANN201
        from pymseed import MS3Record

        return MS3Record.parse(self.payload)


class _Sink:
    """Stands in for the scale-out queue: keeps the windows, publishes nothing by itself."""

    idle = True

    def __init__(self) -> None:
        self.windows: list[Window] = []

    def submit(self, windows: list[Window]) -> None:
        self.windows.extend(windows)


class _Pipeline:
    """The service's real acknowledgement path (SeedLink source -> ingestor -> ack book -> state
    tracker, the output stage's markers back) with the model (identity) and Redis (accepts every
    item at once) left out, and the hand-over to the output stage under the test's control."""

    def __init__(self, tmp_path: Path, metrics: Metrics) -> None:
        from streamer.service import Service

        self.svc = Service(load_settings(environ={}), metrics, environ={}, role="ingest")
        self.svc.build()
        self.sink = _Sink()
        self.svc.sink = self.sink  # type: ignore[assignment]
        self.tracker = StateTracker(StateStore(tmp_path / "seedlink.state"))
        self.svc.tracker = self.tracker
        self.output = OutputStage(self.svc.settings, metrics, self.svc._on_acked, window_samples=3000,
                                  sampling_rate_hz=100.0)
        settings = SeedLinkSettings(servers=[SeedLinkServer(streams=["XX_*"])])
        self.source = SeedLinkSource(settings.servers[0], settings, self.svc.on_packet, self.tracker, metrics,
                                     rng=random.Random(0))
        self.seq = 0
        self.published = 0
        self.data_end_ns: dict[int, int] = {}  # sequence number -> end of the packet's data

    @property
    def server(self) -> str:
        return self.source.name

    def deliver(self, payloads: list[bytes]) -> None:
        for p in payloads:
            self.seq += 1
            (b,) = decode_payload(p, 0)
            self.data_end_ns[self.seq] = b.end_ns
            self.source._deliver(_Packet(p, self.seq), time.time_ns())

    def publish(self, keep_unpublished: int = 0) -> None:
        """The output stage takes every window cut so far but the newest ``keep_unpublished`` (still
        queued), one batch per window; Redis accepts what it queues, markers included."""
        upto = len(self.sink.windows) - keep_unpublished
        for w in self.sink.windows[self.published : upto]:
            self.output.handle(_identity(w))
        self.published = max(self.published, upto)
        self.svc._acknowledge_every_key()

    def acked_seq(self) -> int:
        st = self.tracker.acked(self.server, KEY)
        return 0 if st is None else st.seq


def _identity(w: Window) -> BatchResult:
    """The model output of one window: its own data (no picker)."""
    return BatchResult([w], w.data[None].copy(), None, None, 1, 1, None, 0.0, 0.0, model="m", model_version="v1")


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_state_moves_into_the_new_time_base_after_a_confirmed_jump_back(tmp_path: Path, metrics: Metrics) -> None:
    """A station's clock jumps back two days while its records keep flowing; once one window of
    the new time base confirms the jump and the new windows are published, the saved state is past
    every packet of the old time base (its data not cut into windows before the reset can never be
    published) and into the new one, so a restart asks for the new time base only."""
    pipe = _Pipeline(tmp_path, metrics)
    pipe.deliver(records(OLD_T0_S, 62.0, seed=0))
    pipe.publish()
    last_old = pipe.seq
    assert 0 < pipe.acked_seq() < last_old  # the tail of the old time base is not cut into windows yet
    first_old_windows = len(pipe.sink.windows)

    new_t0_s = OLD_T0_S - 2 * DAY_S
    pipe.deliver(records(new_t0_s, 95.0, seed=1))
    assert _value(metrics, "coldstream_clock_jumps_total", station=STATION) == 1
    new_windows = pipe.sink.windows[first_old_windows:]
    assert new_windows and all(w.start_ns < (OLD_T0_S - DAY_S) * NS_PER_S for w in new_windows)
    pipe.publish()

    acked = pipe.tracker.acked(pipe.server, KEY)
    assert acked is not None and acked.seq > last_old, "the old time base's unpublishable tail holds the state"
    # it moved over the new time base's packets as far as its published outputs go, and no further
    safe = pipe.svc.acks.safe_by_key([STATION], pipe.svc.ingestor.uncut_ns())[KEY]  # type: ignore[union-attr]
    new_base = range(last_old + 1, pipe.seq + 1)
    assert all(pipe.data_end_ns[s] <= safe for s in new_base if s <= acked.seq)
    assert pipe.data_end_ns[acked.seq + 1] > safe
    assert acked.seq - last_old > len(new_base) / 3
    assert acked.end_ns < OLD_T0_S * NS_PER_S  # a resume by time starts in the new time base
    assert pipe.tracker.save()
    assert StateStore(tmp_path / "seedlink.state").load()[pipe.server][KEY] == acked


def test_old_time_base_packets_wait_for_their_windows_published_after_the_jump(
    tmp_path: Path, metrics: Metrics
) -> None:
    """Windows of the old time base cut before the jump but still queued when it is confirmed keep
    their packets unacknowledged until their outputs are published; the output stage's markers for
    them, in old times, do not make the new time base's windows queued behind them look published;
    once the output stage reaches the new time base the state moves on."""
    pipe = _Pipeline(tmp_path, metrics)
    pipe.deliver(records(OLD_T0_S, 92.0, seed=0))
    pipe.publish(keep_unpublished=2)
    queued = pipe.sink.windows[-2]  # the older of the two windows still queued
    old_acked = pipe.acked_seq()
    assert old_acked > 0
    last_old, old_windows = pipe.seq, len(pipe.sink.windows)

    pipe.deliver(records(OLD_T0_S - 2 * DAY_S, 95.0, seed=1))
    assert _value(metrics, "coldstream_clock_jumps_total", station=STATION) == 1
    new_windows = pipe.sink.windows[old_windows:]
    assert new_windows
    pipe.svc._acknowledge_every_key()
    # nothing of the old time base whose data the queued windows hold is passed
    assert all(pipe.data_end_ns[s] <= queued.start_ns for s in range(1, pipe.acked_seq() + 1))
    assert pipe.acked_seq() <= last_old

    pipe.publish(keep_unpublished=len(new_windows))  # the two old windows reach the output stage
    assert pipe.svc.acks.safe_ns(STATION) == new_windows[0].start_ns  # no new window counted as published
    assert pipe.acked_seq() <= last_old  # the old run's tail is still held by the stitcher

    pipe.publish()  # the new time base reaches the output stage: the old run ends, its tail published
    assert pipe.acked_seq() > last_old


# ---------------------------------------------------------------------------------------------
# the pieces: the ack book's old time base, the tracker's old packets
# ---------------------------------------------------------------------------------------------


def _window(start_s: int, station: str = STATION) -> Window:
    data = np.zeros((3, 3000), np.float32)
    return Window(station, start_s * NS_PER_S, 100.0, data, np.ones((3, 3000), bool), start_s * NS_PER_S)


def test_an_old_time_base_is_done_once_the_windows_pending_at_the_jump_are() -> None:
    from streamer.ack import AckBook

    book = AckBook()
    old = [_window(OLD_T0_S + 10 * k) for k in range(3)]
    book.add(old)
    book.published_through(STATION, old[0].end_ns)
    book.new_time_base(STATION)
    first_new = _window(OLD_T0_S - 2 * DAY_S)
    book.add([first_new])  # the new time base's first window: not the old one's
    assert book.old_time_bases_done() == []
    book.published_through(STATION, old[1].end_ns)  # an old time: counts for the old windows only
    assert book.safe_ns(STATION) == first_new.start_ns
    assert book.old_time_bases_done() == []
    book.drop([old[2]])  # shed: will never be published
    assert book.old_time_bases_done() == [STATION]
    assert book.old_time_bases_done() == []  # named once
    book.published_through(STATION, first_new.end_ns)  # markers count for the new time base again
    assert book.pending_windows() == 0


def test_a_lost_output_keeps_an_old_time_base_from_being_done() -> None:
    """A pick dropped from a full backlog holds its station's state for the rest of the run, so a
    restart publishes it: an old time base with a lost output is never done either."""
    from streamer.ack import AckBook

    book = AckBook()
    w = _window(OLD_T0_S)
    book.add([w])
    book.new_time_base(STATION)
    book.lost(STATION, w.start_ns)
    book.published_through(STATION, w.end_ns)
    assert book.old_time_bases_done() == []


def test_old_time_base_packets_are_passed_only_once_their_time_base_is_done() -> None:
    """Packets of the station's old time base delivered before the one that confirmed the jump wait
    for ``old_time_base_done`` even when the new time base's safe time reaches their data time; the
    station's other location codes and handled packets keep their own rule; the old packets resume by
    the new time base's first data time."""
    from streamer.records import PacketRef

    srv, t = "127.0.0.1:18000", OLD_T0_S * NS_PER_S
    new_t = t - 2 * DAY_S * NS_PER_S
    tracker = StateTracker()
    entries = [  # (seq, data end, location)
        (1, t + 1 * NS_PER_S, STATION),
        (2, t + 2 * NS_PER_S, "XX.BCK.10"),  # another location code, its own clock
        (3, new_t + 1 * NS_PER_S, STATION),  # new time base, rejected until the jump was confirmed
        (4, new_t + 31 * NS_PER_S, STATION),  # confirmed the jump
        (5, new_t + 32 * NS_PER_S, STATION),
    ]
    for seq, end, sid in entries:
        tracker.record(PacketRef(srv, KEY, seq), end - NS_PER_S, end, sid)
    tracker.handled(PacketRef(srv, KEY, 3))
    assert tracker.time_base_reset(PacketRef(srv, KEY, 4), STATION, new_t + 30 * NS_PER_S) == 1
    # a safe time past every data time still stops at the old packet
    assert tracker.acknowledge(KEY, t + DAY_S * NS_PER_S) == 0
    assert tracker.old_time_base_done(KEY, STATION) == 1
    assert tracker.acknowledge(KEY, new_t + 31 * NS_PER_S) == 1  # location 10 waits for its own data
    assert tracker.acknowledge(KEY, t + 2 * NS_PER_S) == 4
    assert tracker.acked(srv, KEY) is not None and tracker.acked(srv, KEY).seq == 5
    resumed = StateTracker()
    resumed.record(PacketRef(srv, KEY, 1), t, t + NS_PER_S, STATION)
    resumed.record(PacketRef(srv, KEY, 2), new_t, new_t + NS_PER_S, STATION)  # confirms the jump
    resumed.time_base_reset(PacketRef(srv, KEY, 2), STATION, new_t)
    resumed.old_time_base_done(KEY, STATION)
    assert resumed.acknowledge(KEY, -(2**62)) == 1
    assert resumed.acked(srv, KEY) == StationState(1, new_t)
