"""`coldstream run` as a daemon: SIGTERM drains and exits 0 with the state written; SIGKILL and a restart
replay from the acknowledged state, and the idempotent output IDs leave one continuous stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_helpers import assert_continuous, read_segments, weights_path
from streamer.commands.demo import write_resume_state
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.schema import StreamKeys
from streamer.replay import ReplayServerThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SPEED = 20.0  # the 240 s recording in 12 s


def write_config(tmp_path: Path, redis_url: str, prefix: str, port: int) -> Path:
    weights = weights_path(tmp_path)
    text = f"""
[seedlink]
state_file = "{tmp_path / 'seedlink.state'}"
state_save_interval_s = 0.5
reconnect_min_s = 0.2
reconnect_max_s = 1.0
[[seedlink.servers]]
host = "127.0.0.1"
port = {port}
streams = ["XX_*"]
[redis]
url = "{redis_url}"
stream_prefix = "{prefix}"
[metrics]
enabled = false
[worker]
batch_size = 8
max_wait_ms = 50.0
max_steps = 1
device = "cpu"
torch_threads = 1
[picker]
enabled = false
[service]
drain_timeout_s = 20.0
"""
    if weights is not None:
        text += f'[model]\nweights = "{weights}"\n'
    path = tmp_path / "coldstream.toml"
    path.write_text(text)
    return path


def start_run(cfg: Path, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("COLDSTREAM_SHARED_DIR", None)  # config.load_settings treats it as a setting (unknown key)
    return subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"),
    )


def wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"coldstream run exited ({proc.returncode}): {log_path.read_text()[-3000:] if log_path else ''}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def segment_count(client, prefix: str, stations: list[str]) -> int:
    keys = StreamKeys(prefix)
    return sum(client.xlen(keys.denoised(s)) for s in stations)


@pytest.fixture
def replay_setup(tmp_path, redis_url, redis_key_prefix):
    cat = load_catalogue()
    with ReplayServerThread([recording_path()], speed=SPEED) as replay:
        cfg = write_config(tmp_path, redis_url, redis_key_prefix, replay.port)
        keys = sorted({s.replace(".", "_").rstrip("_") for s in cat["stations"]})
        write_resume_state(tmp_path / "seedlink.state", f"127.0.0.1:{replay.port}", keys, cat["start_ns"])
        yield cat, cfg, replay


def test_sigterm_drains_publishes_writes_state_and_exits_zero(tmp_path, redis_client, redis_key_prefix, replay_setup):
    cat, cfg, _replay = replay_setup
    log_path = tmp_path / "run.log"
    proc = start_run(cfg, log_path)
    try:
        wait_for(lambda: segment_count(redis_client, redis_key_prefix, cat["stations"]) >= 12, 90,
                 "first segments", proc, log_path)
        state_before = json.loads((tmp_path / "seedlink.state").read_text())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log_text = log_path.read_text()
    assert code == 0, log_text[-3000:]
    assert "draining" in log_text and "exit status 0" in log_text
    state = json.loads((tmp_path / "seedlink.state").read_text())
    (stations,) = state["servers"].values()
    assert set(stations) == {s.replace(".", "_").rstrip("_") for s in cat["stations"]}
    assert state["saved_at"] >= state_before["saved_at"]
    start = cat["start_ns"] // 10_000_000
    for station in cat["stations"]:
        segs = read_segments(redis_client, redis_key_prefix, station)
        # published without holes from the start; the state sits no later than the published data
        assert_continuous(segs, start, segs[-1].end_sample)
        acked_end = stations[station.replace(".", "_").rstrip("_")]["end_ns"]
        assert acked_end <= segs[-1].end_ns


def test_sigkill_then_restart_replays_from_acknowledged_state_idempotently(
    tmp_path, redis_client, redis_key_prefix, replay_setup
):
    cat, cfg, _replay = replay_setup
    stations = cat["stations"]
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    proc = start_run(cfg, log1)
    try:
        wait_for(lambda: segment_count(redis_client, redis_key_prefix, stations) >= 30, 90, "segments", proc, log1)
        wait_for(lambda: all(st["seq"] != 0xFFFFFF for st in json.loads((tmp_path / "seedlink.state").read_text())
                             ["servers"].popitem()[1].values()), 30, "acknowledged state saved")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = segment_count(redis_client, redis_key_prefix, stations)
        acked = json.loads((tmp_path / "seedlink.state").read_text())["servers"]
        (acked_stations,) = acked.values()
        # positions acknowledged by the killed run (not the initial time-only resume points)
        assert all(st["seq"] != 0xFFFFFF and st["end_ns"] > cat["start_ns"] for st in acked_stations.values())
        proc = start_run(cfg, log2)
        # the replay finishes releasing after 240 s / SPEED; then everything must be processed
        wait_for(lambda: "resuming 6 stations" in log2.read_text(), 60, "resume", proc, log2)
        time.sleep(240 / SPEED)
        wait_for(lambda: segment_count(redis_client, redis_key_prefix, stations) >= 6 * 21, 60,
                 "the rest of the data", proc, log2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log2.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_at < 6 * 24
    start = cat["start_ns"] // 10_000_000
    for station in stations:
        # replayed segments were refused as duplicates: one continuous stream, no overlaps, no holes
        assert_continuous(read_segments(redis_client, redis_key_prefix, station), start, start + 24_000)
