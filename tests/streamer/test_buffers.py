"""Ring buffers: property tests against a reference model (wrap-around, gaps, overlaps,
out-of-order inserts) and the station-level policies (future, expired, clock jumps, rates,
component mapping)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spec import DEFAULT_SPEC
from streamer.buffers import ChannelBuffer, StationBuffer, exact_rate, index_of, time_of
from streamer.config import BufferSettings
from streamer.records import NS_PER_S, SampleBlock

BASE = 170_406_720_000  # an absolute index near 2024 at 100 Hz: the ring wraps many times over
RATE = Fraction(100)
T0_NS = BASE * 10_000_000


def reference(blocks: list[tuple[int, np.ndarray]], capacity: int) -> tuple[int, dict[int, float]]:
    """Plain-Python model of the ring: first write wins, indices older than head - capacity are
    dropped, non-finite values are not valid."""
    head: int | None = None
    store: dict[int, float] = {}
    for start, vals in blocks:
        end = start + len(vals)
        head = start if head is None else head
        head = max(head, end)
        tail = head - capacity
        store = {i: v for i, v in store.items() if i >= tail}
        for k, v in enumerate(vals):
            i = start + k
            if i >= tail and i not in store and np.isfinite(v):
                store[i] = float(v)
    assert head is not None
    return head, store


def check_against_reference(buf: ChannelBuffer, blocks: list[tuple[int, np.ndarray]]) -> None:
    head, store = reference(blocks, buf.capacity)
    assert buf.head == head
    data, mask = buf.read(head - buf.capacity, buf.capacity)
    want_mask = np.array([i in store for i in range(head - buf.capacity, head)])
    want_data = np.array([store.get(i, 0.0) for i in range(head - buf.capacity, head)], dtype=np.float32)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(data, want_data)
    assert buf.valid_count == len(store)


def signal(start: int, n: int) -> np.ndarray:
    """Sample values are a function of the absolute index, so any order writes the same thing."""
    idx = np.arange(start, start + n) - BASE
    return (np.sin(idx * 0.05) * 1000 + idx % 17).astype(np.float32)


@st.composite
def contiguous_blocks(draw: st.DrawFn) -> list[tuple[int, np.ndarray]]:
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=25))
    blocks, pos = [], BASE + draw(st.integers(0, 1000))
    for n in sizes:
        blocks.append((pos, signal(pos, n)))
        pos += n
    return blocks


@settings(max_examples=80, deadline=None)
@given(blocks=contiguous_blocks(), data=st.data())
def test_any_permutation_within_the_horizon_equals_in_order(blocks: list[tuple[int, np.ndarray]], data: st.DataObject) -> None:
    total = sum(len(v) for _, v in blocks)
    order = data.draw(st.permutations(range(len(blocks))))
    in_order = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=(total + 5) / 100)
    shuffled = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=(total + 5) / 100)
    for s, v in blocks:
        in_order.insert(s, v, 0)
    for i in order:
        shuffled.insert(*blocks[i], 0)
    assert in_order.head == shuffled.head
    a = in_order.read(blocks[0][0], total)
    b = shuffled.read(blocks[0][0], total)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].all()
    np.testing.assert_array_equal(a[0], signal(blocks[0][0], total))


@settings(max_examples=80, deadline=None)
@given(
    spans=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 60)), min_size=1, max_size=30),
    capacity_s=st.sampled_from([0.5, 1.0, 2.37, 5.0]),
    nan_at=st.lists(st.integers(0, 460), max_size=5),
)
def test_random_inserts_match_the_reference_model(spans: list[tuple[int, int]], capacity_s: float, nan_at: list[int]) -> None:
    """Gaps, overlaps, out-of-order and wrap-around together: buffer == reference model."""
    buf = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=capacity_s)
    blocks = []
    for off, n in spans:
        start = BASE + off
        vals = signal(start, n)
        for k in nan_at:
            if start <= BASE + k < start + n:
                vals[BASE + k - start] = np.nan
        blocks.append((start, vals))
        buf.insert(start, vals, 0)
    check_against_reference(buf, blocks)


@settings(max_examples=60, deadline=None)
@given(blocks=contiguous_blocks(), dups=st.lists(st.tuples(st.integers(0, 500), st.integers(1, 50)), max_size=10))
def test_duplicates_never_change_content(blocks: list[tuple[int, np.ndarray]], dups: list[tuple[int, int]]) -> None:
    total = sum(len(v) for _, v in blocks)
    buf = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=(total + 5) / 100)
    for s, v in blocks:
        buf.insert(s, v, 0)
    before = buf.read(blocks[0][0], total)
    first = blocks[0][0]
    for off, n in dups:
        off = off % total
        n = min(n, total - off)
        res = buf.insert(first + off, np.full(n, -1.0, dtype=np.float32), 0)
        assert res.overlap_samples == n and res.written == 0
    after = buf.read(blocks[0][0], total)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_wrap_around_keeps_the_last_horizon() -> None:
    buf = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=3.0)
    pos = BASE + 17
    for n in [97, 250, 13, 300, 301, 42, 199]:
        buf.insert(pos, signal(pos, n), 0)
        pos += n
    assert buf.head == pos and buf.capacity == 300
    data, mask = buf.read(pos - 300, 300)
    assert mask.all()
    np.testing.assert_array_equal(data, signal(pos - 300, 300))
    # beyond the retained range reads as missing
    data, mask = buf.read(pos - 310, 20)
    assert mask.tolist() == [False] * 10 + [True] * 10
    assert buf.fill_ratio() == 1.0


def test_gap_overlap_late_and_expired_are_reported() -> None:
    buf = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=2.0)
    assert buf.insert(BASE, signal(BASE, 50), 1).gap_samples == 0
    res = buf.insert(BASE + 80, signal(BASE + 80, 20), 2)
    assert res.gap_samples == 30 and res.written == 20
    res = buf.insert(BASE + 40, signal(BASE + 40, 20), 3)  # 10 duplicate, 10 fill the gap
    assert res.overlap_samples == 10 and res.written == 10 and res.late_samples == 20
    buf.insert(BASE + 100, signal(BASE + 100, 200), 4)  # head now BASE+300, tail BASE+100
    res = buf.insert(BASE + 90, signal(BASE + 90, 20), 5)
    assert res.expired_samples == 10 and res.overlap_samples == 10
    assert buf.newest_arrival(BASE + 250, BASE + 260) == 4
    assert buf.newest_arrival(BASE + 100, BASE + 300) == 4


def test_nonfinite_samples_are_masked_and_counted() -> None:
    buf = ChannelBuffer("X.Y..HHZ", RATE, horizon_s=1.0)
    vals = np.array([1, np.nan, 3, np.inf, -np.inf, 6], dtype=np.float64)
    res = buf.insert(BASE, vals, 0)
    assert res.nonfinite_samples == 3 and res.written == 3
    data, mask = buf.read(BASE, 6)
    assert mask.tolist() == [True, False, True, False, False, True]
    assert data.tolist() == [1, 0, 3, 0, 0, 6]
    # a later finite value may fill a masked slot
    assert buf.insert(BASE + 1, np.array([2.0]), 0).written == 1


@pytest.mark.parametrize(("rate_hz", "ok"), [(100.0, True), (99.9999999, True), (0.0, False), (-1.0, False), (float("nan"), False), (float("inf"), False), (1e5, False), (1 / 3, True)])
def test_exact_rate(rate_hz: float, ok: bool) -> None:
    assert (exact_rate(rate_hz) is not None) == ok
    if rate_hz == 99.9999999:
        assert exact_rate(rate_hz) == 100


@given(t_ns=st.integers(0, 4_000_000_000 * NS_PER_S), rate=st.sampled_from([Fraction(100), Fraction(40), Fraction(200), Fraction(1, 10), Fraction(50, 3)]))
def test_index_and_time_round_trip(t_ns: int, rate: Fraction) -> None:
    i = index_of(t_ns, rate)
    assert index_of(time_of(i, rate), rate) == i
    period = NS_PER_S / rate
    assert abs(time_of(i, rate) - t_ns) <= period / 2 + 1


# -- station policies ----------------------------------------------------------------------------

NOW = T0_NS + 3600 * NS_PER_S


def block(cha: str = "HHZ", t_ns: int = T0_NS, n: int = 500, rate: float = 100.0, loc: str = "00", values: np.ndarray | None = None) -> SampleBlock:
    x = values if values is not None else np.arange(n, dtype=np.int32)
    return SampleBlock(f"XX.STA.{loc}.{cha}", t_ns, rate, x, arrival_ns=t_ns + 10 * NS_PER_S)


def station(**kw: object) -> StationBuffer:
    return StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(**kw))  # type: ignore[arg-type]


def test_far_future_is_rejected() -> None:
    sb = station(max_future_s=30)
    assert sb.insert(block(t_ns=NOW + 40 * NS_PER_S), NOW).rejected == "future"
    assert sb.insert(block(t_ns=NOW + 20 * NS_PER_S), NOW).rejected is None  # 20 + 5 s < 30 s


def test_older_than_horizon_is_expired() -> None:
    sb = station(horizon_s=60)
    assert sb.insert(block(t_ns=T0_NS), NOW).rejected is None
    assert sb.insert(block(t_ns=T0_NS - 100 * NS_PER_S), NOW).rejected == "expired"
    # the 1970 timestamp of a corrupt header
    assert sb.insert(block(t_ns=0), NOW).rejected == "expired"
    assert sb.newest_end_ns == T0_NS + 5 * NS_PER_S


def test_forward_clock_jump_resets_the_station() -> None:
    sb = station(max_clock_jump_s=3600)
    sb.insert(block("HHZ"), NOW)
    sb.insert(block("HHE"), NOW)
    epoch = sb.epoch
    later = T0_NS + 7200 * NS_PER_S
    res = sb.insert(block("HHZ", t_ns=later), later)
    assert res.clock_jump and res.rejected is None
    assert sb.epoch == epoch + 1
    assert list(sb.groups["HH"]) == [2]  # only the new Z channel
    assert sb.newest_end_ns == later + 5 * NS_PER_S
    # the in-flight E record of the old time base is dropped, not a new jump
    assert sb.insert(block("HHE", t_ns=T0_NS + 5 * NS_PER_S), later).rejected == "expired"
    assert sb.epoch == epoch + 1


def test_backward_clock_jump_resumes_after_one_window_of_new_data() -> None:
    sb = station(max_clock_jump_s=600)
    sb.insert(block(t_ns=T0_NS), NOW)
    back = T0_NS - 3000 * NS_PER_S
    rejected = 0
    for k in range(10):
        res = sb.insert(block(t_ns=back + k * 5 * NS_PER_S), NOW)
        if res.clock_jump:
            break
        assert res.rejected == "expired"
        rejected += 1
    assert res.clock_jump
    # the block that makes the new-time data span 30 s (one model window) resets and goes in
    assert rejected == 5
    assert sb.newest_end_ns == back + 30 * NS_PER_S


@pytest.mark.parametrize("rate", [0.0, -100.0, float("nan"), 20_000.0, 1.0])
def test_absurd_rates_are_rejected(rate: float) -> None:
    assert station().insert(block(rate=rate), NOW).rejected == "rate"


def test_other_rate_rejected_when_resampling_is_off() -> None:
    assert station(resample=False).insert(block(rate=200.0), NOW).rejected == "rate"
    res = station(resample=True).insert(block(rate=200.0), NOW)
    assert res.rejected is None and res.resampled


@pytest.mark.parametrize("cha", ["VM1", "LOG", "HHA", "HHZZ", "HM1"])
def test_non_seismic_channels_are_rejected(cha: str) -> None:
    assert station().insert(block(cha), NOW).rejected == "channel"


def test_z12_maps_to_spec_order_and_groups_by_band_instrument() -> None:
    sb = station()
    for cha in ["HH1", "HH2", "HHZ", "HNE", "HNN", "HNZ"]:
        assert sb.insert(block(cha), NOW).rejected is None
    order = DEFAULT_SPEC.component_order
    # SeisBench's convention, shared with the offline path (models.components): 1 -> N, 2 -> E
    assert sb.channel_codes["HH"] == {order.index("N"): "HH1", order.index("E"): "HH2", order.index("Z"): "HHZ"}
    assert set(sb.groups) == {"HH", "HN"}
    # both current and complete: the seismometer wins over the accelerometer
    assert sb.active_group(10 * NS_PER_S) == "HH"
    # a second channel for an occupied slot is rejected
    assert sb.insert(block("HHE"), NOW).rejected == "channel"


def test_active_group_follows_the_most_recent_data() -> None:
    sb = station()
    for cha in ["HHE", "HHN", "HHZ"]:
        sb.insert(block(cha), NOW)
    for cha in ["HNE", "HNN", "HNZ"]:
        sb.insert(block(cha, t_ns=T0_NS + 60 * NS_PER_S), NOW)
    assert sb.active_group(10 * NS_PER_S) == "HN"  # HH stopped a minute ago


def test_rate_change_restarts_the_channel() -> None:
    sb = station()
    sb.insert(block("HHZ", rate=100.0), NOW)
    res = sb.insert(block("HHZ", t_ns=T0_NS + 5 * NS_PER_S, rate=200.0), NOW)
    assert res.channel_reset and sb.groups["HH"][2].rate == 200
