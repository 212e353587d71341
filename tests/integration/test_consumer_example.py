"""Runs the consumer example of ``docs/consumer-example.md`` exactly as written against real data."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import redis

from streamer.config import RedisSettings
from streamer.metrics import Metrics
from streamer.picks import PickDetector, Provenance
from streamer.publish import RedisPublisher
from streamer.records import OutputItem
from streamer.schema import StreamKeys
from streamer.stitch import Stitcher
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

DOC = REPO_ROOT / "docs" / "consumer-example.md"
T0 = 176_400_000_000  # 100 Hz sample index, 2025-11-24T16:00:00Z


def _snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the page should hold exactly one Python block"
    return blocks[0]


def test_snippet_is_about_twenty_lines() -> None:
    assert 15 <= len(_snippet().strip().splitlines()) <= 30


def test_consumer_example_runs_against_published_data(
    redis_url: str, redis_client: redis.Redis, redis_key_prefix: str, tmp_path: object
) -> None:
    # A station's denoised stream and picks produced the way the service does it: windows stitched,
    # probability windows stacked, picks detected, everything through the publisher.
    station, n, stride = "NC.AAA.00", 3000, 1000
    rng = np.random.default_rng(0)
    total = 9000
    wave = rng.normal(0, 1, (3, total)).astype(np.float32)
    wave[:, 4000:4100] *= 50  # the P arrival
    i = np.arange(total)
    prob_p = 0.9 * np.exp(-0.5 * ((i - 4000) / 20) ** 2)
    probs = np.stack([prob_p, np.zeros(total), 1 - prob_p]).astype(np.float32)
    wave_st = Stitcher(n, stride, station_id=station, channel_names=("HHE", "HHN", "HHZ"))
    prob_st = Stitcher(n, stride, taper="boxcar", station_id=station)
    det = PickDetector(100.0, 0.3, 0.3)
    items: list[OutputItem] = []
    for s in range(0, total - n + 1, stride):
        items += [OutputItem.of_segment(seg, "unet", "1") for seg in wave_st.add(T0 + s, wave[:, s:s + n], steps=2)]
        for seg in prob_st.add(T0 + s, probs[:, s:s + n], steps=2):
            items += [OutputItem.of_pick(p) for p in det.process(seg, provenance=Provenance("unet", "1", "PhaseNet", "1"))]
    items += [OutputItem.of_segment(seg) for seg in wave_st.flush()]
    pub = RedisPublisher(RedisSettings(url=redis_url, stream_prefix=redis_key_prefix), Metrics())
    pub.publish(items)
    assert pub.flush(5)
    pub.close()
    keys = StreamKeys(redis_key_prefix)
    (pick_entry,) = redis_client.xrange(keys.picks)
    redis_client.xadd(keys.picks, pick_entry[1])  # a repeat delivery the consumer must drop

    env = {**os.environ, "REDIS_URL": redis_url, "STREAM_PREFIX": redis_key_prefix}
    res = subprocess.run([sys.executable, "-c", _snippet()], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1
    status, t_iso, sta, phase, prob, peak = lines[0].split()
    assert status == "final"
    assert (t_iso, sta, phase) == ("2025-11-24T16:00:40.000000Z", station, "P")
    assert float(prob) == pytest.approx(0.9, abs=1e-3)
    assert float(peak.removeprefix("peak=")) == pytest.approx(np.abs(wave[:, 4000:4100]).max(), abs=0.051)
