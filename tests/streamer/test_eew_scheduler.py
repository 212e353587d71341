"""The fast path's trailing windows, cut by the real ingest stage: their right edge and the arrival
time of the onset sample, also for stations whose channels are not at the model's rate."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config import EewSettings
from streamer.eew import FastScheduler, window_details
from streamer.ingest import Ingestor
from streamer.records import NS_PER_S, SampleBlock, Window

T0 = 1_700_000_000 * NS_PER_S
ARRIVAL_DELAY_NS = 700_000_000  # each record reaches the service 0.7 s after its last sample


def _records(rate_hz: float, onset_s: float, total_s: float, record_s: float = 1.0) -> list[list[SampleBlock]]:
    """Three components of one station in records of ``record_s``: noise, then a strong onset on every
    component at ``onset_s`` (so the trigger fires and the window is complete)."""
    rng = np.random.default_rng(7)
    n = round(total_s * rate_hz)
    t = np.arange(n) / rate_hz
    onset = t >= onset_s
    per = round(record_s * rate_hz)
    out = []
    traces = {}
    for comp in "ENZ":
        x = rng.normal(0, 50, n)
        x[onset] += 5000 * np.sin(2 * np.pi * 4 * (t[onset] - onset_s))
        traces[comp] = x.astype(np.int32)
    for i0 in range(0, n, per):
        start_ns = T0 + round(i0 * NS_PER_S / rate_hz)
        end_ns = T0 + round(min(n, i0 + per) * NS_PER_S / rate_hz)
        out.append([SampleBlock(f"XX.STA..HH{comp}", start_ns, rate_hz, traces[comp][i0:i0 + per],
                                end_ns + ARRIVAL_DELAY_NS) for comp in "ENZ"])
    return out


def _trailing_windows(metrics, rate_hz: float, onset_s: float) -> list[Window]:  # type: ignore[no-untyped-def]
    fast = FastScheduler(EewSettings(), 100.0)
    ing = Ingestor(metrics=metrics, fast=fast, now_ns=lambda: T0 + 10**12)
    got: list[Window] = []
    for rec in _records(rate_hz, onset_s, onset_s + 5.0):
        for block in rec:
            ing.add_block(block)
        got.extend(ing.take_fast())
    assert fast.triggers_total >= 1
    return got


@pytest.mark.parametrize("rate_hz", [100.0, 200.0, 40.0])
def test_onset_arrival_of_a_trailing_window_is_the_arrival_of_the_onset_record(metrics, rate_hz: float) -> None:
    onset_s = 40.0
    windows = _trailing_windows(metrics, rate_hz, onset_s)
    assert windows, "an armed station gets trailing windows"
    onset_ns = T0 + round(onset_s * NS_PER_S)
    want = onset_ns + NS_PER_S + ARRIVAL_DELAY_NS  # the onset opens the record [40 s, 41 s)
    for w in windows:
        index = round((onset_ns - w.start_ns) * 100 / NS_PER_S)
        details = window_details(w, index, None, 100.0, T0, "ENZ")
        assert details.onset_arrival_ns == want, (rate_hz, w.start_ns)


def test_a_trailing_window_ends_at_the_newest_sample_every_component_has(metrics) -> None:
    # records of 0.37 s: the newest sample falls on every 10-ms step of the clock, not only whole seconds
    fast = FastScheduler(EewSettings(stride_s=0.1), 100.0)
    ing = Ingestor(metrics=metrics, fast=fast, now_ns=lambda: T0 + 10**12)
    ends: list[tuple[int, int]] = []
    for rec in _records(100.0, 40.0, 45.0, record_s=0.37):
        for block in rec:
            ing.add_block(block)
        for w in ing.take_fast():
            ends.append((w.end_ns, rec[0].end_ns))
    assert len(ends) > 5
    assert all(end == newest for end, newest in ends)
