"""The replay server's reply to CAPABILITIES, over real sockets on loopback: OK to any capability list,
as EarthScope's ringserver answers (it only looks for EXTREPLY among the arguments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seedlink_raw import RawClient
from streamer.replay import ReplayServerThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from obspy import Stream, Trace, UTCDateTime

    d = tmp_path_factory.mktemp("capabilities-archive")
    rng = np.random.default_rng(3)
    data = (np.cumsum(rng.integers(-40, 41, 2000)) + rng.integers(-500, 500, 2000)).astype(np.int32)
    header = {"network": "XX", "station": "AAA", "location": "00", "channel": "HHZ",
              "sampling_rate": 100.0, "starttime": UTCDateTime("2026-01-01T00:00:00")}
    Stream([Trace(data, header=header)]).write(str(d / "XX_AAA.mseed"), format="MSEED", reclen=512,
                                               encoding="STEIM2")
    return d


@pytest.mark.parametrize(
    "line",
    [
        "CAPABILITIES",
        "CAPABILITIES SLPROTO:4.0",
        "CAPABILITIES SLPROTO:3.1 CAP",
        "capabilities dialup multistation window-extraction",
        "CAPABILITIES NOTAFLAG",
    ],
)
def test_capabilities_without_extreply_is_ok_and_errors_stay_plain(archive: Path, line: str) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send(line)
        assert c.line() == "OK"
        c.send("STATION NOPE XX")
        assert c.line() == "ERROR"  # no EXTREPLY asked for: a bare ERROR
        c.close()


@pytest.mark.parametrize(
    "line",
    ["CAPABILITIES EXTREPLY", "CAPABILITIES SLPROTO:3.1 EXTREPLY", "CAPABILITIES extreply SLPROTO:4.0 CAP"],
)
def test_capabilities_with_extreply_among_others_turns_on_extended_errors(archive: Path, line: str) -> None:
    with ReplayServerThread([archive], speed=0) as srv:
        c = RawClient(srv.port)
        c.send(line)
        assert c.line() == "OK"
        c.send("STATION NOPE XX")
        assert c.line().startswith("ERROR\r")  # EXTREPLY: the message follows a CR
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
