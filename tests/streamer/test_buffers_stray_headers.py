"""Ingest buffers: stray headers far from a station's own time base (far past, or near the wall clock
for a station whose data lag it) must not reset the station's buffers; a real clock jump still does,
without losing the records that confirm it; a station back from an outage resets at once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spec import DEFAULT_SPEC
from streamer.buffers import HELD_DURATION_MAX_S, StationBuffer
from streamer.config import BufferSettings
from streamer.records import NS_PER_S, SampleBlock

T0_NS = 1_704_067_200 * NS_PER_S
NOW_NS = T0_NS + 60 * NS_PER_S


def block(t_ns: int, n: int = 500, cha: str = "HHZ") -> SampleBlock:
    return SampleBlock(f"XX.STA.00.{cha}", t_ns, 100.0, np.arange(n, dtype=np.int32), arrival_ns=NOW_NS)


def test_unrelated_stray_past_headers_do_not_reset_the_station() -> None:
    """Two stray records with corrupt far-past times, an hour apart, are not a new time base: the
    span of a backward jump must be made of data that hangs together, not of two isolated blocks."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=600))
    for k in range(6):
        assert sb.insert(block(T0_NS + k * 5 * NS_PER_S), NOW_NS).rejected is None
    epoch, newest = sb.epoch, sb.newest_end_ns
    first = sb.insert(block(T0_NS - 7200 * NS_PER_S), NOW_NS)
    second = sb.insert(block(T0_NS - 3600 * NS_PER_S), NOW_NS)
    assert (first.rejected, second.rejected) == ("expired", "expired")
    assert not second.clock_jump
    assert sb.epoch == epoch and sb.newest_end_ns == newest
    # the buffered data is still there
    assert sb.groups["HH"][2].all_valid(sb.groups["HH"][2].head - 3000, sb.groups["HH"][2].head)


def test_a_real_backward_jump_with_interleaved_channels_still_resets() -> None:
    """The new time base of a real backward jump (three channels, contiguous records) resets the
    station once it spans one model window."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=600))
    sb.insert(block(T0_NS), NOW_NS)
    back = T0_NS - 3000 * NS_PER_S
    jumped = False
    for k in range(12):
        for cha in ("HHE", "HHN", "HHZ"):
            res = sb.insert(block(back + k * 5 * NS_PER_S, cha=cha), NOW_NS)
            if res.clock_jump:
                jumped = True
                break
        if jumped:
            break
    assert jumped
    assert k == 5  # the records of the new base span 30 s


LAG_S = 7200  # a replaying or delayed datalogger: its data are two hours behind the wall clock
LAGGING_NOW_NS = T0_NS + LAG_S * NS_PER_S


def test_a_stray_header_near_now_does_not_reset_a_station_that_lags_the_clock() -> None:
    """One corrupt record stamped near the wall clock, in a station two hours behind it (more than
    ``max_clock_jump_s``, less than ``max_future_s`` ahead of now), while the station's records keep
    arriving: held (not buffered), the station keeps its buffers and its time base, and its next
    record goes in as usual and gives the stray one up (rejected then)."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600, max_future_s=30))
    for k in range(6):
        assert sb.insert(block(T0_NS + k * 5 * NS_PER_S), LAGGING_NOW_NS).rejected is None
    epoch, newest = sb.epoch, sb.newest_end_ns
    stray_block = block(LAGGING_NOW_NS - 10 * NS_PER_S)
    stray = sb.insert(stray_block, LAGGING_NOW_NS)
    assert stray.held and stray.rejected is None and not stray.clock_jump
    assert stray.jump_s == pytest.approx(LAG_S - 10 - 30)  # from the end of the station's data
    assert sb.epoch == epoch and sb.newest_end_ns == newest
    chan = sb.groups["HH"][2]
    assert chan.all_valid(chan.head - 3000, chan.head)  # the 30 s buffered are all still there
    nxt = sb.insert(block(T0_NS + 30 * NS_PER_S), LAGGING_NOW_NS)
    assert nxt.rejected is None and not nxt.clock_jump and nxt.channel.gap_samples == 0
    assert [h.block for h in nxt.discarded] == [stray_block]
    assert nxt.discarded[0].jump_s == pytest.approx(LAG_S - 10 - 30)
    assert sb.newest_end_ns == T0_NS + 35 * NS_PER_S
    assert sb.drop_held() == []


def test_stray_headers_near_now_do_not_add_up_to_a_jump() -> None:
    """Stray near-now records that do not hang together (a minute apart, the station's own data in
    between) never confirm a jump, however many there are; each is given up by the next record."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600))
    strays = discarded = 0
    for k in range(40):
        res = sb.insert(block(T0_NS + k * 5 * NS_PER_S), LAGGING_NOW_NS + k * 5 * NS_PER_S)
        assert res.rejected is None
        discarded += len(res.discarded)
        if k % 4 == 3:
            res = sb.insert(block(LAGGING_NOW_NS + k * 15 * NS_PER_S), LAGGING_NOW_NS + k * 15 * NS_PER_S)
            assert res.held and not res.clock_jump
            strays += 1
    assert sb.epoch == 0
    assert discarded == strays - 1 and len(sb.drop_held()) == 1  # the last one still waits


def test_a_real_forward_jump_resets_once_one_window_of_new_data_confirms_it() -> None:
    """A station whose clock really jumped ahead while its records kept arriving (three channels,
    contiguous records in the new time base): the records are held until they span one model
    window, then the station is reset and all of them go in, nothing lost; in-flight records of the
    old time base after it are dropped."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600))
    sb.insert(block(T0_NS), LAGGING_NOW_NS)
    later = LAGGING_NOW_NS - 60 * NS_PER_S
    jumped = False
    held = []
    for k in range(12):
        for cha in ("HHE", "HHN", "HHZ"):
            b = block(later + k * 5 * NS_PER_S, cha=cha)
            res = sb.insert(b, LAGGING_NOW_NS)
            if res.clock_jump:
                jumped = True
                break
            assert res.held and res.rejected is None
            held.append(b)
        if jumped:
            break
    assert jumped and res.rejected is None and not res.held
    assert k == 5  # the records of the new base span 30 s
    assert [b for b, _ in res.replayed] == held and all(r.rejected is None for _, r in res.replayed)
    assert res.discarded == []
    assert sb.epoch == 1 and sb.newest_end_ns == later + 30 * NS_PER_S
    assert sb.first_start_ns == later
    for slot, seconds in ((0, 30), (1, 25), (2, 25)):  # E, N, Z: every record since the jump is there
        chan = sb.groups["HH"][slot]
        start = later // 10_000_000
        assert chan.all_valid(start, start + seconds * 100)
    assert sb.insert(block(T0_NS + 5 * NS_PER_S, cha="HHN"), LAGGING_NOW_NS).rejected == "expired"
    assert sb.epoch == 1


def test_held_records_of_an_unconfirmed_jump_are_bounded() -> None:
    """A flood of identical far-ahead records never spans a window: only a bounded amount is held
    (``HELD_DURATION_MAX_S`` of records), the rest is rejected at once; the station's next record
    of its own gives the held ones up."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600))
    sb.insert(block(T0_NS), LAGGING_NOW_NS)
    n_held = int(HELD_DURATION_MAX_S // 5)  # 5-s records
    results = [sb.insert(block(LAGGING_NOW_NS - 10 * NS_PER_S), LAGGING_NOW_NS) for _ in range(n_held + 50)]
    assert sum(r.held for r in results) == n_held
    assert all(r.rejected == "clock_jump" and r.jump_s > 0 for r in results[n_held:])
    assert sb.epoch == 0
    nxt = sb.insert(block(T0_NS + 5 * NS_PER_S), LAGGING_NOW_NS)
    assert nxt.rejected is None and len(nxt.discarded) == n_held


# ------------------------------------------------------------------ a station back from an outage
def outage_block(t_ns: int, cha: str = "HHZ", latency_s: float = 2.0) -> SampleBlock:
    """A 5-s record arriving ``latency_s`` after its last sample (live delivery)."""
    return SampleBlock(f"XX.STA.00.{cha}", t_ns, 100.0, np.arange(500, dtype=np.int32),
                       arrival_ns=t_ns + round((5 + latency_s) * NS_PER_S))


def test_a_station_back_from_a_two_hour_outage_resets_at_once_and_keeps_its_first_record() -> None:
    """No data arrived for two hours, then current data: the jump is explained by the silence on
    the arrival clock, so the station is reset at once and the first record after the outage (the
    first P arrival could be in it) is buffered, nothing held or rejected."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600))
    for k in range(6):
        for cha in ("HHE", "HHN", "HHZ"):
            assert sb.insert(outage_block(T0_NS + k * 5 * NS_PER_S, cha), T0_NS + (k + 1) * 5 * NS_PER_S).rejected is None
    back = T0_NS + 30 * NS_PER_S + 7200 * NS_PER_S
    res = sb.insert(outage_block(back), back + 10 * NS_PER_S)
    assert res.clock_jump and res.after_outage and not res.held and res.rejected is None
    assert res.jump_s == pytest.approx(7200)
    assert sb.epoch == 1 and sb.newest_end_ns == back + 5 * NS_PER_S and sb.first_start_ns == back
    chan = sb.groups["HH"][2]
    assert chan.all_valid(back // 10_000_000, back // 10_000_000 + 500)
    # the other components of the same interval go in as usual
    nxt = sb.insert(outage_block(back, "HHE"), back + 10 * NS_PER_S)
    assert nxt.rejected is None and not nxt.clock_jump and sb.epoch == 1


@pytest.mark.parametrize(
    ("max_jump_s", "jump_s", "silence_s", "at_once"),
    [
        (3600, 7200, 7200, True),  # silent exactly as long as the data jumped
        (3600, 7200, 6500, True),  # faster delivery after the outage: within 10 % of the jump
        (3600, 7200, 6400, False),  # beyond the slack: to be confirmed
        (3600, 7200, 10, False),  # data kept arriving: a stray header or a real clock jump
        (3600, 3700, 3600, True),  # slack of 370 s (10 %)
        (3600, 3700, 3300, False),
        (300, 400, 345, True),  # slack at least 60 s
        (300, 400, 335, False),
        (100, 100, 50, True),  # ... but at most half the jump
        (100, 100, 45, False),
    ],
)
def test_a_forward_jump_is_taken_for_an_outage_when_the_arrival_silence_explains_it(
    max_jump_s: float, jump_s: int, silence_s: int, at_once: bool
) -> None:
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=max_jump_s))
    first = SampleBlock("XX.STA.00.HHZ", T0_NS, 100.0, np.arange(500, dtype=np.int32), arrival_ns=T0_NS)
    assert sb.insert(first, T0_NS).rejected is None
    start = T0_NS + 5 * NS_PER_S + jump_s * NS_PER_S
    nxt = SampleBlock("XX.STA.00.HHZ", start, 100.0, np.arange(500, dtype=np.int32),
                      arrival_ns=T0_NS + silence_s * NS_PER_S)
    res = sb.insert(nxt, start + 10 * NS_PER_S)
    assert res.clock_jump is at_once and res.after_outage is at_once
    assert res.held is not at_once and res.rejected is None


def test_an_outage_gives_up_records_held_for_an_unconfirmed_jump() -> None:
    """A stray far-ahead record is held; the station then falls silent for two hours and comes back:
    the reset after the outage gives the stray record up (rejected) and keeps the new one."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600))
    assert sb.insert(outage_block(T0_NS), T0_NS + 10 * NS_PER_S).rejected is None
    stray = SampleBlock("XX.STA.00.HHZ", T0_NS + 5000 * NS_PER_S, 100.0, np.arange(500, dtype=np.int32),
                        arrival_ns=T0_NS + 8 * NS_PER_S)
    assert sb.insert(stray, T0_NS + 5000 * NS_PER_S).held
    back = T0_NS + 7205 * NS_PER_S
    res = sb.insert(outage_block(back), back + 10 * NS_PER_S)
    assert res.clock_jump and res.after_outage and [h.block for h in res.discarded] == [stray]
    assert sb.newest_end_ns == back + 5 * NS_PER_S


# ------------------------------------------------------------------ every block settled exactly once
BASES_NS = (T0_NS, T0_NS + 7200 * NS_PER_S, T0_NS - 7200 * NS_PER_S)  # own, far ahead, far behind


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from((0, 0, 1, 2)), st.integers(1, 8), st.sampled_from("ENZ"),
                          st.sampled_from((False, False, False, True))), min_size=1, max_size=20))
def test_every_block_is_buffered_or_rejected_exactly_once(runs: list[tuple[int, int, str, bool]]) -> None:
    """Whatever the mix of runs of own, far-ahead and far-behind records and outages: each record
    ends up buffered or rejected exactly once, a held one when it is replayed, given up or dropped;
    this is what lets the ingest stage acknowledge each packet exactly when its fate is known."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600))
    now = T0_NS + 30 * 86400 * NS_PER_S
    arrival = T0_NS
    cursors = list(BASES_NS)  # each time base goes on where its last run ended
    fate: dict[int, str] = {}  # by id() of the block, all kept alive in ``blocks``
    pending: set[int] = set()
    blocks: list[SampleBlock] = []

    def settle(key: int, what: str) -> None:
        assert key in pending and key not in fate
        pending.discard(key)
        fate[key] = what

    for base, n_records, comp, silent in runs:
        arrival += (7200 if silent else 1) * NS_PER_S
        for _ in range(n_records):
            arrival += NS_PER_S
            b = SampleBlock(f"XX.STA.00.HH{comp}", cursors[base], 100.0, np.arange(500, dtype=np.int32), arrival_ns=arrival)
            cursors[base] += 5 * NS_PER_S
            blocks.append(b)
            res = sb.insert(b, now)
            for rb, rr in res.replayed:
                settle(id(rb), "rejected" if rr.rejected else "buffered")
            for h in res.discarded:
                settle(id(h.block), "rejected")
            if res.held:
                assert id(b) not in fate and id(b) not in pending
                pending.add(id(b))
            else:
                fate[id(b)] = "rejected" if res.rejected else "buffered"
    for h in sb.drop_held():
        settle(id(h.block), "rejected")
    assert not pending and len(fate) == len(blocks)


@pytest.mark.parametrize("direction", ["ahead", "back"])
def test_one_stray_record_of_a_window_or_more_does_not_confirm_a_jump(direction: str) -> None:
    """A single record can hold 30 s or more (4096-byte records, low rates): stamped far from the
    station's time base, it alone is not a new time base (the span must come from more than one
    record), so the station keeps its buffers and its next own record goes in."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=3600, max_future_s=30))
    for k in range(6):
        assert sb.insert(block(T0_NS + k * 5 * NS_PER_S), LAGGING_NOW_NS).rejected is None
    epoch = sb.epoch
    far_ns = LAGGING_NOW_NS - 50 * NS_PER_S if direction == "ahead" else T0_NS - 5 * 3600 * NS_PER_S
    long_stray = sb.insert(block(far_ns, n=4000), LAGGING_NOW_NS)  # 40 s in one record
    assert not long_stray.clock_jump and sb.epoch == epoch
    assert long_stray.held if direction == "ahead" else long_stray.rejected == "expired"
    nxt = sb.insert(block(T0_NS + 30 * NS_PER_S), LAGGING_NOW_NS)
    assert nxt.rejected is None and not nxt.clock_jump and nxt.channel.gap_samples == 0
    assert sb.epoch == epoch
