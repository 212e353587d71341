"""Final-path picks: boundaries, holes, location codes, sources, hold-back."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config import load_settings
from streamer.output import OutputStage
from streamer.picks import Pick, PickDetector, make_pick_id
from streamer.records import NS_PER_S
from streamer.stitch import Segment, sample_time_ns

from service_helpers import N, T0, Sink, result, window

RATE = 100.0
I0 = 17_640_000_000_000  # absolute sample index on the 100 Hz grid


def _bump(n: int, centre: int, height: float, half: int = 50) -> np.ndarray:
    x = np.zeros(n)
    x[centre - half : centre + half + 1] = np.hanning(2 * half + 1) * height
    return x


def _seg(station: str, p: np.ndarray, s: np.ndarray, start: int) -> Segment:
    x = np.stack([p, s, 1 - p - s]).astype(np.float32)
    return Segment(station, I0 + start, RATE, x, np.ones_like(x, bool), steps_min=2, steps_max=2)


def _times(picks: list[Pick]) -> list[tuple[str, str, str, int]]:
    return [(q.station_id, q.source, q.phase, q.time_ns) for q in picks]


@pytest.mark.timeout(5)
def test_location_codes_keep_their_own_traces_and_flushes() -> None:
    """NET.STA.00 and NET.STA.10 interleaved: no context, pick or flush crosses between them."""
    n = 3000
    det = PickDetector(RATE, 0.3, 0.3)
    a_p, zero = _bump(n, 1500, 0.9), np.zeros(n)
    b_p = _bump(n, 1560, 0.95)  # higher, 60 samples later: would hide A's pick if traces mixed
    picks: list[Pick] = []
    for lo in range(0, n, 700):
        hi = min(n, lo + 700)
        picks += det.process(_seg("NET.STA.00", a_p[lo:hi], zero[lo:hi], lo), now_ns=1)
        picks += det.process(_seg("NET.STA.10", b_p[lo:hi], zero[lo:hi], lo), now_ns=1)
    picks += det.flush(station_id="NET.STA.00", now_ns=1)
    assert det.judged_until_ns("NET.STA.10") is not None and det.judged_until_ns("NET.STA.00") is None
    picks += det.flush(now_ns=1)
    assert sorted(_times(picks)) == [
        ("NET.STA.00", "denoised", "P", sample_time_ns(I0 + 1500, RATE)),
        ("NET.STA.10", "denoised", "P", sample_time_ns(I0 + 1560, RATE)),
    ]


@pytest.mark.timeout(5)
def test_raw_and_denoised_traces_are_independent_and_both_pick() -> None:
    n = 3000
    det = PickDetector(RATE, 0.3, 0.3)
    den, raw, zero = _bump(n, 1200, 0.8), _bump(n, 1230, 0.9), np.zeros(n)
    picks: list[Pick] = []
    for lo in range(0, n, 500):
        hi = lo + 500
        picks += det.process(_seg("NC.A.00", den[lo:hi], zero[lo:hi], lo), source="denoised", now_ns=1)
        picks += det.process(_seg("NC.A.00", raw[lo:hi], zero[lo:hi], lo), source="raw", now_ns=1)
    picks += det.flush(now_ns=1)
    got = {(q.source, q.time_ns): q for q in picks}
    assert sorted(got) == [("denoised", sample_time_ns(I0 + 1200, RATE)), ("raw", sample_time_ns(I0 + 1230, RATE))]
    r = got[("raw", sample_time_ns(I0 + 1230, RATE))]
    assert r.pick_id == make_pick_id("NC.A.00", "P", r.time_ns, "raw") and r.steps == 0


@pytest.mark.timeout(5)
@pytest.mark.parametrize("chunk", [1, 7, 99, 100, 101, 250])
def test_plateau_and_close_peaks_give_the_same_picks_in_any_chunking(chunk: int) -> None:
    """A plateau (first sample wins) and a second peak d + 1 samples after a first one."""
    n = 1200
    p = np.zeros(n)
    p[300:340] = 0.7  # plateau: the pick is at 300
    p[600] = 0.5
    p[701] = 0.6  # d + 1 after 600, higher: 600 keeps its pick (only d after it counted)
    s = np.zeros(n)
    det = PickDetector(RATE, 0.3, 0.3)
    picks: list[Pick] = []
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        picks += det.process(_seg("NC.A.", p[lo:hi], s[lo:hi], lo), now_ns=1)
    picks += det.flush(now_ns=1)
    assert [q.time_ns for q in picks] == [sample_time_ns(I0 + i, RATE) for i in (300, 600, 701)]


@pytest.mark.timeout(5)
def test_hold_back_never_releases_a_pick_a_later_sample_within_d_beats() -> None:
    """Sample by sample: a candidate is not emitted until its d right-hand samples are in."""
    n = 800
    p = np.zeros(n)
    p[200] = 0.6
    p[299] = 0.61  # d - 1 after 200: 200 is not a pick, 299 is
    s = np.zeros(n)
    det = PickDetector(RATE, 0.3, 0.3)
    emitted_at: dict[int, int] = {}
    for i in range(n):
        for q in det.process(_seg("NC.A.", p[i : i + 1], s[i : i + 1], i), now_ns=1):
            emitted_at[q.time_ns] = i
    assert list(emitted_at) == [sample_time_ns(I0 + 299, RATE)]
    assert emitted_at[sample_time_ns(I0 + 299, RATE)] == 299 + det.distance_samples


@pytest.mark.timeout(5)
def test_replayed_overlap_after_a_restart_gives_the_onset_once() -> None:
    """The next run starts before the end of the previous one (a flushed tail then the same data)."""
    n = 3000
    p, s = _bump(n, 1500, 0.8), np.zeros(n)
    det = PickDetector(RATE, 0.3, 0.3)
    picks = det.process(_seg("NC.A.", p[:2000], s[:2000], 0), now_ns=1)
    picks += det.process(_seg("NC.A.", p[1000:], s[1000:], 1000), now_ns=1) + det.flush(now_ns=1)
    assert [q.time_ns for q in picks] == [sample_time_ns(I0 + 1500, RATE)]


@pytest.mark.timeout(5)
@pytest.mark.parametrize("rate", [40.0, 200.0])
def test_pick_times_lie_on_the_sample_grid_at_other_rates(rate: float) -> None:
    n = 4 * int(rate)
    p, s = _bump(n, n // 2, 0.8, half=int(rate) // 4), np.zeros(n)
    det = PickDetector(rate, 0.3, 0.3)
    x = np.stack([p, s, 1 - p]).astype(np.float32)
    start = 1_764_000_000 * int(rate) + 1
    picks = det.process(Segment("NC.A.", start, rate, x, np.ones_like(x, bool)), now_ns=1) + det.flush(now_ns=1)
    assert [q.time_ns for q in picks] == [sample_time_ns(start + n // 2, rate)]


# ------------------------------------------------------------------------- fed by the output stage
def p_peak_at_40_s(probs: np.ndarray) -> None:
    """A P peak 40 s after T0 in every window (10 s stride) that covers it; P zero elsewhere."""
    probs[:, 0] = 0.0
    for i in range(len(probs)):
        idx = 4000 - i * 1000
        if 0 <= idx < N:
            probs[i, 0, idx - 50 : idx + 51] = np.hanning(101) * 0.9


@pytest.mark.timeout(5)
def test_a_missing_horizontal_does_not_mask_the_p_probability(metrics) -> None:  # type: ignore[no-untyped-def]
    """A station whose E component is missing (zero-filled, mask False): PhaseNet's probabilities
    come from all components together, so the P peak must still be picked."""
    settings = load_settings(environ={})
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    ws = [window(k) for k in range(4)]
    for w in ws:
        w.mask[0] = False
        w.data[0] = 0.0
    ws = [type(w)(w.station_id, w.start_ns, w.sampling_rate_hz, w.data, w.mask, w.newest_arrival_ns,
                  ("", "HHN", "HHZ")) for w in ws]
    res = result(ws)
    assert res.probs is not None
    p_peak_at_40_s(res.probs)
    out.handle(res)
    out.flush_all()
    got = [i.pick for i in sink.items if i.kind == "pick"]
    assert [(p.phase, p.time_ns) for p in got] == [("P", T0 + 40 * NS_PER_S)]


@pytest.mark.timeout(5)
def test_nan_probabilities_of_one_window_neither_add_nor_hide_a_pick(metrics) -> None:  # type: ignore[no-untyped-def]
    """A window whose picker output holds NaN beside a peak: the other windows stack there, and the
    peak is picked once at its sample."""
    settings = load_settings(environ={})
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    ws = [window(k) for k in range(4)]
    res = result(ws)
    assert res.probs is not None
    p_peak_at_40_s(res.probs)
    res.probs[2, 0, 2000 + 30 : 2000 + 40] = np.nan  # right after the peak, in one window only
    out.handle(res)
    out.flush_all()
    got = [i.pick for i in sink.items if i.kind == "pick"]
    assert [(p.phase, p.time_ns) for p in got] == [("P", T0 + 40 * NS_PER_S)]
    assert np.isfinite(got[0].probability) and got[0].probability == pytest.approx(0.9, abs=1e-6)
