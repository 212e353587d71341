"""The ingest stage end to end on real miniSEED bytes: metrics after a scripted sequence, bad input
counted and skipped while the station and the others keep flowing, gauges, poll and eviction."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from obspy import Stream, Trace, UTCDateTime

from models.spec import DEFAULT_SPEC
from streamer.config import BufferSettings, WindowSettings
from streamer.ingest import Ingestor
from streamer.metrics import Metrics
from streamer.mseed import decode_payload
from streamer.records import NS_PER_S, PacketRef, SampleBlock, Window

T0 = UTCDateTime(2024, 1, 1, 0, 0, 3)
T0_NS = 1_704_067_203 * NS_PER_S
DAY_NS = 86_400 * NS_PER_S


def records(station: str, duration_s: float, t0: UTCDateTime = T0, encoding: str = "STEIM2", comps: str = "ENZ", seed: int = 0, channel: str = "HH") -> list[bytes]:
    """512-byte records of a 3-component station, interleaved by record end time."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * 100)
    out: list[tuple[int, str, bytes]] = []
    for comp in comps:
        x = np.round(np.cumsum(rng.normal(0, 20, n))).astype(np.int32 if encoding != "FLOAT32" else np.float32)
        tr = Trace(x, header=dict(network="XX", station=station, location="00", channel=channel + comp, sampling_rate=100.0, starttime=t0))
        buf = io.BytesIO()
        Stream([tr]).write(buf, format="MSEED", reclen=512, encoding=encoding)
        raw = buf.getvalue()
        for i in range(0, len(raw), 512):
            rec = raw[i : i + 512]
            (block,) = decode_payload(rec, 0)
            out.append((block.end_ns, comp, rec))
    out.sort(key=lambda r: (r[0], r[1]))
    return [r for _, _, r in out]


class Clock:
    def __init__(self, t_ns: int) -> None:
        self.t_ns = t_ns

    def __call__(self) -> int:
        return self.t_ns


def make(metrics: Metrics, now_ns: int = T0_NS + 100 * NS_PER_S, **buffer_kw: object) -> tuple[Ingestor, Clock]:
    clock = Clock(now_ns)
    ing = Ingestor(DEFAULT_SPEC, BufferSettings(**buffer_kw), WindowSettings(), metrics, now_ns=clock)  # type: ignore[arg-type]
    return ing, clock


def value(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def feed(ing: Ingestor, payloads: list[bytes], arrival_ns: int = T0_NS + 100 * NS_PER_S) -> list[Window]:
    out: list[Window] = []
    for p in payloads:
        out += ing.add_payload(p, arrival_ns)
    return out


def test_clean_stream(metrics: Metrics) -> None:
    recs = records("AAA", 62.0)
    ing, _ = make(metrics)
    windows = feed(ing, recs)
    assert [w.start_ns for w in windows] == [T0_NS + k * NS_PER_S for k in (7, 17, 27)]
    assert all(w.mask.all() for w in windows)
    st = "XX.AAA.00"
    assert value(metrics, "coldstream_records_received_total", station=st) == len(recs)
    assert value(metrics, "coldstream_received_bytes_total", station=st) == 512 * len(recs)
    assert value(metrics, "coldstream_windows_emitted_total", station=st) == 3
    assert value(metrics, "coldstream_gaps_total", station=st) == 0
    assert ing.stations() == [st]


def test_scripted_sequence_metrics(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    st = "XX.AAA.00"
    recs = records("AAA", 62.0)
    ing, clock = make(metrics)
    caplog.set_level(logging.INFO, logger="streamer.ingest")
    windows: list[Window] = []
    z_recs = [r for r in recs if r[15:18] == b"HHZ"]
    skip_z = z_recs[4]  # a missing Z record: one gap on Z
    corrupt = bytearray(z_recs[6])
    corrupt[64:512] = bytes(448)
    for rec in recs:
        if rec is skip_z:
            continue
        if rec is z_recs[6]:
            windows += ing.add_payload(bytes(corrupt), clock.t_ns)  # decode error, channel known
            windows += ing.add_payload(rec, clock.t_ns)  # the retransmission goes through
            continue
        windows += ing.add_payload(rec, clock.t_ns)
        if rec is recs[10]:
            windows += ing.add_payload(rec, clock.t_ns)  # duplicate
            windows += ing.add_payload(b"\x00junk" * 100, clock.t_ns)  # unattributable garbage
    # far future and far past blocks on a known station
    fut = SampleBlock(f"{st}.HHZ", clock.t_ns + DAY_NS, 100.0, np.zeros(100, np.int32), clock.t_ns)
    past = SampleBlock(f"{st}.HHZ", T0_NS - DAY_NS, 100.0, np.zeros(100, np.int32), clock.t_ns)
    absurd = SampleBlock(f"{st}.HHZ", T0_NS, 1e6, np.zeros(100, np.int32), clock.t_ns)
    nan = SampleBlock(f"{st}.HHZ", T0_NS + 62 * NS_PER_S, 100.0, np.array([1.0, np.nan, np.inf, 4.0]), clock.t_ns)
    for b in (fut, past, absurd, absurd, nan):
        assert ing.add_block(b) == []

    assert value(metrics, "coldstream_decode_errors_total", station=st) == 1
    assert value(metrics, "coldstream_decode_errors_total", station="unknown") == 1
    assert value(metrics, "coldstream_records_received_total", station=st) == len(recs) + 1  # + corrupt - skipped + dup
    assert value(metrics, "coldstream_overlaps_total", station=st) == 1
    assert value(metrics, "coldstream_gaps_total", station=st) == 1
    gap_s = value(metrics, "coldstream_gap_seconds_total", station=st)
    assert 2.0 < gap_s < 8.0  # one 512-byte record of Z
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="future") == 1
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="expired") == 1
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="rate") == 2
    assert value(metrics, "coldstream_nonfinite_samples_total", station=st) == 2
    clock.t_ns += 4 * NS_PER_S  # the late window with the Z gap waits windows.late_grace_s, then the poll decides it
    windows += ing.poll()
    emitted = value(metrics, "coldstream_windows_emitted_total", station=st)
    skipped = value(metrics, "coldstream_windows_skipped_total", station=st, reason="gap")
    assert emitted == len(windows) and skipped >= 1 and emitted + skipped == 3
    # logged once per station and kind
    rate_lines = [r for r in caplog.records if "(rate)" in r.getMessage()]
    assert len(rate_lines) == 1
    assert any("undecodable" in r.getMessage() and st in r.getMessage() for r in caplog.records)
    assert any("gap of" in r.getMessage() for r in caplog.records)


def test_bad_station_does_not_disturb_others(metrics: Metrics) -> None:
    good = records("GOOD", 62.0, seed=1)
    bad = records("BAD", 62.0, seed=2)
    rng = np.random.default_rng(5)
    alone, _ = make(Metrics())
    reference = feed(alone, good)
    ing, clock = make(metrics)
    got: list[Window] = []
    for i, rec in enumerate(good):
        got += ing.add_payload(rec, clock.t_ns)
        # a flood from BAD: duplicates, truncated and corrupt records, random bytes
        for _ in range(20):
            got += ing.add_payload(bad[i % 5], clock.t_ns)
        got += ing.add_payload(bad[i % len(bad)][:200], clock.t_ns)
        mangled = bytearray(bad[i % len(bad)])
        mangled[100:300] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        got += ing.add_payload(bytes(mangled), clock.t_ns)
        got += ing.add_payload(rng.integers(0, 256, 512, dtype=np.uint8).tobytes(), clock.t_ns)
    good_windows = [w for w in got if w.station_id == "XX.GOOD.00"]
    assert [w.window_id for w in good_windows] == [w.window_id for w in reference]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(good_windows, reference))
    assert value(metrics, "coldstream_overlaps_total", station="XX.BAD.00") > 0
    assert value(metrics, "coldstream_decode_errors_total", station="XX.BAD.00") >= len(good)
    assert value(metrics, "coldstream_decode_errors_total", station="XX.GOOD.00") == 0


def test_float_records_and_zero_filled_single_component(metrics: Metrics) -> None:
    ing, clock = make(metrics)
    windows = feed(ing, records("ZZZ", 45.0, encoding="FLOAT32", comps="Z"))
    assert windows == []  # a young station without E and N: they may still come (windows.late_grace_s)
    clock.t_ns += 4 * NS_PER_S
    windows = ing.poll()
    assert len(windows) == 1
    assert windows[0].meta["zero_filled_components"] == ["E", "N"]
    ing2, clock2 = make(Metrics(), single_component="skip")
    assert feed(ing2, records("ZZZ", 45.0, comps="Z")) == []
    clock2.t_ns += 4 * NS_PER_S
    assert ing2.poll() == []
    assert ing2.metrics.registry.get_sample_value("coldstream_windows_skipped_total", {"station": "XX.ZZZ.00", "reason": "missing_component"}) == 1


def test_resampled_stream_is_counted(metrics: Metrics) -> None:
    ing, clock = make(metrics)
    n = 45 * 200
    windows: list[Window] = []
    for k in range(0, n, 500):
        for comp in "ENZ":
            b = SampleBlock(f"XX.RS.00.HH{comp}", T0_NS + k * 5_000_000, 200.0, np.ones(500, np.float32), clock.t_ns)
            windows += ing.add_block(b)
    windows += ing.poll(clock.t_ns + 60 * NS_PER_S)
    assert value(metrics, "coldstream_resampled_blocks_total", station="XX.RS.00") == 3 * 18
    assert len(windows) == 1 and windows[0].mask.all()
    np.testing.assert_allclose(windows[0].data, 1.0, atol=1e-3)


def test_clock_jump_is_counted_and_the_station_restarts(metrics: Metrics) -> None:
    ing, clock = make(metrics, now_ns=T0_NS + 3 * DAY_NS)
    feed(ing, records("JMP", 40.0))
    later = records("JMP", 45.0, t0=T0 + 2 * 86400)
    windows = feed(ing, later)
    assert value(metrics, "coldstream_clock_jumps_total", station="XX.JMP.00") == 1
    assert windows and all(w.start_ns > T0_NS + DAY_NS for w in windows)
    # the records kept arriving, so the jump waited for one window of new data; those records were
    # held, not lost: the new time base's first window is there, complete
    assert value(metrics, "coldstream_records_rejected_total", station="XX.JMP.00", reason="clock_jump") == 0
    assert windows[0].start_ns == T0_NS + 2 * DAY_NS + 7 * NS_PER_S and windows[0].mask.all()


def test_a_stray_header_near_now_is_counted_and_logged_and_the_lagging_station_goes_on(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A station two hours behind the wall clock gets one corrupt record stamped near now while its
    records keep arriving: it is held (not acknowledged) until the station's next record shows it
    stray, then rejected (``records_rejected{reason="clock_jump"}``, a warning naming the station)
    and handed back for acknowledgement; the station's windows go on in its own time base without
    a reset."""
    st = "XX.LAG.00"
    now_ns = T0_NS + 7200 * NS_PER_S
    ing, clock = make(metrics, now_ns=now_ns)
    caplog.set_level(logging.INFO, logger="streamer.ingest")
    recs = records("LAG", 62.0)
    first, rest = recs[: len(recs) // 2], recs[len(recs) // 2 :]
    windows = feed(ing, first, now_ns)
    stray = records("LAG", 5.0, t0=T0 + 7200 - 20, seed=3)[0]
    ref = PacketRef("srv", "XX_LAG", 99)
    assert ing.add_payload(stray, now_ns, ref) == []
    assert ing.take_handled() == []  # held: its data might still be a new time base
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="clock_jump") == 0
    windows += feed(ing, rest[:1], now_ns)
    assert ing.take_handled() == [ref]
    windows += feed(ing, rest[1:], now_ns)
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="clock_jump") == 1
    assert value(metrics, "coldstream_clock_jumps_total", station=st) == 0
    assert [w.start_ns for w in windows] == [T0_NS + k * NS_PER_S for k in (7, 17, 27)]
    assert all(w.mask.all() for w in windows)
    lines = [r for r in caplog.records if r.levelno == logging.WARNING and st in r.getMessage()]
    assert len(lines) == 1 and "not confirmed" in lines[0].getMessage()


def feed_live(ing: Ingestor, clock: Clock, payloads: list[bytes], latency_s: float = 2.0) -> list[Window]:
    """Payloads delivered live: each arrives ``latency_s`` after its last sample (the clock follows)."""
    out: list[Window] = []
    for p in payloads:
        (b,) = decode_payload(p, 0)
        clock.t_ns = b.end_ns + round(latency_s * NS_PER_S)
        out += ing.add_payload(p, clock.t_ns)
    return out


def test_a_station_back_from_a_long_outage_keeps_its_first_records(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """A station (long ring buffer, so ``poll`` keeps it through the outage) delivers nothing for 90
    minutes, more than ``max_clock_jump_s``, then current data: the jump is explained by the silence
    on the arrival clock, so the station restarts at once and its first records after the outage
    are in its first window, none rejected."""
    st = "XX.OUT.00"
    ing, clock = make(metrics, horizon_s=3600.0)
    caplog.set_level(logging.INFO, logger="streamer.ingest")
    windows = feed_live(ing, clock, records("OUT", 40.0))
    for _ in range(90):  # the service polls through the outage
        clock.t_ns += 60 * NS_PER_S
        windows += ing.poll()
    assert ing.stations() == [st]  # not released: two horizons are two hours
    back = feed_live(ing, clock, records("OUT", 40.0, t0=T0 + 5400, seed=1))
    assert value(metrics, "coldstream_clock_jumps_total", station=st) == 1
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="clock_jump") == 0
    assert back and back[0].start_ns == T0_NS + (5400 + 7) * NS_PER_S and back[0].mask.all()
    assert not [r for r in caplog.records if "not confirmed" in r.getMessage()]


def test_held_records_of_a_jump_are_acknowledged_only_once_buffered(metrics: Metrics) -> None:
    """SeedLink state never passes a record held for an unconfirmed jump: it is not handled, and the
    station's safe time stays in its old time base, before the held data; once the jump is confirmed
    the held records are buffered and acknowledged by data time, like any other, once published."""
    from streamer.ack import AckBook
    from streamer.seedlink_state import StateTracker

    st, key = "XX.HLD.00", "XX_HLD"
    ing, clock = make(metrics, now_ns=T0_NS + 3 * DAY_NS)
    tracker, book = StateTracker(), AckBook()
    seq = 0
    handled: list[PacketRef] = []

    def deliver(payloads: list[bytes]) -> list[Window]:
        nonlocal seq
        out: list[Window] = []
        for p in payloads:
            seq += 1
            (b,) = decode_payload(p, 0)
            ref = PacketRef("srv", key, seq)
            tracker.record(ref, b.start_ns, b.end_ns)
            windows = ing.add_payload(p, T0_NS + 100 * NS_PER_S, ref)  # records keep arriving
            book.add(windows)
            out += windows
            for h in ing.take_handled():
                handled.append(h)
                tracker.handled(h)
            tracker.acknowledge(key, book.safe_by_key(ing.stations(), ing.uncut_ns()).get(key, -(2**62)))
        return out

    def publish(windows: list[Window]) -> None:
        for w in windows:
            book.published_through(w.station_id, w.end_ns, flushed=True)

    publish(deliver(records("HLD", 40.0)))
    first_held = seq + 1
    held_start_ns = T0_NS + 2 * DAY_NS
    confirmed_at = None
    for p in records("HLD", 45.0, t0=T0 + 2 * 86400):
        publish(deliver([p]))
        buf = ing.station_buffer(st)
        assert buf is not None
        if buf.epoch == 0:  # records held
            assert ing.uncut_ns()[st] < held_start_ns  # the safe time cannot reach the held data
            acked = tracker.acked("srv", key)
            assert acked is None or acked.seq < first_held
        elif confirmed_at is None:
            confirmed_at = seq
    assert confirmed_at is not None and confirmed_at > first_held
    assert handled == []  # nothing rejected
    publish(ing.poll(clock.t_ns + 120 * NS_PER_S))
    tracker.acknowledge(key, book.safe_by_key([st], ing.uncut_ns()).get(key, -(2**62)))
    acked = tracker.acked("srv", key)
    # held records were passed by their data time once their window was published (those after the
    # next window's start wait for it)
    assert acked is not None and first_held < acked.seq < confirmed_at and acked.end_ns > held_start_ns
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="clock_jump") == 0


def test_a_held_record_is_handed_back_when_its_station_is_released(metrics: Metrics) -> None:
    """A record held for an unconfirmed jump in a station that then falls silent and is released by
    ``poll``: rejected then, and handed back for acknowledgement."""
    st = "XX.REL.00"
    now_ns = T0_NS + 7200 * NS_PER_S
    ing, clock = make(metrics, now_ns=now_ns)
    feed(ing, records("REL", 40.0), now_ns)
    ref = PacketRef("srv", "XX_REL", 7)
    assert ing.add_payload(records("REL", 5.0, t0=T0 + 7200 - 20, seed=3)[0], now_ns, ref) == []
    assert ing.take_handled() == []
    ing.poll(now_ns + 400 * NS_PER_S)  # two horizons (360 s) without data
    assert ing.stations() == []
    assert ing.take_handled() == [ref]
    assert value(metrics, "coldstream_records_rejected_total", station=st, reason="clock_jump") == 1


def test_gauges(metrics: Metrics) -> None:
    ing, clock = make(metrics)
    feed(ing, records("GAU", 30.0))
    ing.update_gauges(T0_NS + 40 * NS_PER_S)
    st = "XX.GAU.00"
    newest_sample = T0_NS + 30 * NS_PER_S - 10_000_000
    assert value(metrics, "coldstream_last_data_timestamp_seconds", station=st) == pytest.approx(newest_sample / NS_PER_S)
    assert value(metrics, "coldstream_data_latency_seconds", station=st) == pytest.approx(10.01)
    assert value(metrics, "coldstream_buffer_fill_ratio", station=st) == pytest.approx(30.0 / 180.0)
    # arrival was at T0 + 100 s: reporting at T0 + 130 s, not at T0 + 200 s
    ing.update_gauges(T0_NS + 130 * NS_PER_S)
    assert value(metrics, "coldstream_stations_reporting") == 1
    ing.update_gauges(T0_NS + 200 * NS_PER_S)
    assert value(metrics, "coldstream_stations_reporting") == 0


def test_poll_flushes_a_silent_station_and_evicts_it_later(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamer.ingest")
    recs = records("PLL", 45.0)
    # E's record holding T0 + 35..40 s never comes: window [T0+7, T0+37) waits for the lag
    t_hole = T0_NS + 36 * NS_PER_S
    e_holes = [
        r for r in recs
        if r[15:18] == b"HHE" and any(b.start_ns <= t_hole < b.end_ns for b in decode_payload(r, 0))
    ]
    assert len(e_holes) == 1
    ing, clock = make(metrics)
    arrival = T0_NS + 100 * NS_PER_S
    emitted = feed(ing, [r for r in recs if r not in e_holes], arrival)
    before = len(emitted) + value(metrics, "coldstream_windows_skipped_total", station="XX.PLL.00", reason="gap")
    assert ing.poll(arrival + NS_PER_S) == []  # not silent for a lag yet
    flushed = ing.poll(arrival + 11 * NS_PER_S)
    after = len(emitted) + len(flushed) + value(metrics, "coldstream_windows_skipped_total", station="XX.PLL.00", reason="gap")
    assert after == before + 1
    assert ing.stations() == ["XX.PLL.00"]
    ing.poll(arrival + 31 * NS_PER_S)
    ing.poll(arrival + 32 * NS_PER_S)
    assert sum("gap opened" in r.getMessage() for r in caplog.records) == 1
    ing.poll(arrival + 361 * NS_PER_S)
    assert ing.stations() == []
    # a released station's latency keeps growing, so alerts still see it
    ing.update_gauges(T0_NS + 1000 * NS_PER_S)
    assert value(metrics, "coldstream_data_latency_seconds", station="XX.PLL.00") == pytest.approx(1000 - 45 + 0.01)
    assert value(metrics, "coldstream_buffer_fill_ratio", station="XX.PLL.00") == 0.0
    # and it comes back with fresh buffers when data returns
    clock.t_ns = T0_NS + 1000 * NS_PER_S
    assert feed(ing, records("PLL", 45.0, t0=T0 + 900), T0_NS + 1000 * NS_PER_S)
    assert ing.stations() == ["XX.PLL.00"]
    assert sum("gap closed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(("rate_hz", "reason"), [(50_000.0, "rate"), (0.5, "rate"), (100.0, None)])
def test_rate_from_real_records(metrics: Metrics, rate_hz: float, reason: str | None) -> None:
    from pymseed import DataEncoding, MS3Record

    msr = MS3Record()
    msr.sourceid = "FDSN:XX_RATE_00_H_H_Z"
    msr.samprate = rate_hz
    msr.starttime = T0_NS
    msr.formatversion = 2
    msr.reclen = 512
    msr.encoding = DataEncoding.STEIM2
    (rec, *_) = list(msr.generate(np.arange(100, dtype=np.int32), "i"))
    ing, clock = make(metrics)
    ing.add_payload(rec, clock.t_ns)
    got = value(metrics, "coldstream_records_rejected_total", station="XX.RATE.00", reason="rate")
    assert got == (1 if reason else 0)
    assert ing.stations() == ([] if reason else ["XX.RATE.00"])


def test_rejected_first_blocks_create_no_station(metrics: Metrics) -> None:
    ing, clock = make(metrics)
    for k in range(50):
        ing.add_block(SampleBlock(f"XX.B{k}.00.HHZ", clock.t_ns + DAY_NS, 100.0, np.zeros(10, np.int32), clock.t_ns))
        ing.add_block(SampleBlock(f"XX.C{k}.00.LOG", T0_NS, 100.0, np.zeros(10, np.int32), clock.t_ns))
    assert ing.stations() == []
    assert value(metrics, "coldstream_records_rejected_total", station="XX.B3.00", reason="future") == 1
    assert value(metrics, "coldstream_records_rejected_total", station="XX.C3.00", reason="channel") == 1


_TEMPLATE = records("FUZ", 12.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, len(_TEMPLATE) - 1),
    edits=st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), min_size=1, max_size=12),
    cut=st.integers(1, 512),
)
def test_mangled_records_never_raise(metrics: Metrics, which: int, edits: list[tuple[int, int]], cut: int) -> None:
    ing, clock = make(metrics)
    rec = bytearray(_TEMPLATE[which])
    for pos, byte in edits:
        rec[pos] = byte
    ing.add_payload(bytes(rec), clock.t_ns)
    ing.add_payload(bytes(rec[:cut]), clock.t_ns)
    ing.poll(clock.t_ns + 20 * NS_PER_S)
    ing.update_gauges()
    # the station still takes good data afterwards
    for r in _TEMPLATE:
        ing.add_payload(r, clock.t_ns)


def test_benchmark_script_runs_small() -> None:
    """``bench/ingest.py`` stays runnable: a small network gives the expected record/window counts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "ingest.py"
    spec = importlib.util.spec_from_file_location("bench_ingest", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run_bench(n_stations=5, duration_s=60.0, stride_s=10.0)
    assert res["records"] > 5 * 3 * 6000 / 700
    assert 5 * 3 <= res["windows"] <= 5 * 4  # 60 s of data: 3 or 4 grid windows per station
    assert 0 < res["core_percent"] < 100


def test_rejected_and_undecodable_packets_are_reported_as_handled(metrics: Metrics) -> None:
    from streamer.records import PacketRef

    ing, _ = make(metrics)
    good = records("AAA", 20)
    future = records("AAA", 5, t0=T0 + 10 * 86_400)  # header time far ahead of the clock: rejected
    refs = [PacketRef("srv", "XX_AAA", i) for i in range(3)]
    ing.add_payload(good[0], T0_NS, refs[0])
    ing.add_payload(future[0], T0_NS, refs[1])
    ing.add_payload(b"\x00" * 512, T0_NS, refs[2])
    assert ing.take_handled() == [refs[1], refs[2]]
    assert ing.take_handled() == []
    assert ing.uncut_ns()["XX.AAA.00"] == T0_NS + 7 * NS_PER_S  # the first grid window starts at 10 s


def test_a_wall_clock_step_does_not_release_buffers_or_flush(metrics: Metrics) -> None:
    """Durations come from the monotonic clock: the wall clock stepping 6 minutes ahead (VM resume,
    chronyc makestep) is not 6 minutes of silence."""
    wall = Clock(T0_NS + 40 * NS_PER_S)
    mono = Clock(1_000 * NS_PER_S)
    ing = Ingestor(DEFAULT_SPEC, BufferSettings(), WindowSettings(), metrics, now_ns=wall, mono_ns=mono)
    for rec in records("STP", 30.0):
        ing.add_payload(rec, wall.t_ns)
    wall.t_ns += 360 * NS_PER_S  # the step
    mono.t_ns += 1 * NS_PER_S
    assert ing.poll() == [] and ing.stations() == ["XX.STP.00"]
    mono.t_ns += 400 * NS_PER_S  # real silence
    ing.poll()
    assert ing.stations() == []


def test_windows_carry_their_arrival_on_the_monotonic_clock(metrics: Metrics) -> None:
    wall = Clock(T0_NS + 40 * NS_PER_S)
    mono = Clock(5_000 * NS_PER_S)
    ing = Ingestor(DEFAULT_SPEC, BufferSettings(), WindowSettings(), metrics, now_ns=wall, mono_ns=mono)
    windows = [w for rec in records("MON", 45.0) for w in ing.add_payload(rec, wall.t_ns - 2 * NS_PER_S)]
    assert windows and all(w.newest_arrival_mono_ns == mono.t_ns - 2 * NS_PER_S for w in windows)


def test_a_packet_without_samples_is_handled(metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record with no samples (log text, an empty record) holds nothing back."""
    import streamer.ingest as ingest_module
    from streamer.records import PacketRef

    monkeypatch.setattr(ingest_module, "decode_payload", lambda payload, arrival_ns, packet: [])
    ing, _ = make(metrics)
    ref = PacketRef("srv", "XX_LOG", 7)
    assert ing.add_payload(b"text record", T0_NS, ref) == []
    assert ing.take_handled() == [ref]


def test_a_backlog_served_channel_by_channel_waits_for_every_component(metrics: Metrics) -> None:
    """ringserver serves a ring in scan order (all of E, then all of N, then Z): no window may be
    decided before its other components arrived (before the fix they were zero-filled or skipped)."""
    ing, _ = make(metrics)
    windows: list[Window] = []
    for comp in "ENZ":
        windows += feed(ing, records("BKL", 62.0, comps=comp))
    assert [w.start_ns for w in windows] == [T0_NS + k * NS_PER_S for k in (7, 17, 27)]
    assert all(w.mask.all() and "zero_filled_components" not in w.meta for w in windows)
    assert value(metrics, "coldstream_windows_skipped_total", station="XX.BKL.00", reason="gap") == 0


def test_a_component_that_stops_arriving_holds_nothing_back(metrics: Metrics) -> None:
    """A dead vertical: its late windows wait only the grace, then go on with Z zero-filled."""
    ing, clock = make(metrics)
    windows = feed(ing, records("DED", 20.0, comps="Z"))
    windows += feed(ing, records("DED", 92.0, comps="EN"))
    assert windows == []  # late, but within the grace: the vertical may be on its way
    clock.t_ns += 4 * NS_PER_S  # more than windows.late_grace_s (3 s)
    for _ in range(10):  # one window per grace, as the poll finds them
        windows += ing.poll()
        clock.t_ns += 4 * NS_PER_S
    # the windows overlapping the vertical's last data are skipped (a long trailing hole); after it
    # they go on with the vertical zero-filled
    filled = [w for w in windows if w.start_ns >= T0_NS + 27 * NS_PER_S]
    assert len(filled) >= 3 and all(w.meta.get("zero_filled_components") == ["Z"] for w in filled)
