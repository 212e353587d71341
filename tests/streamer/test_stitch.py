"""Stitcher: exact reconstruction, final-segment bookkeeping, gaps, reordering, smooth joins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.records import Window
from streamer.stitch import Segment, StitchError, Stitcher, make_taper, sample_index, sample_time_ns

N, S = 300, 100  # small windows keep the tests fast; the logic does not depend on size
T0 = 17_640_000_000_000  # an absolute sample index (2025 at 100 Hz), a multiple of S
MODES = ["overlap_add", "centre_crop"]


def _signal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, n)).astype(np.float32)


def _run(stitcher: Stitcher, x: np.ndarray, starts: list[int], model=lambda w: w) -> list[Segment]:
    out: list[Segment] = []
    for s in starts:
        out += stitcher.add(T0 + s, model(x[:, s:s + stitcher.window_samples]))
    return out + stitcher.flush()


def _check_contiguous(segments: list[Segment]) -> None:
    for a, b in zip(segments, segments[1:]):
        assert b.start_sample >= a.end_sample, "samples emitted twice or out of order"


def _concat(segments: list[Segment]) -> np.ndarray:
    return np.concatenate([s.data for s in segments], axis=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_constant_gain_identity_reproduces_input_exactly(mode: str, gain: float) -> None:
    x = _signal(2000)
    segs = _run(Stitcher(N, S, mode), x, list(range(0, 2000 - N + 1, S)), model=lambda w: np.float32(gain) * w)
    _check_contiguous(segs)
    assert segs[0].start_sample == T0 and segs[-1].end_sample == T0 + 2000
    y = _concat(segs)
    np.testing.assert_array_equal(y, np.float32(gain) * x)  # exact, not approximately
    assert all(s.mask.all() for s in segs)


@pytest.mark.parametrize("mode", MODES)
def test_only_final_samples_are_emitted_and_latency_matches_docs(mode: str) -> None:
    st_ = Stitcher(N, S, mode)
    x = _signal(1000)
    expected_hold = S if mode == "overlap_add" else (N - 1 + S) // 2 + 1
    for s in range(0, 1000 - N + 1, S):
        segs = st_.add(T0 + s, x[:, s:s + N])
        assert st_.final_end_sample == T0 + s + expected_hold
        if segs:
            assert segs[-1].end_sample == T0 + s + expected_hold
    assert st_.latency_samples == N - expected_hold
    assert (N - S) // 2 <= Stitcher(N, S, "centre_crop").latency_samples <= (N - S) // 2 + 1


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    skipped=st.sets(st.integers(min_value=0, max_value=17), max_size=8),
    n_stride=st.integers(min_value=1, max_value=3),
)
def test_every_sample_emitted_exactly_once_with_skipped_windows(mode: str, skipped: set[int], n_stride: int) -> None:
    stride = S * n_stride if n_stride < 3 else N  # S == N (no overlap) included
    x = _signal(20 * S + N, seed=1)
    stitcher = Stitcher(N, stride, mode)
    starts = [k * stride for k in range(18) if k * stride + N <= x.shape[1] and k not in skipped]
    segs = _run(stitcher, x, starts)
    _check_contiguous(segs)
    covered = np.zeros(x.shape[1], bool)
    for s in starts:
        covered[s:s + N] = True
    emitted = np.zeros(x.shape[1], int)
    for seg in segs:
        emitted[seg.start_sample - T0:seg.end_sample - T0] += 1
        np.testing.assert_array_equal(seg.data, x[:, seg.start_sample - T0:seg.end_sample - T0])
    np.testing.assert_array_equal(emitted, covered.astype(int))  # once where covered, never elsewhere
    # segments are split exactly where coverage breaks
    runs = 1 + sum(b.start_sample > a.end_sample for a, b in zip(segs, segs[1:]))
    assert runs == int(np.sum(np.diff(np.concatenate([[0], covered.astype(int)])) == 1))


@pytest.mark.parametrize("mode", MODES)
def test_gap_emits_what_it_has_and_restarts_cleanly(mode: str) -> None:
    x = _signal(4000)
    stitcher = Stitcher(N, S, mode)
    before = [s for s in range(0, 1000, S)]
    out: list[Segment] = []
    for s in before:
        out += stitcher.add(T0 + s, x[:, s:s + N])
    # a long gap: the next window starts far later; everything of the first run becomes final
    out += stitcher.add(T0 + 3000, x[:, 3000:3000 + N])
    first_run = [seg for seg in out if seg.start_sample < T0 + 3000]
    assert first_run[-1].end_sample == T0 + before[-1] + N
    np.testing.assert_array_equal(_concat(first_run), x[:, :before[-1] + N])
    second_run = [seg for seg in out if seg.start_sample >= T0 + 3000] + stitcher.flush()
    assert second_run[0].start_sample == T0 + 3000 and second_run[-1].end_sample == T0 + 3000 + N
    np.testing.assert_array_equal(_concat(second_run), x[:, 3000:3000 + N])


@pytest.mark.parametrize("mode", MODES)
def test_out_of_order_within_bound_gives_the_in_order_result(mode: str) -> None:
    x = _signal(3000, seed=3)
    starts = list(range(0, 3000 - N + 1, S))
    rng = np.random.default_rng(7)
    # a permutation where no window is more than 2 strides late
    order = sorted(starts, key=lambda s: s + rng.uniform(0, 2.0) * S)
    smooth = lambda w: (w * np.linspace(0.5, 1.5, N, dtype=np.float32)).astype(np.float32)  # noqa: E731
    ref = _run(Stitcher(N, S, mode), x, starts, model=smooth)
    got = _run(Stitcher(N, S, mode, max_out_of_order=2), x, order, model=smooth)
    np.testing.assert_array_equal(_concat(got), _concat(ref))
    assert [s.start_sample for s in got][0] == T0


def test_late_and_duplicate_windows_are_dropped_and_counted() -> None:
    x = _signal(2000)
    stitcher = Stitcher(N, S, "overlap_add")
    for s in range(0, 1000, S):
        stitcher.add(T0 + s, x[:, s:s + N])
    assert stitcher.add(T0 + 200, x[:, 200:200 + N]) == []
    assert stitcher.late_windows == 1
    held = Stitcher(N, S, max_out_of_order=3)
    held.add(T0, x[:, :N])
    held.add(T0 + 2 * S, x[:, 2 * S:2 * S + N])
    held.add(T0 + 2 * S, x[:, 2 * S:2 * S + N])
    assert held.duplicate_windows == 1


def test_skip_releases_held_output_without_waiting() -> None:
    x = _signal(2000)
    stitcher = Stitcher(N, S, "overlap_add", max_out_of_order=5)
    assert stitcher.add(T0, x[:, :N]) == []  # up to 5 earlier windows may still come
    released: list[Segment] = []
    for k in range(5, 0, -1):
        released += stitcher.skip(T0 - k * S)  # the ingest says they never will
    assert [(seg.start_sample, seg.end_sample) for seg in released] == [(T0, T0 + S)]
    assert stitcher.add(T0 + 2 * S, x[:, 2 * S:2 * S + N]) == []  # waits for window 1
    segs = stitcher.skip(T0 + S)
    assert segs and segs[-1].end_sample == T0 + 3 * S


@pytest.mark.parametrize("mode", MODES)
def test_masked_samples_get_no_weight_and_stay_finite(mode: str) -> None:
    x = _signal(1000)
    mask = np.ones_like(x, dtype=bool)
    mask[1, 350:420] = False  # a gap in one channel of the input
    y = x.copy()
    y[1, 350:420] = np.nan  # garbage that must not leak
    stitcher = Stitcher(N, S, mode)
    segs: list[Segment] = []
    for s in range(0, 1000 - N + 1, S):
        segs += stitcher.add(T0 + s, y[:, s:s + N], mask[:, s:s + N])
    segs += stitcher.flush()
    data = _concat(segs)
    m = np.concatenate([s.mask for s in segs], axis=1)
    assert np.isfinite(data).all()
    np.testing.assert_array_equal(m, mask)
    np.testing.assert_array_equal(data[m], x[m])
    assert (data[~m] == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_grid_phase_change_flushes_and_restarts(mode: str) -> None:
    x = _signal(2000)
    stitcher = Stitcher(N, S, mode)
    first = stitcher.add(T0, x[:, :N])
    segs = stitcher.add(T0 + 1000 + 37, x[:, 1037:1037 + N]) + stitcher.flush()
    old = [seg for seg in segs if seg.start_sample < T0 + 1037]
    new = [seg for seg in segs if seg.start_sample >= T0 + 1037]
    np.testing.assert_array_equal(_concat(first + old), x[:, :N])
    np.testing.assert_array_equal(_concat(new), x[:, 1037:1037 + N])


def test_no_step_at_joins_with_a_smooth_non_identity_model() -> None:
    """A model with a window-dependent, position-dependent gain (a real model never agrees exactly
    between overlapping windows) gives a smooth stitched trace with overlap-add: no jump at the
    window boundaries larger than the signal's own sample-to-sample change."""
    t = np.arange(4000) / 100.0
    x = np.stack([np.sin(2 * np.pi * 0.7 * t + p) for p in (0, 1, 2)]).astype(np.float32)
    rng = np.random.default_rng(5)

    def model(w: np.ndarray) -> np.ndarray:
        gain = 1.0 + 0.3 * rng.uniform(-1, 1)  # each window disagrees with its neighbours
        return (w * gain).astype(np.float32)

    segs = _run(Stitcher(N, S, "overlap_add"), x, list(range(0, 4000 - N + 1, S)), model=model)
    y = _concat(segs)
    d = np.abs(np.diff(y, axis=1))
    natural = np.abs(np.diff(x, axis=1)).max() * 1.3
    assert d.max() < 1.2 * natural
    # the same model with centre crop does jump at joins: the taper is what removes the seams
    rng = np.random.default_rng(5)
    crop = _concat(_run(Stitcher(N, S, "centre_crop"), x, list(range(0, 4000 - N + 1, S)), model=model))
    assert np.abs(np.diff(crop, axis=1)).max() > 2 * natural


def test_add_window_uses_absolute_time_mask_and_channels() -> None:
    rate = 100.0
    x = _signal(N)
    mask = np.ones_like(x, dtype=bool)
    w = Window("NC.ABC.00", sample_time_ns(T0, rate), rate, x, mask, newest_arrival_ns=123, channels=("HHE", "HHN", "HHZ"))
    stitcher = Stitcher(N, S, station_id="NC.ABC.00", sampling_rate_hz=rate)
    segs = stitcher.add_window(w, steps=4) + stitcher.flush()
    assert segs[0].start_ns == w.start_ns and segs[-1].end_ns == w.end_ns
    assert segs[0].channels == ("HHE", "HHN", "HHZ") and segs[0].steps_min == 4 and segs[0].newest_arrival_ns == 123


def test_time_index_conversion_is_exact_for_real_epochs() -> None:
    on_grid = 1_764_000_000_120_000_000  # 2025-11-24, on the 100 Hz grid
    assert sample_time_ns(sample_index(on_grid, 100.0), 100.0) == on_grid
    assert sample_index(on_grid + 3_450_000, 100.0) == on_grid // 10_000_000  # nearest sample
    assert sample_time_ns(176_400_000_012_345, 40.0) == 176_400_000_012_345 * 25_000_000


def test_taper_is_strictly_positive_and_bad_arguments_fail() -> None:
    assert (make_taper(3000) > 0).all()
    with pytest.raises(StitchError):
        Stitcher(100, 200)
    with pytest.raises(StitchError):
        Stitcher(N, S).add(T0, np.zeros((3, N + 1), np.float32))


def test_probability_stitcher_counts_a_sample_where_any_component_is_real() -> None:
    x = _signal(N)
    mask = np.ones_like(x, dtype=bool)
    mask[0, :] = False  # a station without an E component (zero-filled)
    mask[:, 50:60] = False  # a gap on all components
    w = Window("NC.ABC.00", sample_time_ns(T0, 100.0), 100.0, x, mask, newest_arrival_ns=0)
    probs = np.full((3, N), 0.5, np.float32)
    per_channel = Stitcher(N, S)
    any_row = Stitcher(N, S, taper="boxcar", mask_rows="any")
    wave = _concat(per_channel.add_window(w) + per_channel.flush())
    p = any_row.add_window(w, probs) + any_row.flush()
    assert (wave[0] == 0).all()  # the missing component stays masked in waveforms
    pm = np.concatenate([s.mask for s in p], axis=1)
    assert pm[:, :50].all() and not pm[:, 50:60].any() and pm[:, 60:].all()
    assert (_concat(p)[:, pm[0]] == 0.5).all()


def _real_denoiser():  # type: ignore[no-untyped-def]
    """The shipped denoiser when its weights are in the tree, else a seeded random-init U-Net in the
    same Denoiser wrapper (the same normalisation, sampler and output path)."""
    torch = pytest.importorskip("torch")
    from models.denoiser import Denoiser
    from models.errors import WeightsNotFoundError
    from models.unet import UNet1D

    try:
        return Denoiser.load(device="cpu")
    except WeightsNotFoundError:
        torch.manual_seed(0)
        net = UNet1D(base_channels=4, channel_mults=(1, 2), bottleneck_dilations=(1,), time_dim=8).eval()
        return Denoiser(net, n_train_steps=8, device="cpu")


def test_real_model_shows_no_step_at_window_joins() -> None:
    den = _real_denoiser()
    n = den.spec.window_samples
    stride = n // 3
    rate = den.spec.sampling_rate_hz
    total = n + 8 * stride
    rng = np.random.default_rng(11)
    t = np.arange(total) / rate
    x = rng.normal(0, 50, (3, total))
    onset = int(0.45 * total)  # an event in the middle of the run, spanning several joins
    env = np.where(t >= t[onset], np.exp(-(t - t[onset]) / 8.0), 0.0)
    x += 2000 * env * np.sin(2 * np.pi * 3.0 * t + np.arange(3)[:, None])
    x = x.astype(np.float32)
    starts = list(range(0, total - n + 1, stride))
    windows = np.stack([x[:, s:s + n] for s in starts])
    y = den.denoise_windows(windows, steps=2).x0
    out: dict[str, np.ndarray] = {}
    for mode in MODES:
        stitcher = Stitcher(n, stride, mode)
        segs: list[Segment] = []
        for s, w in zip(starts, y):
            segs += stitcher.add(T0 + s, w)
        out[mode] = _concat(segs + stitcher.flush())
    ratio = {}
    for mode, trace in out.items():
        assert trace.shape == x.shape and np.isfinite(trace).all()
        if mode == "overlap_add":  # where a window's weight starts or ends
            joins = np.array([s for s in starts[1:]] + [s + n for s in starts[:-1]])
        else:  # where the output switches from one window to the next
            joins = np.array([s + Stitcher(n, stride, mode).hold_samples for s in starts[:-1]])
        joins = joins[(joins > 1) & (joins < total - 1)]
        d = np.abs(np.diff(trace, axis=1)).max(axis=0)  # step into sample j+1, worst component
        at_joins = d[joins - 1]
        elsewhere = np.delete(d, np.concatenate([joins - 1, joins - 2, joins]))
        ratio[mode] = float(at_joins.max() / np.percentile(elsewhere, 99))
    # a join is no rougher than the trace itself (windows of a real model disagree at their edges;
    # the taper blends them; centre crop switches where both windows are far from their edges)
    assert ratio["overlap_add"] < 1.5, ratio
    assert ratio["centre_crop"] < 3.0, ratio


@pytest.mark.parametrize("mode", MODES)
def test_first_windows_may_arrive_out_of_order_too(mode: str) -> None:
    x = _signal(2000, seed=9)
    starts = list(range(0, 2000 - N + 1, S))
    order = [starts[2], starts[0], starts[1], *starts[3:]]
    ref = _run(Stitcher(N, S, mode), x, starts)
    got = _run(Stitcher(N, S, mode, max_out_of_order=2), x, order)
    np.testing.assert_array_equal(_concat(got), _concat(ref))
    assert got[0].start_sample == T0


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    k_late=st.integers(min_value=0, max_value=4),
    lateness=st.lists(st.integers(min_value=0, max_value=4), min_size=20, max_size=20),
    skipped=st.sets(st.integers(min_value=0, max_value=19), max_size=5),
)
def test_any_arrival_order_within_the_bound_gives_the_in_order_result(
    mode: str, k_late: int, lateness: list[int], skipped: set[int]
) -> None:
    x = _signal(19 * S + N, seed=4)
    present = [k for k in range(20) if k not in skipped]
    # window k arrives at "time" k + lateness, so none is overtaken by one more than K strides newer
    order = sorted(present, key=lambda k: (k + min(lateness[k], k_late), k))
    ref = _run(Stitcher(N, S, mode), x, [k * S for k in present])
    got = _run(Stitcher(N, S, mode, max_out_of_order=k_late), x, [k * S for k in order])
    assert [(s.start_sample, s.end_sample) for s in _merge(got)] == [(s.start_sample, s.end_sample) for s in _merge(ref)]
    np.testing.assert_array_equal(_concat(got), _concat(ref))


def _merge(segments: list[Segment]) -> list[Segment]:
    """Adjacent segments joined (emission chunking differs with reordering; the trace must not)."""
    out: list[Segment] = []
    for s in segments:
        if out and out[-1].end_sample == s.start_sample:
            last = out[-1]
            out[-1] = Segment(last.station_id, last.start_sample, last.sampling_rate_hz,
                              np.concatenate([last.data, s.data], 1), np.concatenate([last.mask, s.mask], 1))
        else:
            out.append(s)
    return out
