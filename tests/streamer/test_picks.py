"""PickDetector on stacked probability traces: one pick per peak whatever the chunking, stable ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.picks import Pick, PickDetector, Provenance, format_time_iso, make_pick_id
from streamer.stitch import Segment, Stitcher, sample_time_ns

RATE = 100.0
T0 = 17_640_000_000_000  # absolute sample index on the 100 Hz grid
STATION = "NC.ABC.00"
PROV = Provenance("coldstream-unet", "1.0", "PhaseNet/original", "1")


def _gauss(n: int, centre: float, height: float, width: float = 20.0) -> np.ndarray:
    i = np.arange(n)
    return height * np.exp(-0.5 * ((i - centre) / width) ** 2)


def _trace(n: int = 6000) -> np.ndarray:
    """(3, n) P, S, noise: P peaks at 1000 (0.8) and 4000 (0.25, below 0.3), S at 2500 (0.6)."""
    p = _gauss(n, 1000, 0.8) + _gauss(n, 4000, 0.25)
    s = _gauss(n, 2500.4, 0.6, 40)
    return np.stack([p, s, 1 - p - s]).astype(np.float32)


def _segment(x: np.ndarray, start: int, mask: np.ndarray | None = None, steps: int = 4) -> Segment:
    return Segment(
        STATION, T0 + start, RATE, x, np.ones_like(x, bool) if mask is None else mask, steps_min=steps, steps_max=steps
    )


def _detect(x: np.ndarray, cuts: list[int], detector: PickDetector | None = None) -> list[Pick]:
    det = detector or PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    bounds = [0, *sorted(set(cuts)), x.shape[1]]
    picks: list[Pick] = []
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            picks += det.process(_segment(x[:, a:b], a), provenance=PROV, now_ns=1)
    return picks + det.flush(provenance=PROV, now_ns=1)


def _summary(picks: list[Pick]) -> list[tuple[str, str, int, float]]:
    return [(p.pick_id, p.phase, p.time_ns, round(p.probability, 6)) for p in picks]


def test_one_pick_per_peak_with_thresholds_per_phase() -> None:
    picks = _detect(_trace(), [])
    assert [(p.phase, p.time_ns) for p in picks] == [
        ("P", sample_time_ns(T0 + 1000, RATE)),
        ("S", sample_time_ns(T0 + 2500, RATE)),
    ]
    p = picks[0]
    assert p.probability == pytest.approx(0.8, abs=1e-6) and p.source == "denoised" and p.steps == 4
    assert (p.denoiser, p.picker, p.picker_version) == ("coldstream-unet", "PhaseNet/original", "1")
    # the small P peak appears once the P threshold is below it; S threshold alone hides the S pick
    low_p = _detect(_trace(), [], PickDetector(RATE, 0.2, 0.7))
    assert [(q.phase, q.time_ns) for q in low_p] == [
        ("P", sample_time_ns(T0 + 1000, RATE)),
        ("P", sample_time_ns(T0 + 4000, RATE)),
    ]


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=5999), max_size=12))
def test_picks_do_not_depend_on_chunking(cuts: list[int]) -> None:
    assert _summary(_detect(_trace(), cuts)) == _summary(_detect(_trace(), []))


def test_stacked_windows_in_any_order_give_the_same_single_pick() -> None:
    """Probability windows of a peak, stitched (avg stacking) in order and out of order."""
    n, stride = 600, 200
    full = _trace(6000)
    rng = np.random.default_rng(3)
    results = []
    for shuffle in (False, True):
        stitcher = Stitcher(n, stride, "overlap_add", taper="boxcar", max_out_of_order=3, station_id=STATION)
        det = PickDetector(RATE, 0.3, 0.3)
        starts = list(range(0, 6000 - n + 1, stride))
        if shuffle:
            starts = sorted(starts, key=lambda s: s + rng.uniform(0, 3) * stride)
        picks: list[Pick] = []
        for s in starts:
            # each window's picker output differs a little at its edges, as real ones do
            w = full[:, s:s + n] * np.float32(1 + 0.01 * (s // stride % 3))
            for seg in stitcher.add(T0 + s, w):
                picks += det.process(seg, provenance=PROV, now_ns=1)
        for seg in stitcher.flush():
            picks += det.process(seg, provenance=PROV, now_ns=1)
        picks += det.flush(provenance=PROV, now_ns=1)
        results.append(_summary(picks))
    assert results[0] == results[1]
    assert [r[1] for r in results[0]] == ["P", "S"]


def test_same_data_twice_gives_the_same_pick_ids() -> None:
    a = _detect(_trace(), [1500, 3000])
    b = _detect(_trace(), [777])
    assert [p.pick_id for p in a] == [p.pick_id for p in b]
    assert a[0].pick_id == make_pick_id(STATION, "P", a[0].time_ns, "denoised")
    assert len(a[0].pick_id) == 16 and int(a[0].pick_id, 16) >= 0
    assert make_pick_id(STATION, "P", a[0].time_ns, "raw") != a[0].pick_id


def test_peak_at_the_final_edge_waits_for_more_data() -> None:
    det = PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    x = _trace()
    assert det.process(_segment(x[:, :1050], 0), now_ns=1) == []  # peak at 1000, only 50 samples after it
    picks = det.process(_segment(x[:, 1050:1200], 1050), now_ns=1)
    assert [p.time_ns for p in picks] == [sample_time_ns(T0 + 1000, RATE)]


def test_masked_samples_give_no_picks_and_holes_end_the_run() -> None:
    x = _trace()
    mask = np.ones_like(x, bool)
    mask[0, 900:1100] = False  # the P peak is in a gap
    det = PickDetector(RATE, 0.3, 0.3)
    picks = det.process(_segment(x, 0, mask), now_ns=1) + det.flush(now_ns=1)
    assert [p.phase for p in picks] == ["S"]
    # a hole 20 samples after the peak: a maximum the run's edge shaped (no second of data after it)
    det = PickDetector(RATE, 0.3, 0.3)
    first = det.process(_segment(x[:, :1020], 0), now_ns=1)
    after_hole = det.process(_segment(x[:, 3000:3500], 3000), now_ns=1)
    assert first == [] and after_hole == [] and det.edge_suppressed == 1
    # with a second of data after it, the same peak is a pick
    det = PickDetector(RATE, 0.3, 0.3)
    picks = det.process(_segment(x[:, :1101], 0), now_ns=1) + det.process(_segment(x[:, 3000:3500], 3000), now_ns=1)
    assert [p.time_ns for p in picks] == [sample_time_ns(T0 + 1000, RATE)]


def test_no_pick_at_the_first_samples_of_a_run_or_the_last_of_a_drained_tail() -> None:
    """A new run after a restart or an outage starts with probabilities PhaseNet computed at a window
    edge; a tail flushed at shutdown ends the same way: neither may become a pick."""
    x = np.zeros((3, 2000))
    x[0, :40] = np.linspace(0.6, 0.2, 40)  # decreasing from the run's first sample
    x[1, -30:] = np.linspace(0.2, 0.7, 30)  # rising to the last sample of the tail
    det = PickDetector(RATE, 0.3, 0.3)
    picks = det.process(_segment(x, 0), now_ns=1) + det.flush(now_ns=1)
    assert picks == [] and det.edge_suppressed == 2


def test_history_suppresses_a_repeat_of_the_same_pick() -> None:
    x = _trace()
    det = PickDetector(RATE, 0.3, 0.3)
    first = det.process(_segment(x[:, :1500], 0), now_ns=1)
    # the same stretch again after a restart of the stream (a hole then the same data)
    again = det.process(_segment(x[:, :1500], 0), now_ns=1) + det.flush(now_ns=1)
    assert len(first) == 1 and again == [] and det.suppressed == 1


def test_raw_source_carries_no_denoiser_and_time_iso_is_utc() -> None:
    det = PickDetector(RATE, 0.3, 0.3)
    picks = det.process(_segment(_trace(), 0), source="raw", provenance=PROV, now_ns=1) + det.flush(now_ns=1)
    assert picks[0].source == "raw" and picks[0].denoiser == "" and picks[0].steps == 0
    assert format_time_iso(1_764_000_000_123_456_789) == "2025-11-24T16:00:00.123456Z"
    with pytest.raises(ValueError):
        PickDetector(RATE, 0.0, 0.3)


def test_real_phasenet_on_a_labelled_event_picks_once_at_the_label(shared_dir, seisbench_cache) -> None:  # type: ignore[no-untyped-def]
    """PhaseNet windows on the absolute grid, stacked and picked as the service does: one P and one
    S pick near the analyst labels, identical whatever order the windows finish in."""
    from models.picker import Picker

    z = np.load(shared_dir / "data" / "phasenet-ncedc" / "waveform_train" / "BG_ACR_2012082505145960.npz")
    x = z["data"].T.astype(np.float32)  # (3, 9001) ENZ counts
    itp, its = int(z["itp"]), int(z["its"])
    picker = Picker("phasenet", "original", cache_root=seisbench_cache)
    n, stride = 3000, 1000
    starts = list(range(0, x.shape[1] - n + 1, stride))
    probs = picker.predict(np.stack([x[:, s:s + n] for s in starts]))
    prov = Provenance("", "", picker.name, picker.version)
    runs = []
    for order in (starts, starts[::-1]):
        stitcher = Stitcher(n, stride, taper="boxcar", mask_rows="any", max_out_of_order=len(starts), station_id="BG.ACR.")
        det = PickDetector(RATE, 0.3, 0.3)
        picks: list[Pick] = []
        for s in order:
            for seg in stitcher.add(T0 + s, probs[starts.index(s)]):
                picks += det.process(seg, source="raw", provenance=prov, now_ns=1)
        for seg in stitcher.flush():
            picks += det.process(seg, source="raw", provenance=prov, now_ns=1)
        runs.append(picks + det.flush(provenance=prov, now_ns=1))
    assert _summary(runs[0]) == _summary(runs[1])
    by_phase = {p.phase: p for p in runs[0]}
    assert sorted(p.phase for p in runs[0]) == ["P", "S"]
    assert abs(by_phase["P"].time_ns - sample_time_ns(T0 + itp, RATE)) <= 20 * 10_000_000  # 0.2 s
    assert abs(by_phase["S"].time_ns - sample_time_ns(T0 + its, RATE)) <= 50 * 10_000_000  # 0.5 s
    assert by_phase["P"].picker == "PhaseNet/original" and by_phase["P"].probability > 0.5
