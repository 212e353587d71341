"""The SeedLink client against the replay server over loopback: reconnects, data timeout, and
resume from the acknowledged state across a kill and restart (every sample exactly once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_replay_server import write_archive  # same directory: pytest puts it on sys.path

from streamer.config import SeedLinkServer, SeedLinkSettings
from streamer.metrics import Metrics
from streamer.records import PacketRef
from streamer.replay import ReplayServerThread
from streamer.seedlink import SeedLinkSource, parse_packet_header
from streamer.seedlink_state import StateStore, StateTracker, StationState, save_state_periodically

pytestmark = pytest.mark.integration

STATIONS = ("XX_AAA", "XX_BBB", "YY_CCC")
T0_NS = 1767225600 * 10**9  # 2026-01-01T00:00:00Z, the archive start


@dataclass
class Got:
    """One packet as the downstream callback saw it."""

    ref: PacketRef
    seed_id: str
    start_ns: int
    end_ns: int
    payload: bytes


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    d = tmp_path_factory.mktemp("archive")
    truth = write_archive(d, duration_s=120.0, seed=3)
    return d, truth


def all_records(directory: Path) -> set[bytes]:
    out = set()
    for f in directory.glob("*.mseed"):
        data = f.read_bytes()
        out.update(data[i:i + 512] for i in range(0, len(data), 512))
    return out


def settings_for(ports: list[int], state_file: Path, **kw: float) -> SeedLinkSettings:
    base: dict = dict(
        reconnect_min_s=0.05, reconnect_max_s=0.3, data_timeout_s=2.0, connect_timeout_s=2.0,
        state_save_interval_s=0.05,
    )
    base.update(kw)
    servers = [SeedLinkServer(host="127.0.0.1", port=p, streams=["XX_*", "YY_CCC"]) for p in ports]
    return SeedLinkSettings(servers=servers, state_file=state_file, **base)


def seed_state(path: Path, port: int, seq: int = 0, end_ns: int = T0_NS) -> None:
    """A state file saying everything up to ``seq`` was acknowledged (the servers here number
    from 1, so seq 0 = "from the beginning"); a first start would otherwise be real time only."""
    StateStore(path).save({f"127.0.0.1:{port}": {k: StationState(seq, end_ns) for k in STATIONS}})


async def stream_until(
    source: SeedLinkSource,
    done: Callable[[], bool],
    timeout_s: float = 20.0,
    tracker: StateTracker | None = None,
) -> None:
    """Run ``source`` until ``done()``; then stop it (no final state save: like a kill)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(source.run(stop))]
    if tracker is not None:
        tasks.append(asyncio.create_task(save_state_periodically(tracker, stop, tick_s=0.01)))
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for data")
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)


def make_source(settings: SeedLinkSettings, tracker: StateTracker, metrics: Metrics, got: list[Got],
                after: Callable[[Got], None] | None = None) -> SeedLinkSource:
    def on_packet(payload: bytes, ref: PacketRef, arrival_ns: int) -> None:
        h = parse_packet_header(payload)
        g = Got(ref, h.seed_id, h.start_ns, h.end_ns, payload)
        got.append(g)
        if after is not None:
            after(g)

    return SeedLinkSource(settings.servers[0], settings, on_packet, tracker, metrics)


def reconnects(metrics: Metrics, reason: str, port: int) -> float:
    return metrics.seedlink_reconnects.labels(server=f"127.0.0.1:{port}", reason=reason)._value.get()


def assert_exactly_once(got: list[Got], directory: Path, truth: dict[str, np.ndarray]) -> int:
    """Every record arrived, and after de-duplication by data time every sample exactly once.
    Returns the number of duplicate packets that de-duplication removed."""
    from pymseed import MS3Record

    unique: dict[tuple[str, int], bytes] = {}
    for g in got:
        prev = unique.setdefault((g.seed_id, g.start_ns), g.payload)
        assert prev == g.payload  # a duplicate is the same record, never different data
    assert set(unique.values()) == all_records(directory)  # no gaps, nothing foreign
    for seed_id, samples in truth.items():
        parts = sorted((start, p) for (sid, start), p in unique.items() if sid == seed_id)
        data = np.concatenate([MS3Record.parse(p, unpack_data=True).np_datasamples for _, p in parts])
        np.testing.assert_array_equal(data, samples)
    return len(got) - len(unique)


# ---------------------------------------------------------------------------------------------
# reconnects
# ---------------------------------------------------------------------------------------------


def test_reconnects_after_server_closes_mid_stream(archive, tmp_path: Path, metrics: Metrics) -> None:
    directory, truth = archive
    total = len(all_records(directory))
    with ReplayServerThread([directory], speed=0, first_sequence=1) as srv:
        assert srv.server is not None
        srv.server.fail_after_packets = 40  # every connection ends after 40 packets
        settings = settings_for([srv.port], tmp_path / "sl.state")
        seed_state(settings.state_file, srv.port)
        tracker = StateTracker.from_settings(settings, metrics)
        got: list[Got] = []
        source = make_source(settings, tracker, metrics, got)
        asyncio.run(stream_until(source, lambda: len(got) >= total))
        n_connections = srv.server.connections
    assert assert_exactly_once(got, directory, truth) == 0  # in-process resume: no duplicates at all
    assert reconnects(metrics, "eof", srv.port) >= total // 40
    assert n_connections >= total // 40 + 1
    assert sum(s.value for s in metrics.sequence_gaps.collect()[0].samples) == 0


def test_server_killed_and_restarted_mid_stream(archive, tmp_path: Path, metrics: Metrics) -> None:
    """Server down for a while (connections refused, capped backoff), back on the same port:
    the client resumes where it was, every record exactly once."""
    directory, truth = archive
    total = len(all_records(directory))
    srv = ReplayServerThread([directory], speed=0, first_sequence=1).start()
    port = srv.port
    assert srv.server is not None
    srv.server.fail_after_packets = 60
    settings = settings_for([port], tmp_path / "sl.state")
    seed_state(settings.state_file, port)
    tracker = StateTracker.from_settings(settings, metrics)
    got: list[Got] = []
    source = make_source(settings, tracker, metrics, got)
    servers = [srv]
    stopped_at: list[float] = []

    def done() -> bool:
        if len(got) >= 60 and not stopped_at:
            srv.stop()  # the server dies mid-stream
            stopped_at.append(time.monotonic())
        elif stopped_at and len(servers) == 1 and time.monotonic() - stopped_at[0] > 1.0:
            servers.append(ReplayServerThread([directory], speed=0, first_sequence=1, port=port).start())
        return len(got) >= total

    try:
        asyncio.run(stream_until(source, done))
    finally:
        for s in servers:
            s.stop()
    assert assert_exactly_once(got, directory, truth) == 0
    # Down for 1 s with backoff 0.05 s doubling to a 0.3 s cap: a handful of refused attempts.
    assert 2 <= reconnects(metrics, "refused", port) <= 15
    assert metrics.seedlink_connected.labels(server=f"127.0.0.1:{port}")._value.get() == 0  # after stop


def test_data_timeout_reconnects_a_stalled_connection(archive, tmp_path: Path, metrics: Metrics) -> None:
    directory, truth = archive
    total = len(all_records(directory))
    with ReplayServerThread([directory], speed=0, first_sequence=1) as srv:
        assert srv.server is not None
        srv.server.stalled = True  # handshake answered, then not one byte
        settings = settings_for([srv.port], tmp_path / "sl.state", data_timeout_s=0.4)
        seed_state(settings.state_file, srv.port)
        tracker = StateTracker.from_settings(settings, metrics)
        got: list[Got] = []
        source = make_source(settings, tracker, metrics, got)
        server = srv.server

        def done() -> bool:
            if reconnects(metrics, "data_timeout", srv.port) >= 2:
                server.stalled = False
            return len(got) >= total

        asyncio.run(stream_until(source, done))
    assert reconnects(metrics, "data_timeout", srv.port) >= 2
    assert assert_exactly_once(got, directory, truth) == 0


def test_rejected_stations_are_a_protocol_error_retried_with_backoff(archive, tmp_path: Path, metrics: Metrics) -> None:
    directory, _truth = archive
    with ReplayServerThread([directory], speed=0) as srv:
        settings = settings_for([srv.port], tmp_path / "sl.state")
        settings = settings.model_copy(update={"servers": [SeedLinkServer(host="127.0.0.1", port=srv.port, streams=["QQ_NONE"])]})
        tracker = StateTracker.from_settings(settings, metrics)
        got: list[Got] = []
        source = make_source(settings, tracker, metrics, got)
        asyncio.run(stream_until(source, lambda: reconnects(metrics, "protocol_error", srv.port) >= 2, timeout_s=10))
    assert got == []
    assert source.connections == 0


# ---------------------------------------------------------------------------------------------
# kill and restart: resume from the acknowledged state
# ---------------------------------------------------------------------------------------------


def test_kill_and_restart_resumes_from_acknowledged_state(archive, tmp_path: Path, registry) -> None:
    directory, truth = archive
    total = len(all_records(directory))
    lag_ns = 20 * 10**9  # outputs are published about 20 s of data behind the newest sample
    with ReplayServerThread([directory], speed=0, first_sequence=1) as srv:
        settings = settings_for([srv.port], tmp_path / "sl.state", state_save_interval_s=1e-6)
        seed_state(settings.state_file, srv.port)

        # --- first run: acknowledge with a lag, killed after about half the data -------------
        assert srv.server is not None
        srv.server.fail_after_packets = total // 2  # so the kill lands mid-stream
        settings_a = settings.model_copy(update={"reconnect_min_s": 10.0, "reconnect_max_s": 10.0})
        metrics_a = Metrics(registry)
        tracker_a = StateTracker.from_settings(settings, metrics_a)
        got_a: list[Got] = []
        newest: dict[str, int] = {}

        def publish_and_ack(g: Got) -> None:
            key = g.ref.station_key
            newest[key] = max(newest.get(key, 0), g.end_ns)
            tracker_a.acknowledge(key, newest[key] - lag_ns)

        source_a = make_source(settings_a, tracker_a, metrics_a, got_a, after=publish_and_ack)
        asyncio.run(stream_until(source_a, lambda: len(got_a) >= total // 2, tracker=tracker_a))
        assert len(got_a) == total // 2
        srv.server.fail_after_packets = None
        saved = StateStore(settings.state_file).load()[f"127.0.0.1:{srv.port}"]
        # The saved state never runs ahead of what was acknowledged, and did advance.
        for key, st in saved.items():
            acked = tracker_a.acked(f"127.0.0.1:{srv.port}", key)
            assert acked is not None and st.seq <= acked.seq
            assert st.end_ns <= newest[key] - lag_ns
        assert any(st.seq > 0 for st in saved.values())
        assert metrics_a.state_saves._value.get() >= 1

        # --- second run: a new process on the same state file ---------------------------------
        from prometheus_client import CollectorRegistry

        metrics_b = Metrics(CollectorRegistry())
        tracker_b = StateTracker.from_settings(settings, metrics_b)
        got_b: list[Got] = []
        source_b = make_source(settings, tracker_b, metrics_b, got_b)
        remaining = {g.payload for g in got_a}

        def b_done() -> bool:
            return all_records(directory) <= remaining | {g.payload for g in got_b}

        asyncio.run(stream_until(source_b, b_done))

    # B resumed right after the saved sequence numbers (no gap, no replay from the start).
    for key, st in saved.items():
        first_b = next(g for g in got_b if g.ref.station_key == key)
        assert first_b.ref.sequence == st.seq + 1
    duplicates = assert_exactly_once(got_a + got_b, directory, truth)
    assert duplicates > 0  # data after the acknowledged point were sent again (de-duplicated)
    assert sum(s.value for s in metrics_b.sequence_gaps.collect()[0].samples) == 0


def test_without_acknowledgements_the_state_never_advances(archive, tmp_path: Path, metrics: Metrics) -> None:
    directory, _truth = archive
    total = len(all_records(directory))
    with ReplayServerThread([directory], speed=0, first_sequence=1) as srv:
        settings = settings_for([srv.port], tmp_path / "sl.state", state_save_interval_s=1e-6)
        seed_state(settings.state_file, srv.port)
        before = settings.state_file.read_bytes()
        tracker = StateTracker.from_settings(settings, metrics)
        got: list[Got] = []
        source = make_source(settings, tracker, metrics, got)
        asyncio.run(stream_until(source, lambda: len(got) >= total, tracker=tracker))
        assert tracker.pending_count() == total
        assert settings.state_file.read_bytes() == before  # never rewritten: nothing acknowledged
        # A restart asks for everything again.
        tracker2 = StateTracker.from_settings(settings, metrics)
        got2: list[Got] = []
        asyncio.run(stream_until(make_source(settings, tracker2, metrics, got2), lambda: len(got2) >= total))
    assert {g.payload for g in got2} == {g.payload for g in got}


def test_time_fallback_when_the_server_no_longer_has_the_sequence(archive, tmp_path: Path, metrics: Metrics) -> None:
    """The restarted server numbers its packets differently (its ring was reset): the saved
    sequence is unknown there, so the saved time decides: no gap, duplicates only."""
    directory, truth = archive
    total = len(all_records(directory))
    state_file = tmp_path / "sl.state"
    with ReplayServerThread([directory], speed=0, first_sequence=1) as srv:
        assert srv.server is not None
        srv.server.fail_after_packets = total // 2
        port = srv.port
        settings = settings_for([port], state_file, state_save_interval_s=1e-6)
        seed_state(state_file, port)
        tracker = StateTracker.from_settings(settings, metrics)
        got_a: list[Got] = []

        def ack_everything(g: Got) -> None:
            tracker.acknowledge(g.ref.station_key, g.end_ns)

        settings_a = settings.model_copy(update={"reconnect_min_s": 10.0, "reconnect_max_s": 10.0})
        source = make_source(settings_a, tracker, metrics, got_a, after=ack_everything)
        asyncio.run(stream_until(source, lambda: len(got_a) >= total // 2, tracker=tracker))
    tracker.save()
    saved = StateStore(state_file).load()[f"127.0.0.1:{port}"]

    with ReplayServerThread([directory], speed=0, first_sequence=0x400000, port=port) as srv2:
        tracker_b = StateTracker.from_settings(settings, metrics)
        got_b: list[Got] = []
        source_b = make_source(settings, tracker_b, metrics, got_b)
        have = {g.payload for g in got_a}
        asyncio.run(stream_until(source_b, lambda: all_records(directory) <= have | {g.payload for g in got_b}))
        assert srv2.server is not None
        assert any(cmd.startswith("DATA ") and len(cmd.split()) == 3 for cmd in srv2.server.command_log)
    for key, st in saved.items():
        first_b = next(g for g in got_b if g.ref.station_key == key)
        assert first_b.ref.sequence >= 0x400000  # the new numbering
        # Time fallback at one-second resolution: it starts at or before the saved end time.
        assert first_b.end_ns > (st.end_ns // 10**9) * 10**9
        assert first_b.start_ns <= st.end_ns
    assert_exactly_once(got_a + got_b, directory, truth)
    # The new numbering is not a gap: gaps are judged by data time, and nothing was lost.
    assert sum(s.value for s in metrics.sequence_gaps.collect()[0].samples) == 0


def test_first_start_without_state_gets_the_replay_from_its_start(archive, tmp_path: Path, metrics: Metrics) -> None:
    directory, truth = archive
    total = len(all_records(directory))
    with ReplayServerThread([directory], speed=0) as srv:
        settings = settings_for([srv.port], tmp_path / "no-such-dir" / "sl.state")
        tracker = StateTracker.from_settings(settings, metrics)
        got: list[Got] = []
        source = make_source(settings, tracker, metrics, got)
        asyncio.run(stream_until(source, lambda: len(got) >= total))
        assert srv.server is not None
        # No resume point: plain DATA (wildcard and exact requests), no sequence numbers.
        assert [c for c in srv.server.command_log if c.startswith(("STATION", "DATA"))] == [
            "STATION CCC YY", "DATA", "STATION * XX", "DATA",
        ]
    assert assert_exactly_once(got, directory, truth) == 0
    assert metrics.state_file_errors._value.get() == 0


def test_two_servers_share_one_state_file(tmp_path: Path, registry) -> None:
    d1, d2 = tmp_path / "a", tmp_path / "b"
    write_archive(d1, stations=("XX_AAA",), duration_s=30, seed=1)
    write_archive(d2, stations=("YY_CCC",), duration_s=30, seed=2)
    metrics = Metrics(registry)
    with ReplayServerThread([d1], speed=0, first_sequence=1) as s1, ReplayServerThread([d2], speed=0, first_sequence=1) as s2:
        settings = settings_for([s1.port, s2.port], tmp_path / "sl.state", state_save_interval_s=1e-6)
        StateStore(settings.state_file).save({
            f"127.0.0.1:{s1.port}": {"XX_AAA": StationState(0, T0_NS)},
            f"127.0.0.1:{s2.port}": {"YY_CCC": StationState(0, T0_NS)},
        })
        tracker = StateTracker.from_settings(settings, metrics)
        got: list[PacketRef] = []

        def on_packet(payload: bytes, ref: PacketRef, arrival_ns: int) -> None:
            got.append(ref)
            tracker.acknowledge(ref.station_key, parse_packet_header(payload).end_ns, server=ref.server)

        sources = [SeedLinkSource(srv, settings, on_packet, tracker, metrics) for srv in settings.servers]
        want = len(all_records(d1)) + len(all_records(d2))

        async def main() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(s.run(stop)) for s in sources]
            while len(got) < want:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(asyncio.wait_for(main(), 20))
        tracker.save()
    saved = StateStore(settings.state_file).load()
    assert set(saved) == {f"127.0.0.1:{s1.port}", f"127.0.0.1:{s2.port}"}
    assert saved[f"127.0.0.1:{s1.port}"]["XX_AAA"].seq == len(all_records(d1))
    assert saved[f"127.0.0.1:{s2.port}"]["YY_CCC"].seq == len(all_records(d2))


def test_wrong_port_never_makes_the_service_ready(archive, tmp_path: Path, metrics: Metrics) -> None:
    """Nothing listens on the configured port: coldstream_ready stays 0 (it becomes 1 only at the
    first successful handshake), the refusals are counted."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once closed
    settings = settings_for([port], tmp_path / "sl.state")
    source = make_source(settings, StateTracker.from_settings(settings, metrics), metrics, [])
    started = time.monotonic()
    asyncio.run(stream_until(source, lambda: time.monotonic() - started > 1.5, timeout_s=5))
    assert metrics.ready._value.get() == 0
    assert reconnects(metrics, "refused", port) >= 2
    directory, _ = archive
    with ReplayServerThread([directory], speed=0, first_sequence=1) as srv:
        settings = settings_for([srv.port], tmp_path / "sl2.state")
        seed_state(settings.state_file, srv.port)
        got: list[Got] = []
        source = make_source(settings, StateTracker.from_settings(settings, metrics), metrics, got)
        asyncio.run(stream_until(source, lambda: len(got) > 0))
    assert metrics.ready._value.get() == 1
