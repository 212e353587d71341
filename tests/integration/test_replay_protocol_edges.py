"""The replay server's SeedLink v3 replies at the protocol's edges, over real sockets on loopback."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from seedlink_raw import RawClient
from streamer.replay import ReplayRecord, ReplayServerThread, parse_seedlink_time

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

T0_ISO = "2026-01-01T00:00:00"


def write_archive(directory: Path, stations: tuple[str, ...] = ("XX_AAA", "XX_BBB"), duration_s: float = 30.0) -> None:
    from obspy import Stream, Trace, UTCDateTime

    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    for key in stations:
        net, sta = key.split("_")
        traces = []
        for cha in ("HHN", "HHZ"):
            n = int(duration_s * 100)
            data = (np.cumsum(rng.integers(-40, 41, n)) + rng.integers(-500, 500, n)).astype(np.int32)
            header = {"network": net, "station": sta, "location": "00", "channel": cha,
                      "sampling_rate": 100.0, "starttime": UTCDateTime(T0_ISO)}
            traces.append(Trace(data, header=header))
        Stream(traces).write(str(directory / f"{key}.mseed"), format="MSEED", reclen=512, encoding="STEIM2")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("edge-archive")
    write_archive(d)
    return d




def test_select_with_type_only_is_accepted(archive: Path) -> None:
    # "LLCCC." may be left out of a v3 selector: ".D" selects every data stream.
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send("STATION AAA XX")
        assert c.line() == "OK"
        c.send("SELECT .D")
        assert c.line() == "OK"
        c.send("FETCH")
        assert c.line() == "OK"
        c.send("END")
        heads = []
        while (head := c.packet()[0]) != "END":
            heads.append(head)
        assert srv.server is not None
        assert heads == [f"SL{i:06X}" for i in range(srv.server.stations["XX_AAA"].n)]
        c.close()


def test_select_with_type_only_excludes_other_types(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send("STATION AAA XX")
        assert c.line() == "OK"
        c.send("SELECT .E")  # events only: this server has none
        assert c.line() == "OK"
        c.send("FETCH")
        assert c.line() == "OK"
        c.send("END")
        assert c.packet()[0] == "END"
        c.close()


def test_uni_station_data_with_bad_arguments_is_an_error_and_leaves_no_request(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send("DATA ZZZ")  # uni-station mode: a bad sequence number must not leave the client waiting
        assert c.line() == "ERROR"
        c.send("DATA 5")
        head, _ = c.packet()
        assert head == "SL000005"
        c.close()


def test_time_with_non_finite_seconds_is_an_error(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send("STATION BBB XX")
        assert c.line() == "OK"
        c.send("TIME 2026,01,01,00,00,inf")
        assert c.line() == "ERROR"
        c.send("TIME 2026,01,01,00,00,10")  # the connection is still usable
        assert c.line() == "OK"
        c.close()


def test_a_long_filtered_scan_does_not_block_other_clients(archive: Path) -> None:
    # One client whose selector matches nothing in a long ring must not stall the event loop:
    # other clients' commands are answered while its session skips packets.
    from streamer.replay import load_records

    payload = load_records([archive / "XX_AAA.mseed"])[0].payload
    n = 100_000
    recs = [ReplayRecord("XX", "AAA", "00", "HHZ", i * 10**9, (i + 1) * 10**9, payload) for i in range(n)]
    recs.append(ReplayRecord("XX", "BBB", "00", "HHZ", 0, 10**9, payload))
    with ReplayServerThread([], speed=0, records=recs) as srv:
        assert srv.server is not None
        deadline = time.monotonic() + 5
        while srv.server.stations["XX_AAA"].released < n and time.monotonic() < deadline:
            time.sleep(0.02)
        a = RawClient(srv.port)
        a.send("STATION AAA XX")
        assert a.line() == "OK"
        a.send("SELECT BHZ")  # no such channel: every packet is skipped
        assert a.line() == "OK"
        a.send("DATA")
        assert a.line() == "OK"
        a.send("END")
        time.sleep(0.05)
        t0 = time.monotonic()
        b = RawClient(srv.port, timeout_s=10)
        b.send("HELLO")
        assert b.line().startswith("SeedLink")
        assert time.monotonic() - t0 < 0.5
        a.close()
        b.close()


@pytest.mark.parametrize("ring_packets", [0, -3])
def test_a_ring_without_room_fails_at_start_up(archive: Path, ring_packets: int) -> None:
    # A ring of no packets would serve nothing (a negative one skipped packets not yet released).
    import argparse

    from streamer.commands import replay_server
    from streamer.replay import ReplayError, ReplayServer

    with pytest.raises(ReplayError, match="ring"):
        ReplayServer([archive], speed=0, ring_packets=ring_packets)
    parser = argparse.ArgumentParser()
    replay_server.add_arguments(parser)
    args = parser.parse_args([str(archive), "--port", "0", "--ring-packets", str(ring_packets)])
    assert replay_server.run(args) == 2


# CAPABILITIES: OK to any capability list, as EarthScope's ringserver answers (it only looks for
# EXTREPLY among the arguments)


@pytest.mark.parametrize(
    ("line", "extended"),
    [
        ("CAPABILITIES", False),
        ("CAPABILITIES SLPROTO:4.0", False),
        ("CAPABILITIES SLPROTO:3.1 CAP", False),
        ("capabilities dialup multistation window-extraction", False),
        ("CAPABILITIES NOTAFLAG", False),
        ("CAPABILITIES EXTREPLY", True),
        ("CAPABILITIES SLPROTO:3.1 EXTREPLY", True),
        ("CAPABILITIES extreply SLPROTO:4.0 CAP", True),
    ],
)
def test_capabilities_are_ok_and_only_extreply_extends_errors(archive: Path, line: str, extended: bool) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send(line)
        assert c.line() == "OK"
        c.send("STATION NOPE XX")
        reply = c.line()
        # with EXTREPLY the message follows a CR; without, a bare ERROR
        assert reply.startswith("ERROR\r") if extended else reply == "ERROR"
        c.close()


def test_capabilities_later_without_extreply_keeps_it(archive: Path) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send("CAPABILITIES EXTREPLY")
        assert c.line() == "OK"
        c.send("CAPABILITIES SLPROTO:4.0")
        assert c.line() == "OK"
        c.send("STATION NOPE XX")
        assert c.line().startswith("ERROR\r")
        c.send("STATION AAA XX")  # the session is still usable
        assert c.line() == "OK"
        c.close()
