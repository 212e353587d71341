"""The pick policy on the stacked curves: the pick detector judges a denoised P sample by the stacked raw P
beside it (a fourth row), with the same rule ``coldstream evaluate`` applies to single windows, and its picks
still do not depend on how the trace arrives in segments."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.peaks import confirm_p
from models.picker import find_picks
from streamer.picks import Pick, PickDetector, Provenance
from streamer.stitch import Segment, sample_time_ns

RATE = 100.0
T0 = 17_640_000_000_000
STATION = "NC.ABC.00"
PROV = Provenance("coldstream-cdiffsd", "v", "PhaseNet/original", "1")
N = 6000


def _gauss(centre: float, height: float, width: float = 20.0) -> np.ndarray:
    i = np.arange(N)
    return height * np.exp(-0.5 * ((i - centre) / width) ** 2)


def _probs() -> np.ndarray:
    """(4, N): P, S, noise and the raw P that confirms. Denoised P 0.4 at 1000 with raw 0.35 45 samples later
    (within 0.5 s: confirmed); 0.4 at 2000 with raw 0.35 a second later (beyond it: not); 0.5 at 3000 with no
    raw P (sure of itself); 0.4 at 4000 with raw 0.29 on it (below the threshold: not); S 0.6 at 5000."""
    p = _gauss(1000, 0.4) + _gauss(2000, 0.4) + _gauss(3000, 0.5) + _gauss(4000, 0.4)
    s = _gauss(5000, 0.6, 40)
    raw = _gauss(1045, 0.35, 5) + _gauss(2100, 0.35, 5) + _gauss(4000, 0.29)
    return np.stack([p, s, 1 - p - s, raw]).astype(np.float32)


def _detect(x: np.ndarray, cuts: list[int], unconfirmed: float | None, det: PickDetector | None = None) -> list[Pick]:
    det = det or PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    bounds = [0, *sorted(set(cuts)), x.shape[1]]
    picks: list[Pick] = []
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            seg = Segment(STATION, T0 + a, RATE, x[:, a:b], np.ones((x.shape[0], b - a), bool), 1, 1)
            picks += det.process(seg, provenance=PROV, now_ns=1, unconfirmed_p_threshold=unconfirmed)
    return picks + det.flush(provenance=PROV, now_ns=1)


def _p_samples(picks: list[Pick]) -> list[int]:
    return [round(p.time_ns * RATE / 1e9) - T0 for p in picks if p.phase == "P"]


def test_confirmed_or_sure_p_picks_stand_with_their_own_probability():
    picks = _detect(_probs(), [], 0.45)
    assert _p_samples(picks) == [1000, 3000]
    assert [round(p.probability, 4) for p in picks if p.phase == "P"] == [0.4, 0.5]
    assert [p.phase for p in picks].count("S") == 1  # S is not the policy's business
    assert _p_samples(_detect(_probs(), [], None)) == [1000, 2000, 3000, 4000]  # without it, every maximum
    assert _p_samples(_detect(_probs(), [], 0.3)) == [1000, 2000, 3000, 4000]  # at the P threshold: off


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=N - 1), max_size=12))
def test_policy_picks_do_not_depend_on_chunking(cuts):
    # a cut between a candidate and the raw P that confirms it (1000 | 1045) must not change the decision
    whole = [(p.pick_id, p.probability) for p in _detect(_probs(), [], 0.45)]
    assert [(p.pick_id, p.probability) for p in _detect(_probs(), [*cuts, 1020, 2060], 0.45)] == whole


def _two_candidates(weak: int, strong: int, strong_raw: int) -> np.ndarray:
    """P 0.35 at ``weak``, confirmed by raw 0.35 on it; a higher P 0.4 at ``strong``, confirmed only by raw 0.35
    at ``strong_raw`` (plateaus of 7 samples; the pick is a plateau's first sample)."""
    i = np.arange(N)
    p = np.where(np.abs(i - weak) <= 3, 0.35, 0.0) + np.where(np.abs(i - strong) <= 3, 0.4, 0.0)
    raw = np.where(np.abs(i - weak) <= 1, 0.35, 0.0) + np.where(np.abs(i - strong_raw) <= 1, 0.35, 0.0)
    return np.stack([p, np.zeros(N), 1 - p, raw]).astype(np.float32)


@pytest.mark.parametrize(("strong", "strong_raw", "cut"), [
    # the strong one after the weak one, its raw P beyond the segment's end: judged before 1125 arrived, 1080
    # would look unconfirmed, be capped, and 1000 would become a pick; the detector waits for the reach of the
    # neighbours' confirmation too
    (1080, 1125, 1110), (1080, 1125, 1118), (1080, 1125, 1124),
    # the mirror: the strong one before, its raw P before the left context the next segment keeps; that context
    # keeps it (a false pick at 1000 would be hidden as a duplicate: no suppression either)
    (920, 875, 1130), (920, 875, 1140), (920, 875, 1149),
])
def test_a_neighbours_confirmation_is_complete_when_a_candidate_is_judged(strong, strong_raw, cut):
    x = _two_candidates(1000, strong, strong_raw)
    assert _p_samples(_detect(x, [], 0.45)) == [strong - 3]
    det = PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    assert _p_samples(_detect(x, [cut], 0.45, det)) == [strong - 3]
    assert det.suppressed == 0


def test_on_one_window_the_detector_and_coldstream_evaluate_agree():
    x = _probs()
    raw = np.zeros((1, 3, N), np.float32)
    raw[0, 0] = x[3]
    evaluated = confirm_p(x[None, :3], raw, 0.3, 0.45, 50)
    expect = sorted(i for _, phase, i, _ in find_picks(evaluated, 0.3, 0.3) if phase == "P")
    assert _p_samples(_detect(x, [], 0.45)) == expect == [1000, 3000]


def test_the_detector_holds_back_the_confirmation_reach_under_the_policy():
    det = PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    assert (det.held_samples(False), det.held_samples(True)) == (100, 150)
    x = _probs()
    for unconfirmed, held in ((None, 100), (0.45, 150)):
        det = PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
        det.process(Segment(STATION, T0, RATE, x[:, :2000], np.ones((4, 2000), bool), 1, 1),
                    unconfirmed_p_threshold=unconfirmed)
        assert det.judged_until_ns(STATION) == sample_time_ns(T0 + 2000 - held, RATE)


def test_a_change_of_policy_ends_the_run():
    det = PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    x = _probs()
    first = det.process(Segment(STATION, T0, RATE, x[:, :1500], np.ones((4, 1500), bool), 1, 1),
                        unconfirmed_p_threshold=0.45, provenance=PROV, now_ns=1)
    # the next segment comes without the policy: the run so far is judged under its own policy, a new one starts
    later = det.process(Segment(STATION, T0 + 1500, RATE, x[:3, 1500:], np.ones((3, N - 1500), bool), 1, 1),
                        provenance=PROV, now_ns=1)
    later += det.flush(provenance=PROV, now_ns=1)
    assert _p_samples(first) == [1000]
    assert _p_samples(later) == [2000, 3000, 4000]
    assert det.judged_since_ns(STATION) is None  # flushed


@pytest.mark.parametrize("gap", [(990, 1060)])
def test_masked_raw_p_confirms_nothing(gap):
    x = _probs()
    mask = np.ones((4, N), bool)
    mask[:, gap[0]:gap[1]] = False  # no data under the candidate and its raw P: neither counts
    seg = Segment(STATION, T0, RATE, x, mask, 1, 1)
    det = PickDetector(RATE, 0.3, 0.3, min_distance_s=1.0)
    picks = det.process(seg, unconfirmed_p_threshold=0.45, provenance=PROV, now_ns=1) + det.flush(provenance=PROV)
    assert 1000 not in _p_samples(picks)


@pytest.mark.parametrize(("offset", "kept"), [(50, True), (-50, True), (51, False), (-51, False)])
def test_the_confirmation_reaches_exactly_half_a_second(offset, kept):
    p = np.zeros(N, np.float32)
    p[1000] = 0.4
    raw = np.zeros(N, np.float32)
    raw[1000 + offset] = 0.3
    x = np.stack([p, np.zeros(N, np.float32), 1 - p, raw])
    assert (1000 in _p_samples(_detect(x, [], 0.45))) is kept


def test_a_float32_probability_at_the_unconfirmed_threshold_stands_live_as_in_evaluate():
    p = np.zeros(N, np.float32)
    p[1000] = np.float32(0.45)  # PhaseNet's float32 output: 0.44999998
    x = np.stack([p, np.zeros(N, np.float32), 1 - p, np.zeros(N, np.float32)])
    evaluated = confirm_p(x[None, :3], np.zeros((1, 3, N), np.float32), 0.3, 0.45, 50)
    assert [i for _, ph, i, _ in find_picks(evaluated, 0.3, 0.3) if ph == "P"] == [1000]
    assert _p_samples(_detect(x, [], 0.45)) == [1000]
