"""SeedLink resume state under bad headers: handled (rejected, undecodable) packets must not move the
resume time, a late handled mark must not pass over a later packet, and an absurd header time must
not stop the reconnects of a whole server."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from streamer.config import SeedLinkServer, SeedLinkSettings
from streamer.ingest import Ingestor
from streamer.metrics import Metrics
from streamer.records import NS_PER_S, PacketRef
from streamer.seedlink import SeedLinkSource
from streamer.seedlink_state import StateStore, StateTracker, StationState, ns_to_iso

SERVER = "127.0.0.1:18000"
T0_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z


def ref(seq: int, key: str = "XX_AAA") -> PacketRef:
    return PacketRef(SERVER, key, seq)


def test_a_handled_packet_does_not_move_the_resume_time() -> None:
    """A record rejected for a header time far in the future (or undecodable: time 0) is passed
    over, but a resume by time must start after the last real data, not at the bogus time."""
    tracker = StateTracker()
    tracker.record(ref(1), T0_NS, T0_NS + 5 * NS_PER_S)
    tracker.record(ref(2), T0_NS + 10**6 * NS_PER_S, T0_NS + (10**6 + 5) * NS_PER_S)  # rejected: future
    tracker.handled(ref(2))
    assert tracker.resume_points(SERVER)["XX_AAA"] == StationState(2, T0_NS + 5 * NS_PER_S)
    tracker.record(ref(3), 0, 0)  # undecodable
    tracker.handled(ref(3))
    assert tracker.resume_points(SERVER)["XX_AAA"] == StationState(3, T0_NS + 5 * NS_PER_S)
    assert tracker.acknowledge("XX_AAA", T0_NS + 5 * NS_PER_S) == 3
    assert tracker.acked(SERVER, "XX_AAA") == StationState(3, T0_NS + 5 * NS_PER_S)


def test_a_late_handled_mark_does_not_pass_over_a_later_packet() -> None:
    """A packet acknowledged by its data time before it was marked handled leaves no mark behind:
    the next packet with the same (wrapped 24-bit) number is held until its data are published."""
    tracker = StateTracker()
    tracker.record(ref(5), 0, 100)
    assert tracker.acknowledge("XX_AAA", 200) == 1
    tracker.handled(ref(5))
    tracker.record(ref(5), 9_000, 10_000)  # the sequence number came round again
    assert tracker.acknowledge("XX_AAA", 200) == 0
    assert tracker.pending_count() == 1


def _record_with_rate(rate_hz: float) -> bytes:
    from pymseed import DataEncoding, MS3Record

    msr = MS3Record()
    msr.sourceid = "FDSN:XX_AAA_00_H_H_Z"
    msr.reclen = 512
    msr.formatversion = 3
    msr.set_starttime_str("2026-01-01T00:00:05Z")
    msr.samprate = rate_hz
    msr.encoding = DataEncoding.STEIM2
    (rec,) = list(msr.generate(np.arange(100, dtype=np.int32), "i"))
    return rec


class _Packet:
    def __init__(self, payload: bytes, seqnum: int) -> None:
        self.payload, self.seqnum, self.station_id, self.payload_format = payload, seqnum, "XX_AAA", "3"

    def record(self):  # noqa: ANN201
        from pymseed import MS3Record

        return MS3Record.parse(self.payload)


def test_an_absurd_sample_rate_does_not_stop_the_reconnects(metrics: Metrics) -> None:
    """A corrupt record with a sample rate of 1e-12 Hz ends millions of years ahead. The client must
    still build its resume request (for every station of the server) on the next connection, from
    the last real data of the station."""
    tracker = StateTracker()
    ingestor = Ingestor(metrics=metrics, now_ns=lambda: T0_NS + 60 * NS_PER_S)

    def on_packet(payload: bytes, packet: PacketRef, arrival_ns: int) -> None:  # as the service does
        ingestor.add_payload(payload, arrival_ns, packet)
        for handled in ingestor.take_handled():
            tracker.handled(handled)

    settings = SeedLinkSettings(servers=[SeedLinkServer(streams=["XX_*"])])
    source = SeedLinkSource(settings.servers[0], settings, on_packet, tracker, metrics, rng=random.Random(0))
    source._deliver(_Packet(_record_with_rate(100.0), 1), T0_NS + 10 * NS_PER_S)
    source._deliver(_Packet(_record_with_rate(1e-12), 2), T0_NS + 11 * NS_PER_S)
    client = source._build_client()
    source._add_streams(client, "ringserver")  # must not raise
    (stream,) = [s for s in client.streams if s.station_id == "XX_AAA"]
    assert stream.timestamp == ns_to_iso(T0_NS + 6 * NS_PER_S)


def test_a_state_far_out_of_the_calendar_is_still_written(tmp_path: Path) -> None:
    """The state file is written whatever end time a header gave (its ISO string is for people)."""
    store = StateStore(tmp_path / "sl.state")
    states = {SERVER: {"XX_AAA": StationState(7, 10**23), "XX_BBB": StationState(8, -(10**23))}}
    store.save(states)
    assert store.load() == states
