"""The SeedLink replay server against independent clients (seedlink-client, ObsPy) and raw sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from seedlink_raw import RawClient
from streamer.replay import (
    ReplayError,
    ReplayServer,
    ReplayServerThread,
    load_records,
    parse_seedlink_time,
    parse_sequence,
    selection_accepts,
    shift_record_time,
)

pytestmark = pytest.mark.integration

T0_ISO = "2026-01-01T00:00:00"
STATIONS = ("XX_AAA", "XX_BBB", "YY_CCC")
CHANNELS = ("HHE", "HHN", "HHZ")


def write_archive(
    directory: Path,
    stations: tuple[str, ...] = STATIONS,
    channels: tuple[str, ...] = CHANNELS,
    duration_s: float = 120.0,
    seed: int = 0,
    reclen: int = 512,
) -> dict[str, np.ndarray]:
    """Seeded synthetic 100 Hz traces, one Steim2 miniSEED file per station; returns the samples
    per SEED id (``NET.STA.00.CHA``)."""
    from obspy import Stream, Trace, UTCDateTime

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    truth: dict[str, np.ndarray] = {}
    for key in stations:
        net, sta = key.split("_")
        traces = []
        for cha in channels:
            # A random walk plus noise: realistic Steim2 compression (~100-300 samples per record).
            data = (np.cumsum(rng.integers(-40, 41, int(duration_s * 100))) + rng.integers(-500, 500, int(duration_s * 100))).astype(np.int32)
            header = {"network": net, "station": sta, "location": "00", "channel": cha,
                      "sampling_rate": 100.0, "starttime": UTCDateTime(T0_ISO)}
            traces.append(Trace(data, header=header))
            truth[f"{net}.{sta}.00.{cha}"] = data
        Stream(traces).write(str(directory / f"{key}.mseed"), format="MSEED", reclen=reclen, encoding="STEIM2")
    return truth


def file_records(directory: Path) -> dict[str, list[bytes]]:
    """The 512-byte records of each station file, in file order."""
    out = {}
    for f in sorted(directory.glob("*.mseed")):
        data = f.read_bytes()
        out[f.stem] = [data[i:i + 512] for i in range(0, len(data), 512)]
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("archive")
    write_archive(d)
    return d


@pytest.fixture
def server(archive: Path):
    with ReplayServerThread([archive], speed=0) as srv:
        yield srv




# ---------------------------------------------------------------------------------------------
# independent clients receive exactly what is served
# ---------------------------------------------------------------------------------------------


def test_seedlink_client_receives_the_archive_byte_for_byte(server: ReplayServerThread, archive: Path) -> None:
    from seedlink_client import SeedLink

    served = file_records(archive)
    sl = SeedLink("127.0.0.1", server.port, timeout=10)
    for key in STATIONS:
        sl.add_stream(key)
    # A begin time before the server started: everything from that time on, then END.
    sl.set_timewindow("2025-12-31T23:00:00", "2026-01-01T01:00:00")
    sl.connect()
    got: dict[str, list[tuple[int, bytes]]] = {k: [] for k in STATIONS}
    for pkt in sl.collect():
        got[pkt.station_id].append((pkt.seqnum, pkt.payload))
    sl.close()
    for key in STATIONS:
        seqs = [s for s, _ in got[key]]
        assert seqs == list(range(len(served[key]))), key  # per-station consecutive numbering
        # Same records, byte for byte (the server orders by end time, files are per channel).
        assert sorted(p for _, p in got[key]) == sorted(served[key])


def _obspy_collector(url: str):
    """ObsPy's SeedLink client collecting every trace it receives (an independent client)."""
    from obspy.clients.seedlink.easyseedlink import EasySeedLinkClient

    class Collect(EasySeedLinkClient):
        def __init__(self, url: str) -> None:
            super().__init__(url, autoconnect=False)
            self.traces: list = []

        def on_data(self, trace) -> None:  # noqa: ANN001 - ObsPy callback
            self.traces.append(trace)

    return Collect(url)


def _obspy_collect_bbb_hhz(port: int) -> list:
    """Every XX.BBB HHZ trace of the archive's day, as ObsPy's SeedLink client receives it (a time window)."""
    from obspy import UTCDateTime

    client = _obspy_collector(f"127.0.0.1:{port}")
    client.conn.timeout = 10  # ObsPy 1.5.1 cannot connect with its default timeout=None
    client.connect()
    client.select_stream("XX", "BBB", "HHZ")
    client.conn.begin_time = UTCDateTime(2025, 12, 31)
    client.conn.end_time = UTCDateTime(2026, 1, 1, 1)
    client.run()
    return client.traces


def test_obspy_client_receives_the_archive(server: ReplayServerThread, archive: Path) -> None:
    from obspy import UTCDateTime

    client = _obspy_collector(f"127.0.0.1:{server.port}")
    # ObsPy 1.5.1 cannot connect with its default timeout=None; set one before connecting.
    client.conn.timeout = 10
    client.connect()
    assert "multistation" in client.capabilities
    client.select_stream("XX", "BBB", "HHZ")
    client.conn.begin_time = UTCDateTime(2025, 12, 31)
    client.conn.end_time = UTCDateTime(2026, 1, 1, 1)
    client.run()  # returns at the END marker
    from obspy import read

    expected = read(str(archive / "XX_BBB.mseed")).select(channel="HHZ")
    got_ids = {tr.id for tr in client.traces}
    assert got_ids == {"XX.BBB.00.HHZ"}
    samples = np.concatenate([tr.data for tr in sorted(client.traces, key=lambda t: t.stats.starttime)])
    np.testing.assert_array_equal(samples, expected[0].data)


# ---------------------------------------------------------------------------------------------
# wire details
# ---------------------------------------------------------------------------------------------


def test_data_resume_with_0x_sequence_and_cr_only_lines(server: ReplayServerThread, archive: Path) -> None:
    srv = server.server
    assert srv is not None
    arch = srv.stations["XX_AAA"]
    c = RawClient(server.port)
    c.send("HELLO")
    assert c.line().startswith("SeedLink v3.1")
    c.line()
    c.send("STATION   AAA    XX")  # repeated whitespace, as ObsPy sends
    assert c.line() == "OK"
    c.send("DATA 0x00000A")
    assert c.line() == "OK"
    c.send("END")
    head, payload = c.packet()
    assert head == "SL00000A"
    assert payload == arch.payload(10)
    head, _ = c.packet()
    assert head == "SL00000B"
    c.close()


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_line_endings(server: ReplayServerThread, terminator: str) -> None:
    c = RawClient(server.port)
    c.send("hello", terminator)  # case-insensitive too
    assert "SLPROTO:3.1" in c.line()
    c.line()
    c.send("NOSUCH", terminator)
    assert c.line() == "ERROR"
    c.close()


def test_time_begin_before_server_start_gives_everything(server: ReplayServerThread) -> None:
    srv = server.server
    assert srv is not None
    arch = srv.stations["YY_CCC"]
    c = RawClient(server.port)
    c.send("STATION CCC YY\rSELECT 00HHZ\rTIME 2025,12,31,00,00,00\rEND")
    assert c.line() == "OK"
    assert c.line() == "OK"
    assert c.line() == "OK"
    expected = [i for i in range(arch.n) if arch.record(i).channel == "HHZ"]
    heads = [c.packet()[0] for _ in expected]
    assert heads == [f"SL{i:06X}" for i in expected]
    c.close()


def test_data_with_unavailable_sequence_falls_back_to_begin_time(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0, ring_packets=1000, first_sequence=0x100) as srv:
        assert srv.server is not None
        arch = srv.server.stations["XX_AAA"]
        begin_ns = parse_seedlink_time("2026,01,01,00,01,00")
        first = next(i for i in range(arch.n) if arch.end_ns(i) > begin_ns)
        c = RawClient(srv.port)
        # 0x20 was never served (numbering starts at 0x100): begin time decides.
        c.send("STATION AAA XX\nDATA 20 2026,01,01,00,01,00\nEND")
        assert [c.line(), c.line()] == ["OK", "OK"]
        head, payload = c.packet()
        assert head == f"SL{0x100 + first:06X}"
        assert payload == arch.payload(first)
        c.close()


def test_data_with_unavailable_sequence_and_no_time_gives_oldest(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0, ring_packets=5) as srv:
        assert srv.server is not None
        arch = srv.server.stations["XX_AAA"]
        c = RawClient(srv.port)
        c.send("STATION AAA XX\rDATA 0\rEND")
        assert [c.line(), c.line()] == ["OK", "OK"]
        head, _ = c.packet()
        assert head == f"SL{arch.n - 5:06X}"
        c.close()


def test_data_without_sequence_gets_the_ring_or_with_live_start_only_new_packets(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send("STATION BBB XX\rDATA\rEND")
        assert [c.line(), c.line()] == ["OK", "OK"]
        assert c.packet()[0] == "SL000000"  # the whole archive, however late the client came
        c.close()
    with ReplayServerThread([archive], speed=50.0, live_start=True) as srv:
        time.sleep(0.5)  # about 25 s of data released before the client asks
        assert srv.server is not None
        released = srv.server.stations["XX_BBB"].released
        c = RawClient(srv.port)
        c.send("STATION BBB XX\rDATA\rEND")
        assert [c.line(), c.line()] == ["OK", "OK"]
        first = int(c.packet()[0][2:], 16)
        assert first >= released > 0  # only what comes next
        c.close()


def test_unknown_station_and_bad_arguments_are_errors(server: ReplayServerThread) -> None:
    c = RawClient(server.port)
    c.send("STATION NOPE XX")
    assert c.line() == "ERROR"
    c.send("STATION AAA XX")
    assert c.line() == "OK"
    c.send("SELECT TOOLONGSELECTOR")
    assert c.line() == "ERROR"
    c.send("DATA ZZZ")
    assert c.line() == "ERROR"
    c.send("CAPABILITIES EXTREPLY")
    assert c.line() == "OK"
    c.send("DATA 1 notatime")
    assert c.line().startswith("ERROR\r")  # EXTREPLY: the message follows a CR
    c.close()


def test_commands_for_a_rejected_station_do_not_start_streaming(server: ReplayServerThread) -> None:
    # ObsPy sends SELECT and DATA for a station even after its STATION was rejected.
    c = RawClient(server.port)
    c.send("STATION NOPE XX\rSELECT HHZ\rDATA\rSTATION AAA XX\rSELECT HHZ\rDATA 0\rEND")
    assert [c.line() for _ in range(6)] == ["ERROR", "ERROR", "ERROR", "OK", "OK", "OK"]
    head, payload = c.packet()
    assert payload[8:13] == b"AAA  " and payload[15:18] == b"HHZ"
    c.close()


def test_info_levels_parse(server: ReplayServerThread) -> None:
    from seedlink_client import SeedLink

    sl = SeedLink("127.0.0.1", server.port, timeout=10)
    sl.connect()
    ident = ET.fromstring(sl.info("ID"))
    assert ident.tag == "seedlink" and "coldstream" in ident.attrib["software"]
    caps = {e.attrib["name"] for e in ET.fromstring(sl.info("CAPABILITIES")).iter("capability")}
    assert {"multistation", "dialup", "window-extraction"} <= caps
    stations = ET.fromstring(sl.info("STATIONS")).findall("station")
    assert sorted(f"{s.attrib['network']}_{s.attrib['name']}" for s in stations) == sorted(STATIONS)
    streams = ET.fromstring(sl.info("STREAMS"))  # several SLINFO records, chained
    chans = {(s.attrib["name"], st.attrib["seedname"]) for s in streams.findall("station") for st in s.findall("stream")}
    assert len(chans) == len(STATIONS) * len(CHANNELS)
    sl.close()


def test_cat_and_bye(server: ReplayServerThread) -> None:
    c = RawClient(server.port)
    c.send("CAT")
    lines = [c.line() for _ in STATIONS]
    assert [ln.split()[:2] for ln in lines] == [k.split("_") for k in STATIONS]
    c._fill(3)
    assert c.buf.startswith(b"END")
    c.send("BYE")
    c.sock.settimeout(5)
    assert c.sock.recv(10) == b""  # the server closes the connection
    c.close()


def test_uni_station_mode_streams_all_selected_stations(server: ReplayServerThread) -> None:
    c = RawClient(server.port)
    c.send("SELECT ??HHN")
    assert c.line() == "OK"
    c.send("TIME 2025,12,31,00,00,00 2026,01,01,00,00,30")
    got = []
    while True:
        head, payload = c.packet()
        if head == "END":
            break
        got.append((payload[8:13].decode().strip(), payload[15:18].decode()))  # fixed-header station, channel
    assert got and all(cha == "HHN" for _sta, cha in got)
    assert {sta for sta, _cha in got} == {"AAA", "BBB", "CCC"}
    c.close()


# ---------------------------------------------------------------------------------------------
# real-time pacing and faults
# ---------------------------------------------------------------------------------------------


def test_speed_factor_paces_release(archive: Path) -> None:
    from seedlink_client import SeedLink

    # 120 s of data at 100x: about 1.2 s from the first record's end to the last.
    with ReplayServerThread([archive], speed=100.0) as srv:
        assert srv.server is not None
        total = srv.server.stations["XX_AAA"].n
        sl = SeedLink("127.0.0.1", srv.port, timeout=10)
        sl.add_stream("XX_AAA", seqnum=-1)  # DATA 0: from the first packet
        sl.connect()
        arrivals = []
        t0 = time.monotonic()
        for _pkt in sl.collect():
            arrivals.append(time.monotonic() - t0)
            if len(arrivals) == total:
                break
        sl.close()
    assert 0.6 < arrivals[-1] < 5.0
    assert arrivals[len(arrivals) // 2] < arrivals[-1] - 0.2  # spread over time, not one burst


def test_drop_connections_and_fail_after_packets(server: ReplayServerThread) -> None:
    srv = server.server
    assert srv is not None
    srv.fail_after_packets = 7
    c = RawClient(server.port)
    c.send("STATION AAA XX\rDATA 0\rEND")
    assert [c.line(), c.line()] == ["OK", "OK"]
    heads = []
    with pytest.raises(ConnectionError):
        while True:
            heads.append(c.packet()[0])
    assert heads == [f"SL{i:06X}" for i in range(7)]
    c.close()
    srv.fail_after_packets = None
    srv.stalled = True
    c = RawClient(server.port)
    c.send("STATION AAA XX\rDATA 0\rEND")
    assert [c.line(), c.line()] == ["OK", "OK"]
    c.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        c.sock.recv(1)  # stalled: no bytes at all
    assert server.drop_connections() == 1
    c.sock.settimeout(5)
    assert c.sock.recv(1) == b""
    srv.stalled = False


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selectors", "loc", "cha", "ok"),
    [
        ([], "00", "HHZ", True),
        (["HHZ"], "00", "HHZ", True),
        (["HH?"], "00", "HHN", True),
        (["EH?"], "00", "HHN", False),
        (["00HHZ"], "00", "HHZ", True),
        (["10HHZ"], "00", "HHZ", False),
        (["--HHZ"], "", "HHZ", True),
        (["HH?", "!HHE"], "00", "HHE", False),
        (["!HHE"], "00", "HHZ", True),
        (["HHZ.D"], "00", "HHZ", True),
        (["HHZ.L"], "00", "HHZ", False),
    ],
)
def test_selectors(selectors: list[str], loc: str, cha: str, ok: bool) -> None:
    assert selection_accepts(selectors, loc, cha) is ok


def test_sequence_and_time_parsing() -> None:
    assert parse_sequence("0x1F") == 0x1F
    assert parse_sequence("00001f") == 0x1F
    assert parse_sequence("1000000") == 0  # 24-bit wrap
    with pytest.raises(ValueError):
        parse_sequence("xyz")
    assert parse_seedlink_time("2026,1,1,0,0,1") == 1767225601 * 10**9
    assert parse_seedlink_time("2026,01,01") == 1767225600 * 10**9
    with pytest.raises(ValueError):
        parse_seedlink_time("2026")


def test_other_record_lengths_are_repacked_to_512(tmp_path: Path) -> None:
    truth = write_archive(tmp_path, stations=("ZZ_RPK",), channels=("HHZ",), duration_s=60, reclen=4096)
    records = load_records([tmp_path])
    assert all(len(r.payload) == 512 for r in records)
    from pymseed import MS3Record

    samples = np.concatenate([
        MS3Record.parse(r.payload, unpack_data=True).np_datasamples
        for r in sorted(records, key=lambda r: r.start_ns)
    ])
    np.testing.assert_array_equal(samples, truth["ZZ.RPK.00.HHZ"])


def test_shift_record_time_moves_start_only(archive: Path) -> None:
    from pymseed import MS3Record

    rec = file_records(archive)["XX_AAA"][3]
    shifted = shift_record_time(rec, 3600 * 10**9)
    a, b = MS3Record.parse(rec, unpack_data=True), MS3Record.parse(shifted, unpack_data=True)
    assert b.starttime - a.starttime == 3600 * 10**9
    np.testing.assert_array_equal(a.np_datasamples, b.np_datasamples)


def test_loop_continues_numbering_with_shifted_times(archive: Path) -> None:
    from pymseed import MS3Record

    records = load_records([archive / "XX_AAA.mseed"])
    srv = ReplayServer([], records=records, speed=1.0, loop_forever=True)
    arch = srv.stations["XX_AAA"]
    assert srv.period_ns == 120 * 10**9
    second = MS3Record.parse(arch.payload(arch.n))
    assert second.starttime == arch.records[0].start_ns + srv.period_ns
    assert arch.sequence(arch.n) == arch.n


def test_looping_replay_streams_on_with_consecutive_numbers(tmp_path: Path) -> None:
    from pymseed import MS3Record
    from seedlink_client import SeedLink

    write_archive(tmp_path, stations=("ZZ_LOP",), channels=("HHZ",), duration_s=20, seed=5)
    with ReplayServerThread([tmp_path], speed=100.0, loop_forever=True) as srv:
        assert srv.server is not None
        arch = srv.server.stations["ZZ_LOP"]
        sl = SeedLink("127.0.0.1", srv.port, timeout=10)
        sl.add_stream("ZZ_LOP", seqnum=-1)  # DATA 0
        sl.connect()
        got = []
        for pkt in sl.collect():
            got.append(pkt)
            if len(got) == 2 * arch.n + 2:
                break
        sl.close()
    assert [p.seqnum for p in got] == list(range(2 * arch.n + 2))
    starts = [MS3Record.parse(p.payload).starttime for p in got]
    assert starts[arch.n] - starts[0] == srv.server.period_ns == 20 * 10**9
    assert starts == sorted(starts)


def test_bad_inputs_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ReplayError):
        load_records([tmp_path / "missing"])
    (tmp_path / "junk.mseed").write_bytes(b"not miniseed at all" * 10)
    with pytest.raises(ReplayError):
        load_records([tmp_path])
    with pytest.raises(ReplayError):
        ReplayServer([], records=[], speed=-1)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_replay_server_command_serves_and_stops_on_sigterm(archive: Path) -> None:
    from seedlink_client import SeedLink

    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "replay-server", str(archive), "--port", "0", "--speed", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        sl = SeedLink("127.0.0.1", int(m.group(1)), timeout=10)
        sl.connect()
        assert "coldstream" in (sl.server_id or "")
        sl.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_one_second_records_reach_an_independent_client_complete(archive: Path) -> None:
    """``--record-s 1``: every record holds at most 1 s of data (the data latency a client sees), and
    ObsPy's SeedLink client still receives every sample."""
    from obspy import read

    records = load_records([archive], record_s=1.0)
    assert max(r.end_ns - r.start_ns for r in records) <= 10**9
    with pytest.raises(ReplayError, match="record length"):
        load_records([archive], record_s=0.0)

    with ReplayServerThread([archive], speed=0, record_s=1.0) as srv:
        traces = _obspy_collect_bbb_hhz(srv.port)
    assert all(tr.stats.npts <= 100 for tr in traces)
    expected = read(str(archive / "XX_BBB.mseed")).select(channel="HHZ")
    samples = np.concatenate([tr.data for tr in sorted(traces, key=lambda t: t.stats.starttime)])
    np.testing.assert_array_equal(samples, expected[0].data)


@pytest.mark.parametrize("nbytes", [256])
def test_small_record_lengths_hold_what_such_records_hold(archive: Path, nbytes: int) -> None:
    """``--record-bytes 256``: each served record carries the samples that ObsPy packs into a
    record of that length (checked against an independent packing), in a 512-byte SeedLink 3 packet,
    and ObsPy's SeedLink client still receives every sample."""
    import io

    from obspy import read

    src = read(str(archive / "XX_BBB.mseed")).select(channel="HHZ")[0]
    tr = src.copy()
    tr.data = tr.data.astype(np.int32)
    small = io.BytesIO()
    tr.write(small, format="MSEED", reclen=nbytes, encoding="STEIM2")
    raw = small.getvalue()
    want = [read(io.BytesIO(raw[i:i + nbytes]), headonly=True)[0].stats.npts for i in range(0, len(raw), nbytes)]

    records = [r for r in load_records([archive], record_bytes=nbytes) if (r.station, r.channel) == ("BBB", "HHZ")]
    assert all(len(r.payload) == 512 for r in records)
    got = [read(io.BytesIO(r.payload), headonly=True)[0].stats.npts for r in records]
    assert got == [n for n in want if n]
    default = [r for r in load_records([archive]) if (r.station, r.channel) == ("BBB", "HHZ")]
    assert max(got) < max(read(io.BytesIO(r.payload), headonly=True)[0].stats.npts for r in default)
    with pytest.raises(ReplayError, match="record bytes"):
        load_records([archive], record_bytes=128)  # ObsPy packs no record shorter than 256 bytes

    with ReplayServerThread([archive], speed=0, record_bytes=nbytes) as srv:
        traces = _obspy_collect_bbb_hhz(srv.port)
    samples = np.concatenate([t.data for t in sorted(traces, key=lambda t: t.stats.starttime)])
    np.testing.assert_array_equal(samples, src.data)
