"""SeedLink state: the file (atomic, corrupt-tolerant), the acknowledgement rule, backoff, stream specs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.config import SeedLinkServer, SeedLinkSettings
from streamer.records import PacketRef
from streamer.seedlink import SeedLinkSource, parse_stream_spec
from streamer.seedlink_state import SeedLinkStateError, StateStore, StateTracker, StationState, iso_to_ns, ns_to_iso

SERVER = "127.0.0.1:18000"


def ref(seq: int, key: str = "XX_AAA", server: str = SERVER) -> PacketRef:
    return PacketRef(server=server, station_key=key, sequence=seq)


# ---------------------------------------------------------------------------------------------
# the state file
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_and_readable_format(tmp_path: Path) -> None:
    path = tmp_path / "sl.state"
    store = StateStore(path)
    states = {SERVER: {"XX_AAA": StationState(0x1234, 1767225604_120000000), "YY_B": StationState(7, 5)}}
    store.save(states)
    assert store.load() == states
    data = json.loads(path.read_text())
    assert data["format"] == "coldstream-seedlink-state" and data["version"] == 1
    entry = data["servers"][SERVER]["XX_AAA"]
    assert entry == {"seq": 0x1234, "end": "2026-01-01T00:00:04.120000Z", "end_ns": 1767225604_120000000}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_is_an_empty_state(tmp_path: Path, metrics) -> None:
    assert StateStore(tmp_path / "none.state", metrics).load() == {}
    assert metrics.state_file_errors._value.get() == 0


def test_failed_rename_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sl.state"
    store = StateStore(path)
    old = {SERVER: {"XX_AAA": StationState(1, 100)}}
    store.save(old)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SeedLinkStateError):
        store.save({SERVER: {"XX_AAA": StationState(2, 200)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sl.state"]  # no temp file left behind
    monkeypatch.undo()
    assert store.load() == old


def test_tracker_save_failure_is_logged_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics) -> None:
    tracker = StateTracker(StateStore(tmp_path / "sl.state"), save_interval_s=0.0, metrics=metrics)
    tracker.record(ref(1), 0, 100)
    tracker.acknowledge("XX_AAA", 100)

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    assert tracker.save_if_due(now_s=1.0) is False
    monkeypatch.undo()
    assert tracker.save_if_due(now_s=2.0) is True  # still dirty: the next tick writes it
    assert metrics.state_saves._value.get() == 1
    assert StateStore(tmp_path / "sl.state").load() == {SERVER: {"XX_AAA": StationState(1, 100)}}


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b'{"format": "something-else", "version": 1, "servers": {}}',
        b'{"format": "coldstream-seedlink-state", "version": 99, "servers": {}}',
        b'{"format": "coldstream-seedlink-state", "version": 1, "servers": {"h:1": {"X_Y": {"seq": "a", "end_ns": 1}}}}',
        b'{"format": "coldstream-seedlink-state", "version": 1, "servers": {"h:1": {"X_Y": {"seq": 1}}}}',
        b"\xff\xfe\x00binary",
    ],
)
def test_corrupt_state_file_starts_fresh_and_is_counted(tmp_path: Path, metrics, caplog, content: bytes) -> None:
    path = tmp_path / "sl.state"
    path.write_bytes(content)
    assert StateStore(path, metrics).load() == {}
    assert metrics.state_file_errors._value.get() == 1
    assert "unusable" in caplog.text
    moved = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(moved) == 1 and moved[0].read_bytes() == content  # kept for inspection
    assert not path.exists()


def test_time_strings_round_trip() -> None:
    t = 1767225604_123456000
    assert ns_to_iso(t) == "2026-01-01T00:00:04.123456Z"
    assert iso_to_ns(ns_to_iso(t)) == t


# ---------------------------------------------------------------------------------------------
# the acknowledgement rule
# ---------------------------------------------------------------------------------------------


def test_nothing_is_acknowledged_without_acknowledge(tmp_path: Path) -> None:
    tracker = StateTracker(StateStore(tmp_path / "sl.state"), save_interval_s=0.0)
    for seq in range(10):
        tracker.record(ref(seq), seq * 100, seq * 100 + 100)
    assert tracker.acked(SERVER, "XX_AAA") is None
    assert tracker.save_if_due(now_s=100.0) is False  # nothing to save
    assert not (tmp_path / "sl.state").exists()
    assert tracker.pending_count() == 10


def test_acknowledge_moves_over_a_prefix_only() -> None:
    tracker = StateTracker()
    # Interleaved channels: seq 2 ends late (a long record), seq 3 ends early.
    for seq, (start, end) in enumerate([(0, 100), (0, 110), (50, 300), (100, 200), (110, 210)]):
        tracker.record(ref(seq), start, end)
    assert tracker.acknowledge("XX_AAA", 99) == 0
    assert tracker.acknowledge("XX_AAA", 250) == 2  # seq 0, 1; seq 2 ends at 300 and blocks 3, 4
    assert tracker.acked(SERVER, "XX_AAA") == StationState(1, 110)
    assert tracker.acknowledge("XX_AAA", 300) == 3
    assert tracker.acked(SERVER, "XX_AAA") == StationState(4, 210)
    assert tracker.pending_count() == 0


def test_acknowledge_is_per_station_and_per_server() -> None:
    tracker = StateTracker()
    tracker.record(ref(5, "XX_AAA"), 0, 100)
    tracker.record(ref(9, "XX_BBB"), 0, 100)
    tracker.record(ref(3, "XX_AAA", server="other:18000"), 0, 100)
    assert tracker.acknowledge("XX_AAA", 100, server=SERVER) == 1
    assert tracker.acked(SERVER, "XX_BBB") is None
    assert tracker.acked("other:18000", "XX_AAA") is None
    assert tracker.acknowledge("XX_AAA", 100) == 1
    assert tracker.acked("other:18000", "XX_AAA") == StationState(3, 100)
    assert tracker.acknowledge_all(100) == 1


def test_resume_points_prefer_delivered_within_a_process(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "sl.state")
    store.save({SERVER: {"XX_AAA": StationState(4, 400), "XX_OLD": StationState(2, 50)}})
    tracker = StateTracker(store)
    tracker.load()
    assert tracker.resume_points(SERVER) == {"XX_AAA": StationState(4, 400), "XX_OLD": StationState(2, 50)}
    tracker.record(ref(5), 400, 500)
    tracker.record(ref(6), 500, 600)
    assert tracker.resume_points(SERVER)["XX_AAA"] == StationState(6, 600)  # reconnect: after delivered
    assert tracker.acked(SERVER, "XX_AAA") == StationState(4, 400)  # restart: after acknowledged


def test_save_if_due_respects_the_interval(tmp_path: Path, metrics) -> None:
    tracker = StateTracker(StateStore(tmp_path / "sl.state"), save_interval_s=5.0, metrics=metrics)
    tracker.record(ref(1), 0, 10)
    tracker.acknowledge("XX_AAA", 10)
    assert tracker.save_if_due(now_s=100.0) is True
    tracker.record(ref(2), 10, 20)
    tracker.acknowledge("XX_AAA", 20)
    assert tracker.save_if_due(now_s=102.0) is False
    assert tracker.save_if_due(now_s=105.5) is True
    assert metrics.state_saves._value.get() == 2
    assert metrics.state_save_timestamp._value.get() > 0
    assert StateStore(tmp_path / "sl.state").load()[SERVER]["XX_AAA"] == StationState(2, 20)


@settings(max_examples=60, deadline=None)
@given(
    packets=st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 300)), min_size=1, max_size=40),
    acks=st.lists(st.integers(0, 1400), max_size=8),
)
def test_acknowledged_prefix_never_covers_unpublished_data(packets: list[tuple[int, int]], acks: list[int]) -> None:
    """Property: after any acks, every packet up to the acknowledged one ends at or before the
    largest safe time given, and the first packet after it (if any) does not."""
    tracker = StateTracker()
    for seq, (start, dur) in enumerate(packets):
        tracker.record(ref(seq), start, start + dur)
    for a in acks:
        tracker.acknowledge("XX_AAA", a)
    acked = tracker.acked(SERVER, "XX_AAA")
    safe = max(acks, default=-1)
    upto = -1 if acked is None else acked.seq
    assert all(start + dur <= safe for start, dur in packets[: upto + 1])
    assert tracker.pending_count() == len(packets) - (upto + 1)


# ---------------------------------------------------------------------------------------------
# backoff and stream specs
# ---------------------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered(metrics) -> None:
    settings_ = SeedLinkSettings(reconnect_min_s=1.0, reconnect_max_s=30.0)
    src = SeedLinkSource(SeedLinkServer(), settings_, lambda *_: None, StateTracker(), metrics, rng=random.Random(1))
    delays = [src.backoff_s(a) for a in range(12)]
    assert 0.8 <= delays[0] <= 1.2
    assert 1.6 <= delays[1] <= 2.4
    assert all(d <= 30.0 for d in delays)
    assert delays[-1] >= 24.0  # at the cap, minus jitter
    assert len({round(src.backoff_s(3), 6) for _ in range(5)}) > 1


@pytest.mark.parametrize(
    ("spec", "station", "selectors"),
    [
        ("NC_*", "NC_*", ()),
        ("BK_CMB:HH? EH?", "BK_CMB", ("HH?", "EH?")),
        ("NC_* :HH?", "NC_*", ("HH?",)),
        ("*_*", "*_*", ()),
    ],
)
def test_parse_stream_spec(spec: str, station: str, selectors: tuple[str, ...]) -> None:
    req = parse_stream_spec(spec)
    assert (req.station_pattern, req.selectors) == (station, selectors)


def test_parse_stream_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_stream_spec("CMB")
    assert parse_stream_spec("NC_*").matches("NC_ABC")
    assert not parse_stream_spec("NC_A?C").matches("NC_ABCD")


def test_unwritable_state_file_logs_once_a_minute_and_counts_every_failure(tmp_path: Path, metrics, caplog) -> None:
    """A full disk or a read-only directory: the 0.5 s save tick must not write an ERROR each time."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the state directory should be")
    tracker = StateTracker(StateStore(blocked / "sl.state"), save_interval_s=0.0, metrics=metrics)
    tracker.record(ref(1), 0, 100)
    tracker.acknowledge("XX_AAA", 100)
    with caplog.at_level("ERROR", logger="streamer.seedlink_state"):
        for i in range(120):  # one minute of 0.5 s ticks
            assert tracker.save_if_due(now_s=i * 0.5) is False
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "sl.state" in errors[0].getMessage()
    assert metrics.state_save_errors._value.get() == 120
