"""Grid windows: alignment, identical windows for any arrival order (within the lag), the gap
policy, missing components, resampling and the emission rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spec import DEFAULT_SPEC
from streamer.buffers import StationBuffer
from streamer.config import BufferSettings, ConfigError, WindowSettings
from streamer.records import NS_PER_S, SampleBlock, Window
from streamer.windows import Skipped, Windower, longest_run

T0_NS = 1_704_067_203_000_000_000  # 2024-01-01T00:00:03Z: not on the 10 s grid
NOW = T0_NS + 10**6 * NS_PER_S
ORDER = DEFAULT_SPEC.component_order


def wave(comp: str, t_ns: np.ndarray) -> np.ndarray:
    """A different deterministic signal per component, a function of absolute time."""
    t = (t_ns - T0_NS) / NS_PER_S
    k = ORDER.index(comp) + 1
    return (1000 * np.sin(2 * np.pi * 0.7 * k * t) + 50 * k).astype(np.float32)


def blocks_for(comp: str, t_start_ns: int, duration_s: float, sizes: list[int] | None = None, rate: float = 100.0, cha: str = "HH") -> list[SampleBlock]:
    n_total = int(round(duration_s * rate))
    sizes = sizes or [500] * (n_total // 500 + 1)
    out, pos = [], 0
    period_ns = NS_PER_S / rate
    for n in sizes:
        n = min(n, n_total - pos)
        if n <= 0:
            break
        start = t_start_ns + round(pos * period_ns)
        t = start + np.round(np.arange(n) * period_ns).astype(np.int64)
        out.append(SampleBlock(f"XX.STA.00.{cha}{comp}", start, rate, wave(comp, t), arrival_ns=start + round(n * period_ns) + 2 * NS_PER_S))
        pos += n
    return out


def interleave(*streams: list[SampleBlock]) -> list[SampleBlock]:
    allb = [b for s in streams for b in s]
    return sorted(allb, key=lambda b: (b.end_ns, b.seed_id))


def run(blocks: list[SampleBlock], buffer: BufferSettings | None = None, windows: WindowSettings | None = None, flush: bool = False) -> tuple[list[Window], list[Skipped]]:
    bs = buffer or BufferSettings()
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, bs)
    win = Windower(DEFAULT_SPEC, windows or WindowSettings(), bs)
    emitted: list[Window] = []
    skipped: list[Skipped] = []
    for b in blocks:
        if sb.insert(b, NOW).rejected is None:
            batch = win.collect(sb)
            emitted += batch.windows
            skipped += batch.skipped
    if flush:
        batch = win.collect(sb, flush=True)
        emitted += batch.windows
        skipped += batch.skipped
    return emitted, skipped


def three_comp(duration_s: float, t0: int = T0_NS, **kw: object) -> list[SampleBlock]:
    return interleave(*(blocks_for(c, t0, duration_s, **kw) for c in "ENZ"))  # type: ignore[arg-type]


def test_windows_sit_on_the_absolute_grid_and_hold_the_data() -> None:
    emitted, skipped = run(three_comp(95.0))
    assert skipped == []
    starts = [w.start_ns for w in emitted]
    stride = 10 * NS_PER_S
    assert all(s % stride == 0 for s in starts)
    assert starts[0] == T0_NS - 3 * NS_PER_S + stride  # first grid start after the first sample
    assert np.all(np.diff(starts) == stride)
    assert starts[-1] + 30 * NS_PER_S <= T0_NS + 95 * NS_PER_S  # only complete windows so far
    for w in emitted:
        assert w.data.shape == (3, 3000) and w.data.dtype == np.float32 and w.mask.all()
        t = w.start_ns + np.arange(3000, dtype=np.int64) * 10_000_000
        for i, comp in enumerate(ORDER):
            np.testing.assert_array_equal(w.data[i], wave(comp, t))
        assert w.channels == tuple("HH" + c for c in ORDER)
        assert w.window_id == f"XX.STA.00@{w.start_ns}"
        # newest arrival: the latest block that contributed (record end + 2 s latency)
        assert w.end_ns + 2 * NS_PER_S <= w.newest_arrival_ns <= w.end_ns + 7 * NS_PER_S


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(150, 250), min_size=40, max_size=40),
    swaps=st.lists(st.integers(0, 10_000), max_size=40),
    drops=st.sets(st.integers(0, 119), max_size=4),
)
def test_same_windows_for_any_arrival_order_within_the_lag(sizes: list[int], swaps: list[int], drops: set[int]) -> None:
    blocks = interleave(*(blocks_for(c, T0_NS, 60.0, sizes=sizes) for c in "ENZ"))
    blocks = [b for i, b in enumerate(blocks) if i not in drops]  # holes: decided by the lag rule
    shuffled = list(blocks)
    for s in swaps:  # local shuffles: a block moves at most a few places (well within the lag)
        i = s % (len(shuffled) - 3)
        j = i + 1 + (s // 7) % 3
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    a, sa = run(blocks, flush=True)
    b, sb_ = run(shuffled, flush=True)
    assert [w.window_id for w in a] == [w.window_id for w in b]
    assert sa == sb_
    assert len(a) + len(sa) >= 2
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data, y.data)
        np.testing.assert_array_equal(x.mask, y.mask)
        assert x.newest_arrival_ns == y.newest_arrival_ns


def test_a_replay_gives_the_same_windows() -> None:
    a, _ = run(three_comp(70.0))
    b, _ = run(three_comp(70.0))
    assert [w.window_id for w in a] == [w.window_id for w in b]
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a, b))


def test_an_earlier_block_arriving_late_moves_the_first_window_back() -> None:
    blocks = three_comp(60.0)
    first = [b for b in blocks if b.start_ns == T0_NS]
    rest = [b for b in blocks if b.start_ns != T0_NS]
    a, _ = run(three_comp(60.0))
    b, _ = run(rest[:3] + first + rest[3:])
    assert [w.window_id for w in a] == [w.window_id for w in b]


def test_short_gap_is_zero_filled_and_masked() -> None:
    # Z misses 0.5 s at T0 + 20 s
    z = blocks_for("Z", T0_NS, 20.0) + blocks_for("Z", T0_NS + 20_500_000_000, 40.0)
    emitted, skipped = run(interleave(blocks_for("E", T0_NS, 60.5), blocks_for("N", T0_NS, 60.5), z))
    assert skipped == []
    w = next(w for w in emitted if w.start_ns == T0_NS + 7 * NS_PER_S)  # window [10 s, 40 s)
    zi = ORDER.index("Z")
    gap = slice(1300, 1350)  # T0 + 20 s .. + 20.5 s is 13 s .. 13.5 s into the window
    assert not w.mask[zi, gap].any() and (w.data[zi, gap] == 0).all()
    assert w.mask[zi].sum() == 3000 - 50
    assert w.mask[[ORDER.index("E"), ORDER.index("N")]].all()


def test_long_gap_splits_the_stream() -> None:
    # all components miss 3 s (> max_zero_fill_gap_s = 1 s) at T0 + 37 s .. T0 + 40 s
    streams = [blocks_for(c, T0_NS, 37.0) + blocks_for(c, T0_NS + 40 * NS_PER_S, 60.0) for c in "ENZ"]
    emitted, skipped = run(interleave(*streams))
    gap_lo, gap_hi = T0_NS + 37 * NS_PER_S, T0_NS + 40 * NS_PER_S
    overlapping = {s.start_ns for s in skipped}
    assert {s.reason for s in skipped} == {"gap"}
    for w in emitted:
        assert w.end_ns <= gap_lo or w.start_ns >= gap_hi
        assert w.mask.all()
    # every grid window overlapping the gap is skipped, exactly those
    expected = {T0_NS + k * NS_PER_S for k in (17, 27, 37)}  # grid starts 20, 30, 40 s (rel. T0 - 3 s)
    assert overlapping == expected
    assert len(emitted) + len(skipped) == len({w.start_ns for w in emitted} | overlapping)


def test_max_zero_fill_gap_is_inclusive() -> None:
    z = blocks_for("Z", T0_NS, 20.0) + blocks_for("Z", T0_NS + 21 * NS_PER_S, 40.0)  # exactly 1 s
    emitted, skipped = run(interleave(blocks_for("E", T0_NS, 61.0), blocks_for("N", T0_NS, 61.0), z))
    assert skipped == [] and len(emitted) == 3


def test_low_valid_fraction_is_skipped() -> None:
    # a 0.5 s gap every second: each gap is short, but only half the window is valid
    sizes_ok = blocks_for("Z", T0_NS, 61.0, sizes=[50] * 122)
    z = [b for k, b in enumerate(sizes_ok) if k % 2 == 0]
    streams = interleave(blocks_for("E", T0_NS, 61.0), blocks_for("N", T0_NS, 61.0), z)
    emitted, skipped = run(streams, windows=WindowSettings(min_valid_fraction=0.9))
    assert emitted == [] and skipped and {s.reason for s in skipped} == {"low_valid"}
    emitted, skipped = run(streams, windows=WindowSettings(min_valid_fraction=0.5))
    assert skipped == [] and emitted


@pytest.mark.parametrize("policy", ["zero_fill", "skip"])
def test_single_component_station(policy: str) -> None:
    bs = BufferSettings(single_component=policy)  # type: ignore[arg-type]
    emitted, skipped = run(blocks_for("Z", T0_NS, 61.0), buffer=bs)
    if policy == "skip":
        assert emitted == [] and {s.reason for s in skipped} == {"missing_component"} and len(skipped) == 3
        return
    assert skipped == [] and len(emitted) == 3
    for w in emitted:
        assert w.meta["zero_filled_components"] == ["E", "N"]
        zi = ORDER.index("Z")
        assert w.mask[zi].all() and not w.mask[[0, 1]].any() and (w.data[[0, 1]] == 0).all()
        assert w.channels == ("", "", "HHZ")


def test_lagging_component_is_waited_for_then_masked() -> None:
    # E stops at T0 + 36.5 s; Z and N go on: window [30, 60) rel. T0 - 3 s waits for the lag
    e = blocks_for("E", T0_NS, 36.5)
    emitted, skipped = run(interleave(e, blocks_for("N", T0_NS, 80.0), blocks_for("Z", T0_NS, 80.0)))
    ids = {w.start_ns for w in emitted}
    assert T0_NS + 7 * NS_PER_S in ids  # [10, 40): complete
    # [20, 50) and on: E is missing > 1 s at the end: split as a gap once the lag passed
    assert {s.start_ns for s in skipped if s.reason == "gap"} >= {T0_NS + 17 * NS_PER_S, T0_NS + 27 * NS_PER_S}


def test_z12_station_windows() -> None:
    streams = [blocks_for(c, T0_NS, 45.0) for c in "ENZ"]
    for stream, cha in zip(streams, ["HH2", "HH1", "HHZ"]):  # SeisBench convention: 2 -> E, 1 -> N
        for b in stream:
            b.seed_id = f"XX.STA.00.{cha}"
    emitted, skipped = run(interleave(*streams))
    (w,) = emitted
    assert skipped == [] and w.mask.all()
    assert w.channels == tuple({"E": "HH2", "N": "HH1", "Z": "HHZ"}[c] for c in ORDER)


def test_dead_component_is_zero_filled() -> None:
    e = blocks_for("E", T0_NS, 5.0)  # E dies after 5 s
    emitted, _ = run(interleave(e, blocks_for("N", T0_NS, 90.0), blocks_for("Z", T0_NS, 90.0)))
    late = [w for w in emitted if w.start_ns >= T0_NS + 7 * NS_PER_S]
    assert late and all(w.meta.get("zero_filled_components") == ["E"] for w in late)


def test_flush_decides_windows_covered_by_the_newest_data() -> None:
    blocks = three_comp(45.0)
    # drop E's block [T0 + 35 s, T0 + 40 s) so window [10, 40) (grid) never completes by itself
    blocks = [b for b in blocks if not (b.channel == "HHE" and b.start_ns == T0_NS + 35 * NS_PER_S)]
    emitted, _ = run(blocks)
    assert emitted == []  # incomplete and the lag has not passed
    emitted, skipped = run(blocks, flush=True)
    assert [w.start_ns for w in emitted] + [s.start_ns for s in skipped] == [T0_NS + 7 * NS_PER_S]


def test_nonfinite_samples_are_masked_in_windows() -> None:
    z = blocks_for("Z", T0_NS, 61.0)
    z[5].samples[10:13] = [np.nan, np.inf, -np.inf]
    emitted, skipped = run(interleave(blocks_for("E", T0_NS, 61.0), blocks_for("N", T0_NS, 61.0), z))
    bad_t = z[5].start_ns + 10 * 10_000_000
    w = next(w for w in emitted if w.start_ns <= bad_t < w.end_ns)
    k = (bad_t - w.start_ns) // 10_000_000
    zi = ORDER.index("Z")
    assert not w.mask[zi, k : k + 3].any() and (w.data[zi, k : k + 3] == 0).all()
    assert np.isfinite(w.data).all()


def test_never_emitted_twice() -> None:
    bs = BufferSettings()
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, bs)
    win = Windower(DEFAULT_SPEC, WindowSettings(), bs)
    seen: list[str] = []
    for b in three_comp(120.0):
        sb.insert(b, NOW)
        seen += [w.window_id for w in win.collect(sb).windows]
        seen += [w.window_id for w in win.collect(sb).windows]
    seen += [w.window_id for w in win.collect(sb, flush=True).windows]
    seen += [w.window_id for w in win.collect(sb, flush=True).windows]
    assert len(seen) == len(set(seen)) == 9


@pytest.mark.parametrize("rate", [200.0, 40.0])
def test_resampled_low_frequency_sine_is_preserved(rate: float) -> None:
    freq, amp = 1.3, 1000.0

    def sine(comp: str) -> list[SampleBlock]:
        out = blocks_for(comp, T0_NS, 70.0, rate=rate)
        for b in out:
            t = (b.start_ns + np.round(np.arange(len(b.samples)) * NS_PER_S / rate)) / NS_PER_S
            b.samples = (amp * np.sin(2 * np.pi * freq * (t - 1.704e9)) + 300.0).astype(np.float32)
        return out

    emitted, skipped = run(interleave(*(sine(c) for c in "ENZ")))
    assert skipped == [] and len(emitted) >= 3
    for w in emitted:
        assert w.sampling_rate_hz == 100.0 and w.data.shape == (3, 3000) and w.mask.all()
        t = (w.start_ns + np.arange(3000) * 10_000_000) / NS_PER_S
        want = amp * np.sin(2 * np.pi * freq * (t - 1.704e9)) + 300.0
        err = np.abs(w.data - want).max()
        assert err < 0.01 * amp, err


def test_resampled_window_waits_for_the_filter_margin() -> None:
    # 10 s blocks on the 10 s grid: a block ends exactly where a window ends
    t0 = T0_NS - 3 * NS_PER_S
    streams = [blocks_for(c, t0 - NS_PER_S, 61.0, sizes=[200] + [2000] * 6, rate=200.0) for c in "ENZ"]
    bs = BufferSettings()
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, bs)
    win = Windower(DEFAULT_SPEC, WindowSettings(), bs)
    by_end: dict[int, list[Window]] = {}
    for b in interleave(*streams):
        sb.insert(b, NOW)
        by_end.setdefault(b.end_ns, []).extend(win.collect(sb).windows)
    # window [0, 30) is complete at its end only with the filter's reach: it comes with [30, 40)
    assert by_end[t0 + 30 * NS_PER_S] == []
    (w,) = by_end[t0 + 40 * NS_PER_S]
    assert w.start_ns == t0 and w.mask.all()


def test_resampling_masks_the_neighbourhood_of_a_gap() -> None:
    streams = [blocks_for(c, T0_NS, 30.0, rate=200.0) + blocks_for(c, T0_NS + 30_500_000_000, 40.0, rate=200.0) for c in "ENZ"]
    emitted, _ = run(interleave(*streams))
    w = next(w for w in emitted if w.start_ns == T0_NS + 17 * NS_PER_S)  # [20, 50) rel. T0 - 3 s
    k0 = (T0_NS + 30 * NS_PER_S - w.start_ns) // 10_000_000
    invalid = np.flatnonzero(~w.mask[0])
    assert invalid.min() < k0 and invalid.max() >= k0 + 49  # the gap plus the filter's reach
    assert len(invalid) < 50 + 2 * 25
    assert (w.data[0, invalid] == 0).all()


def test_clock_jump_restarts_the_schedule() -> None:
    later = T0_NS + 7200 * NS_PER_S
    emitted, _ = run(three_comp(50.0) + three_comp(50.0, t0=later))
    starts = [w.start_ns for w in emitted]
    assert any(s < later for s in starts) and any(s > later for s in starts)
    assert len(starts) == len(set(starts))


def test_horizon_shorter_than_window_plus_stride_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="horizon_s"):
        Windower(DEFAULT_SPEC, WindowSettings(stride_s=10), BufferSettings(horizon_s=35))
    Windower(DEFAULT_SPEC, WindowSettings(stride_s=10), BufferSettings(horizon_s=40))


def test_lag_is_capped_by_the_horizon() -> None:
    bs = BufferSettings(horizon_s=60)
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, bs)
    sb.insert(SampleBlock("XX.STA.00.HHZ", T0_NS, 100.0, np.zeros(10_000, np.float32), T0_NS), NOW)  # a 100 s block
    assert Windower(DEFAULT_SPEC, WindowSettings(), bs).lag_ns(sb) == 30 * NS_PER_S


@given(st.lists(st.booleans(), max_size=60))
def test_longest_run(bits: list[bool]) -> None:
    arr = np.array(bits, dtype=bool)
    best = cur = 0
    for b in bits:
        cur = cur + 1 if b else 0
        best = max(best, cur)
    assert longest_run(arr) == best
