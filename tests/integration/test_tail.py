"""``coldstream tail`` against a real Redis fed by the real publisher."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from streamer.commands import tail
from streamer.config import RedisSettings
from streamer.metrics import Metrics
from streamer.picks import Pick, make_pick_id
from streamer.publish import RedisPublisher
from streamer.records import OutputItem
from streamer.stitch import Segment
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

T0 = 176_400_000_000  # 100 Hz sample index, 2025-11-24T16:00:00Z


@pytest.fixture(autouse=True)
def _no_test_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # tail reads its settings from the environment; the test-data location is not a setting
    monkeypatch.delenv("COLDSTREAM_SHARED_DIR", raising=False)


def _pick(station: str, phase: str, k: int) -> Pick:
    t = (T0 + 100 * k) * 10_000_000
    return Pick(make_pick_id(station, phase, t), station, phase, t, 0.91, "denoised", "unet", "1", "PhaseNet/original", "1", 3, t + 4_200_000_000)


def _segment(station: str, end_ns: int) -> Segment:
    n = 500
    start = end_ns // 10_000_000 - n
    return Segment(station, start, 100.0, np.zeros((3, n), np.float32), np.ones((3, n), bool))


def _args(url: str, prefix: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tail.add_arguments(parser)
    return parser.parse_args(["--url", url, "--prefix", prefix, *extra])


def _publish(url: str, prefix: str, items: list[OutputItem]) -> None:
    pub = RedisPublisher(RedisSettings(url=url, stream_prefix=prefix), Metrics())
    pub.publish(items)
    assert pub.flush(5)
    pub.close()


def test_once_prints_stored_picks_and_latency(redis_url: str, redis_client: object, redis_key_prefix: str) -> None:
    now = time.time_ns()
    _publish(redis_url, redis_key_prefix, [
        OutputItem.of_segment(_segment("NC.AAA.00", now - 2_000_000_000)),
        OutputItem.of_segment(_segment("BK.BBB.", now - 600 * 1_000_000_000)),
        *[OutputItem.of_pick(_pick("NC.AAA.00", ph, k)) for k, ph in enumerate("PSPS")],
    ])
    out = io.StringIO()
    assert tail.run(_args(redis_url, redis_key_prefix, "--once", "--last", "3"), out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("pick final#0  2025-11-24T16:00:01.000000Z  NC.AAA.00  S  p=0.91  denoised  steps=3  delay=4.2s")
    assert [ln.split()[4] for ln in lines[:3]] == ["S", "P", "S"]
    lat = lines[3].split()
    assert lat[0] == "latency" and lat[1] == "BK.BBB." and lat[3] == "STALE" and lat[4] == "NC.AAA.00"
    assert 1.5 < float(lat[5].rstrip("s")) < 30
    only = io.StringIO()
    assert tail.run(_args(redis_url, redis_key_prefix, "--once", "--last", "3", "--station", "BK.*"), only) == 0
    (only_line,) = only.getvalue().splitlines()  # no NC picks, no NC latency
    assert only_line.startswith("latency BK.BBB. ") and only_line.endswith("s STALE")


def test_follows_new_picks_live(redis_url: str, redis_client: object, redis_key_prefix: str) -> None:
    _publish(redis_url, redis_key_prefix, [OutputItem.of_pick(_pick("NC.AAA.00", "P", 0))])  # old: not shown
    out = io.StringIO()
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(tail.run(_args(redis_url, redis_key_prefix, "--count", "2", "--interval", "0.2"), out)))
    t.start()
    time.sleep(0.5)
    _publish(redis_url, redis_key_prefix, [OutputItem.of_pick(_pick("NC.AAA.00", "S", 5)), OutputItem.of_pick(_pick("BK.BBB.", "P", 6))])
    t.join(timeout=10)
    assert rc == [0]
    lines = out.getvalue().splitlines()
    picks = [ln for ln in lines if ln.startswith("pick ")]
    assert [(ln.split()[3], ln.split()[4]) for ln in picks] == [("NC.AAA.00", "S"), ("BK.BBB.", "P")]
    assert sum(ln.startswith("latency") for ln in lines) >= 2  # at start and refreshed while waiting


def test_piped_cli_output_is_plain_and_errors_are_clean(redis_url: str, redis_client: object, redis_key_prefix: str) -> None:
    _publish(redis_url, redis_key_prefix, [OutputItem.of_pick(_pick("NC.AAA.00", "P", 1))])
    cmd = [sys.executable, "-m", "streamer.cli", "tail", "--url", redis_url, "--prefix", redis_key_prefix, "--once", "--last", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("pick final#0  2025-11-24T16:00:01.000000Z  NC.AAA.00  P")
    assert "\x1b[" not in res.stdout
    bad = [sys.executable, "-m", "streamer.cli", "tail", "--url", "redis://:pw-secret@127.0.0.1:1/0", "--once"]
    res = subprocess.run(bad, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert res.returncode == 1 and "pw-secret" not in res.stderr and "***@127.0.0.1:1" in res.stderr


def test_latency_falls_back_to_the_denoised_streams(redis_url: str, redis_client: object, redis_key_prefix: str) -> None:
    import redis as redis_lib

    from streamer.schema import StreamKeys

    now = time.time_ns()
    _publish(redis_url, redis_key_prefix, [OutputItem.of_segment(_segment("NC.AAA.00", now - 3_000_000_000))])
    client = redis_lib.Redis.from_url(redis_url)
    client.delete(StreamKeys(redis_key_prefix).latest)  # e.g. a producer that does not keep the hash
    client.close()
    out = io.StringIO()
    assert tail.run(_args(redis_url, redis_key_prefix, "--once"), out) == 0
    lat = out.getvalue().split()
    assert lat[:2] == ["latency", "NC.AAA.00"] and 2.5 < float(lat[2].rstrip("s")) < 30


def test_shows_an_onsets_lifecycle_with_one_id(redis_url: str, redis_client: object, redis_key_prefix: str) -> None:
    from dataclasses import replace

    from streamer.picks import PickDetails

    now = time.time_ns()
    base = _pick("XX.EEW.", "P", 1)
    d = PickDetails(latitude_deg=47.0, longitude_deg=11.0, elevation_m=500.0, polarity="U", snr_db=25.0,
                    onset_arrival_ns=now - 900_000_000, inference_ns=now - 300_000_000)
    amps = replace(d, amplitudes=((1, 1e-6, 2e-5, 3e-4, 0.35),))
    _publish(redis_url, redis_key_prefix, [
        OutputItem.of_pick(replace(base, status="provisional", details=d)),
        OutputItem.of_pick(replace(base, status="provisional", details=amps)),
        OutputItem.of_pick(replace(base, status="final", pick_id="other-id", details=amps)),
    ])
    out = io.StringIO()
    assert tail.run(_args(redis_url, redis_key_prefix, "--once", "--last", "10"), out) == 0
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("pick ")]
    assert [ln.split()[1] for ln in lines] == ["provisional#0", "provisional#1", "final#2"]
    assert len({ln.split("id=")[1] for ln in lines}) == 1  # one identity from first report to final
    assert "latency=" in lines[0] and "(inference +0.6s)" in lines[0]
    assert "polarity=U" in lines[0] and "snr=25dB" in lines[0]
    assert "Pd1s=1.00e-06m" in lines[1] and "tc=0.35s" in lines[1]
