"""The SeedLink client without a server: gaps judged by data time (servers number packets per ring,
not per station), the reconnect back-off after a healthy connection, selectors that deliver nothing,
and readiness only once a server connected."""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass

import pytest

from streamer.config import SeedLinkServer, SeedLinkSettings
from streamer.metrics import Metrics
from streamer.seedlink import SeedLinkSource
from streamer.seedlink_state import StateTracker

T0_S = 1767225600  # 2026-01-01T00:00:00Z


def record(station_key: str, cha: str, start_s: float, n: int = 100, loc: str = "00") -> bytes:
    """One 512-byte Steim2 miniSEED 2 record of ``n`` samples at 100 Hz."""
    import numpy as np
    from obspy import Stream, Trace, UTCDateTime

    net, sta = station_key.split("_")
    tr = Trace(np.arange(n, dtype=np.int32), header={"network": net, "station": sta, "location": loc, "channel": cha,
                                                     "sampling_rate": 100.0, "starttime": UTCDateTime(T0_S + start_s)})
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=512, encoding="STEIM2")
    data = buf.getvalue()
    assert len(data) == 512
    return data


@dataclass
class FakePacket:
    """What ``SeedLinkSource._deliver`` reads from a ``seedlink_client`` packet."""

    payload: bytes
    seqnum: int
    station_id: str
    payload_format: str = "2"

    def record(self):  # noqa: ANN201
        from pymseed import MS3Record

        return MS3Record.parse(self.payload)


def make_source(metrics: Metrics, streams: list[str] | None = None, **kw: float) -> SeedLinkSource:
    settings = SeedLinkSettings(servers=[SeedLinkServer(streams=streams or ["XX_*"])], **kw)
    return SeedLinkSource(settings.servers[0], settings, lambda *_: None, StateTracker(), metrics, rng=random.Random(0))


def gaps(metrics: Metrics, station: str) -> float:
    return metrics.sequence_gaps.labels(station=station)._value.get()


# ---------------------------------------------------------------------------------------------
# gaps by data time
# ---------------------------------------------------------------------------------------------


def test_ring_wide_sequence_numbers_are_not_gaps(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    """ringserver numbers packets across its ring: two stations x three channels interleaved, each
    station's numbers step by 6, the data are continuous: no gap."""
    src = make_source(metrics)
    seq = 100
    with caplog.at_level(logging.WARNING, logger="streamer.seedlink"):
        for i in range(5):
            for key in ("XX_AAA", "XX_BBB"):
                for cha in ("HHE", "HHN", "HHZ"):
                    src._deliver(FakePacket(record(key, cha, i * 1.0), seq, key), 0)
                    seq += 1
    assert gaps(metrics, "XX_AAA") == gaps(metrics, "XX_BBB") == 0
    assert "gap" not in caplog.text


def test_a_hole_in_the_data_is_a_gap_whatever_the_sequence(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    src = make_source(metrics)
    with caplog.at_level(logging.WARNING, logger="streamer.seedlink"):
        src._deliver(FakePacket(record("XX_AAA", "HHZ", 0.0), 1, "XX_AAA"), 0)
        src._deliver(FakePacket(record("XX_AAA", "HHZ", 1.0), 2, "XX_AAA"), 0)  # consecutive numbers...
        src._deliver(FakePacket(record("XX_AAA", "HHZ", 3.0), 3, "XX_AAA"), 0)  # ... but 1 s of data missing
        src._deliver(FakePacket(record("XX_AAA", "HHN", 0.0), 9, "XX_AAA"), 0)  # another channel: its own time line
        src._deliver(FakePacket(record("XX_AAA", "HHZ", 3.5), 10, "XX_AAA"), 0)  # overlap: not a gap
    assert gaps(metrics, "XX_AAA") == 1
    assert "XX.AAA.00.HHZ" in caplog.text and "1.000 s" in caplog.text


def test_gaps_are_judged_for_selected_streams_too(metrics: Metrics) -> None:
    src = make_source(metrics, streams=["XX_AAA:HHZ"])
    src._deliver(FakePacket(record("XX_AAA", "HHZ", 0.0), 1, "XX_AAA"), 0)
    src._deliver(FakePacket(record("XX_AAA", "HHZ", 5.0), 50, "XX_AAA"), 0)
    assert gaps(metrics, "XX_AAA") == 1


def test_a_stray_header_far_ahead_neither_counts_a_gap_nor_hides_the_next_ones(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A station two hours behind the wall clock gets one record stamped near now: it is not the
    channel's new time line (the buffers give it up as a stray too), so it counts no gap and a real
    hole right after it is counted at once, not once the data reach the stray's time."""
    src = make_source(metrics)
    seq = iter(range(1, 100))
    with caplog.at_level(logging.WARNING, logger="streamer.seedlink"):
        for t in (0.0, 1.0, 2.0):
            src._deliver(FakePacket(record("XX_LAG", "HHZ", t), next(seq), "XX_LAG"), 0)
        src._deliver(FakePacket(record("XX_LAG", "HHZ", 7200.0), next(seq), "XX_LAG"), 0)  # the stray
        src._deliver(FakePacket(record("XX_LAG", "HHZ", 3.0), next(seq), "XX_LAG"), 0)
        assert gaps(metrics, "XX_LAG") == 0
        src._deliver(FakePacket(record("XX_LAG", "HHZ", 5.0), next(seq), "XX_LAG"), 0)  # 1 s missing
    assert gaps(metrics, "XX_LAG") == 1
    assert "1.000 s" in caplog.text and "7197" not in caplog.text


def test_a_clock_jump_back_is_followed_once_one_window_of_records_confirms_it(metrics: Metrics) -> None:
    """A channel whose clock really jumped back two hours: once its records in the new time base span
    one model window, holes in them are counted again (the old time line's end no longer hides them)."""
    src = make_source(metrics)
    seq = iter(range(1, 1000))
    for t in range(5):
        src._deliver(FakePacket(record("XX_BCK", "HHZ", 7200.0 + t), next(seq), "XX_BCK"), 0)
    for t in range(31):  # the new time base, continuous
        src._deliver(FakePacket(record("XX_BCK", "HHZ", float(t)), next(seq), "XX_BCK"), 0)
    assert gaps(metrics, "XX_BCK") == 0
    src._deliver(FakePacket(record("XX_BCK", "HHZ", 33.0), next(seq), "XX_BCK"), 0)  # 2 s missing
    assert gaps(metrics, "XX_BCK") == 1


def test_a_long_hole_in_the_data_is_counted_once_the_records_after_it_confirm_it(metrics: Metrics) -> None:
    """Two hours missing (an outage the server could not fill, or a clock jump ahead): one gap, counted
    once the records after it span one model window, and the channel follows the new time line."""
    src = make_source(metrics)
    seq = iter(range(1, 1000))
    for t in range(3):
        src._deliver(FakePacket(record("XX_OUT", "HHZ", float(t)), next(seq), "XX_OUT"), 0)
    for t in range(31):
        src._deliver(FakePacket(record("XX_OUT", "HHZ", 7200.0 + t), next(seq), "XX_OUT"), 0)
    assert gaps(metrics, "XX_OUT") == 1
    src._deliver(FakePacket(record("XX_OUT", "HHZ", 7232.0), next(seq), "XX_OUT"), 0)
    assert gaps(metrics, "XX_OUT") == 2


# ---------------------------------------------------------------------------------------------
# back-off
# ---------------------------------------------------------------------------------------------


def test_backoff_stays_short_after_a_healthy_connection(metrics: Metrics) -> None:
    """A server restart after hours of good data: probe every couple of seconds, not at 8, 16, 32 s."""
    src = make_source(metrics, reconnect_min_s=1.0, reconnect_max_s=60.0)
    delays = [src.reconnect_delay_s(a, outage_s=sum([2.0] * a), after_healthy=True) for a in range(8)]
    assert max(delays) <= src.settings.reconnect_fast_max_s * 1.2
    # a server that never delivered anything gets the ordinary capped exponential back-off
    slow = [src.reconnect_delay_s(a, outage_s=0.0, after_healthy=False) for a in range(8)]
    assert max(slow) > 40.0
    # after reconnect_fast_for_s of outage the exponential back-off takes over again
    late = src.reconnect_delay_s(7, outage_s=src.settings.reconnect_fast_for_s + 1, after_healthy=True)
    assert late > 40.0


# ---------------------------------------------------------------------------------------------
# selectors that deliver nothing; readiness
# ---------------------------------------------------------------------------------------------


def silent(metrics: Metrics, selector: str, server: str = "127.0.0.1:18000") -> float:
    return metrics.seedlink_selector_silent.labels(server=server, selector=selector)._value.get()


def test_a_selector_that_delivers_nothing_is_named_once(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    src = make_source(metrics, streams=["XX_AAA", "XX_NOPE", "YY_*"], data_timeout_s=10.0)
    src._note_connected(now_s=100.0)
    src._deliver(FakePacket(record("XX_AAA", "HHZ", 0.0), 1, "XX_AAA"), 0)
    with caplog.at_level(logging.WARNING, logger="streamer.seedlink"):
        src.check_silent_selectors(now_s=105.0)  # too early to say
        assert "XX_NOPE" not in caplog.text
        src.check_silent_selectors(now_s=111.0)
        src._note_connected(now_s=200.0)  # a reconnect does not repeat the line
        src.check_silent_selectors(now_s=300.0)
    lines = [r for r in caplog.records if "delivered no data" in r.getMessage()]
    assert len(lines) == 2 and "XX_NOPE" in lines[0].getMessage() and "YY_*" in lines[1].getMessage()
    assert silent(metrics, "XX_NOPE") == 1 and silent(metrics, "YY_*") == 1 and silent(metrics, "XX_AAA") == 0
    src._deliver(FakePacket(record("YY_CCC", "HHZ", 0.0), 2, "YY_CCC"), 0)
    assert silent(metrics, "YY_*") == 0


def test_ready_only_once_a_server_connected(metrics: Metrics) -> None:
    src = make_source(metrics)
    assert metrics.ready._value.get() == 0
    src._note_connected(now_s=1.0)
    assert metrics.ready._value.get() == 1


# ---------------------------------------------------------------------------------------------
# resume requests against a server that numbers its whole ring
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("server_id", "by_time"), [("SeedLink v4.0 (RingServer/4.5.3)", True),
                                                    ("SeedLink v3.1 (coldstream replay)", False), (None, False)])
def test_resume_by_time_only_where_the_server_numbers_its_ring(metrics: Metrics, server_id: str | None, by_time: bool) -> None:
    """ringserver serves a connection from one reader: a station whose requested packet checks out
    moves it to that packet, and a station further behind (or any station, after a kill -9
    renumbered the ring) would lose data; by time it starts at the oldest station's time."""
    from streamer.records import PacketRef

    src = make_source(metrics)
    src.tracker.record(PacketRef(src.name, "XX_AAA", 0x143), 0, T0_S * 10**9)
    client = src._build_client()
    src._add_streams(client, server_id)
    (stream,) = [s for s in client.streams if s.station_id == "XX_AAA"]
    assert stream.timestamp is not None
    assert (stream.seqnum == -1) is by_time  # -1: the library sends DATA 0 <time>: no packet to check
