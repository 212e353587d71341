"""A real SIGKILL of a client process mid-stream, then a restart on the same state file: every
record reaches the downstream file, with duplicates only (never a gap)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_replay_server import write_archive

from streamer.replay import ReplayServerThread
from streamer.seedlink_state import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The "service": each packet is appended to a file (published), then acknowledged; the state is
# saved every 50 ms. Nothing is saved on exit: it gets SIGKILL.
CLIENT = r"""
import asyncio, sys
from pathlib import Path
from streamer.config import SeedLinkServer, SeedLinkSettings
from streamer.metrics import Metrics
from streamer.seedlink import SeedLinkSource, parse_packet_header
from streamer.seedlink_state import StateTracker, save_state_periodically

port, state_file, out_file = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
settings = SeedLinkSettings(
    servers=[SeedLinkServer(host="127.0.0.1", port=port, streams=["*_*"])],
    state_file=state_file, state_save_interval_s=0.05, reconnect_min_s=0.05, reconnect_max_s=0.2,
)
metrics = Metrics()
tracker = StateTracker.from_settings(settings, metrics)
out = open(out_file, "ab", buffering=0)

def on_packet(payload, ref, arrival_ns):
    out.write(payload)  # published ...
    tracker.acknowledge(ref.station_key, parse_packet_header(payload).end_ns)  # ... then acknowledged

async def main():
    stop = asyncio.Event()
    source = SeedLinkSource(settings.servers[0], settings, on_packet, tracker, metrics)
    await asyncio.gather(source.run(stop), save_state_periodically(tracker, stop, tick_s=0.02))

asyncio.run(main())
"""


def records_in(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [data[i:i + 512] for i in range(0, len(data) - len(data) % 512, 512)]


def wait_until(cond, timeout_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_sigkill_mid_stream_then_restart_loses_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    write_archive(archive, duration_s=60.0, seed=11)
    expected = set()
    for f in archive.glob("*.mseed"):
        expected.update(records_in(f))
    state_file, out1, out2 = tmp_path / "sl.state", tmp_path / "out1", tmp_path / "out2"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # 60 s of data at 15x: about 4 s of streaming, so the kill lands mid-stream.
    with ReplayServerThread([archive], speed=15.0) as srv:
        p1 = subprocess.Popen([sys.executable, "-c", CLIENT, str(srv.port), str(state_file), str(out1)], env=env)
        try:
            wait_until(lambda: len(records_in(out1)) >= len(expected) // 3 and state_file.exists(), 60)
        finally:
            p1.send_signal(signal.SIGKILL)
            p1.wait()
        got1 = records_in(out1)
        assert len(set(got1)) < len(expected)  # killed mid-stream
        saved = StateStore(state_file).load()
        assert saved, "state was saved while running"

        p2 = subprocess.Popen([sys.executable, "-c", CLIENT, str(srv.port), str(state_file), str(out2)], env=env)
        try:
            wait_until(lambda: set(got1) | set(records_in(out2)) >= expected, 60)
        finally:
            p2.send_signal(signal.SIGKILL)
            p2.wait()
    got2 = records_in(out2)
    assert set(got1) | set(got2) == expected  # no gap
    assert len(got1) == len(set(got1)) and len(got2) == len(set(got2))  # no repeats within a run
    # The restart resumed from the saved state (not from the start of the ring): the second run
    # repeated at most what was published after the last save.
    assert len(set(got1) & set(got2)) < len(got1)
