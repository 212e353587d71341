"""Ingest bookkeeping for the SeedLink acknowledgement: where "data not yet cut into windows"
begins must cover every sample the next window reads, also the resampling filter's reach before
the window start of a channel at another rate than the model's."""

from __future__ import annotations

import numpy as np

from models.spec import DEFAULT_SPEC
from streamer.config import BufferSettings, WindowSettings
from streamer.ingest import Ingestor
from streamer.metrics import Metrics
from streamer.records import NS_PER_S, SampleBlock, Window

T0_NS = 1_704_067_200 * NS_PER_S  # on the 10 s window grid
RATE_HZ = 200  # resampled to the model's 100 Hz when windows are cut
STATION = "XX.STA.00"


class Clock:
    def __init__(self, t_ns: int) -> None:
        self.t_ns = t_ns

    def __call__(self) -> int:
        return self.t_ns


def one_second_blocks(duration_s: int, seed: int = 0) -> list[SampleBlock]:
    """Three components at 200 Hz in 1-s blocks from 5 s before the grid time ``T0_NS``,
    interleaved by time (as a server sends them)."""
    rng = np.random.default_rng(seed)
    traces = {c: np.cumsum(rng.normal(0, 20, duration_s * RATE_HZ)).astype(np.float32) for c in "ENZ"}
    out = []
    for k in range(duration_s):
        for c in "ENZ":
            out.append(SampleBlock(f"{STATION}.HH{c}", T0_NS + (k - 5) * NS_PER_S, float(RATE_HZ),
                                   traces[c][k * RATE_HZ:(k + 1) * RATE_HZ], arrival_ns=T0_NS))
    return out


def make(metrics: Metrics) -> Ingestor:
    clock = Clock(T0_NS + 600 * NS_PER_S)
    return Ingestor(DEFAULT_SPEC, BufferSettings(), WindowSettings(), metrics, now_ns=clock)


def run_from(metrics: Metrics, blocks: list[SampleBlock], after_ns: int | None) -> list[Window]:
    """Every window a fresh ingestor cuts from the blocks (only those ending after ``after_ns``: what a
    server sends again to a client resuming from that acknowledged time)."""
    ing = make(metrics)
    out: list[Window] = []
    for b in blocks:
        if after_ns is None or b.end_ns > after_ns:
            out.extend(ing.add_block(b))
    return out + ing.flush()


def by_start(windows: list[Window]) -> dict[int, Window]:
    return {w.start_ns: w for w in windows}


def test_uncut_time_keeps_the_filter_reach_of_a_resampled_channel(metrics: Metrics) -> None:
    """A restart resumes after the packets that end at or before the acknowledged time. With the
    uncut time as that time, the restarted process must cut the next window exactly as an
    uninterrupted one does: the resampling filter of a 200 Hz channel reads native samples just
    before the window start, so the block ending there must not be passed over."""
    blocks = one_second_blocks(70)
    windows_whole = run_from(metrics, blocks, after_ns=None)

    first = make(metrics)
    for b in blocks[: 47 * 3]:  # data up to 42 s: the windows at 0 and 10 s are decided
        first.add_block(b)
    uncut = first.uncut_ns()[STATION]
    assert T0_NS + 10 * NS_PER_S < uncut <= T0_NS + 20 * NS_PER_S

    # "restart": the server sends again every block that ends after the acknowledged time
    windows_again = run_from(metrics, blocks, after_ns=uncut)

    nxt = T0_NS + 20 * NS_PER_S
    want, got = by_start(windows_whole)[nxt], by_start(windows_again)[nxt]
    assert got.mask.all(), f"{(~got.mask).sum()} samples of the window at 20 s lost their filter support"
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-3)


def test_a_pending_window_keeps_the_filter_reach_of_a_resampled_channel(metrics: Metrics) -> None:
    """A window cut but not yet published holds the SeedLink state at its start; a restart must be
    able to cut it again whole, so for a 200 Hz channel the state stays back by the filter's reach."""
    from streamer.ack import AckBook

    blocks = one_second_blocks(70)
    windows_whole = run_from(metrics, blocks, after_ns=None)

    first = make(metrics)
    book = AckBook()
    for b in blocks[: 47 * 3]:
        book.add(first.add_block(b))  # the windows at 0 and 10 s: pending, nothing published
    before = first.read_before_ns()
    assert before[STATION] > 0
    safe = book.safe_by_key([STATION], first.uncut_ns(), before)["XX_STA"]

    windows_again = run_from(metrics, blocks, after_ns=safe)
    want, got = by_start(windows_whole)[T0_NS], by_start(windows_again)[T0_NS]
    assert got.mask.all(), f"{(~got.mask).sum()} samples of the pending window at 0 s lost their filter support"
    np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-3)


def test_stations_at_the_model_rate_need_no_reach(metrics: Metrics) -> None:
    ing = make(metrics)
    ing.add_block(SampleBlock("XX.OTH.00.HHZ", T0_NS, 100.0, np.ones(100, np.float32), arrival_ns=T0_NS))
    assert "XX.OTH.00" not in ing.read_before_ns()
