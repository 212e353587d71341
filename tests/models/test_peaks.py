"""One pick rule: the window evaluation and the live detector find the same picks on the same curve."""

from __future__ import annotations

import numpy as np

from models.peaks import edge_candidates, local_peaks
from models.picker import find_picks


def test_local_maximum_rule_plateaus_and_edges():
    p = np.zeros(50)
    p[10] = 0.5
    p[12] = 0.6  # within d of 10: only the higher one
    p[30:33] = 0.7  # plateau: the first sample wins
    p[49] = 0.9  # at the edge: a maximum only because nothing follows it
    p[2] = 0.8  # likewise at the start
    assert local_peaks(p, 0.3, 5) == [12, 30]
    assert local_peaks(p, 0.65, 5) == [30]
    assert local_peaks(p, 0.3, 5, lo=20, hi=40) == [30]
    assert edge_candidates(p, 0.3, 5) == [2, 49]


def test_window_evaluation_and_live_detector_agree():
    from streamer.picks import PickDetector
    from streamer.stitch import Segment

    rng = np.random.default_rng(3)
    probs = np.zeros((1, 3, 3000), np.float32)
    for phase, centre in ((0, 700), (0, 2100), (1, 1500)):
        probs[0, phase, centre - 60 : centre + 61] += np.hanning(121) * rng.uniform(0.4, 0.95)
    probs[0, :2] += rng.uniform(0, 0.05, (2, 3000))
    window = [(phase, sample) for _b, phase, sample, _p in find_picks(probs, 0.3, 0.3, 100)]
    det = PickDetector(100.0, 0.3, 0.3, min_distance_s=1.0)
    seg = Segment("XX.A.", 10_000, 100.0, probs[0], np.ones((3, 3000), bool))
    live = det.process(seg, now_ns=0) + det.flush(now_ns=0)
    assert sorted(window) == sorted((p.phase, round(p.time_ns / 1e7) - 10_000) for p in live)
    assert len(window) == 3


def test_confirming_samples_keep_away_from_gaps_but_not_from_window_ends():
    from models.peaks import confirming_samples

    mask = np.ones((2, 3, 1000), bool)
    mask[0, :, 400:500] = False  # a gap on every component
    mask[1, :2] = False  # a Z-only window: E and N missing throughout, which is no gap
    mask[1, 2, 700:710] = False  # a gap on Z, the only component with data
    ok = confirming_samples(mask, 50)
    assert ok.shape == (2, 1000)
    assert ok[0, :350].all() and not ok[0, 350:550].any() and ok[0, 550:].all()
    assert ok[0, 0] and ok[0, -1]  # the window's own ends are not gaps
    assert ok[1, :650].all() and not ok[1, 650:760].any() and ok[1, 760:].all()
    one = mask.copy()
    one[0, 2, 400:500] = True  # the gap on E and N only: Z has data, but a sample needs every component with data
    assert not confirming_samples(one, 0)[0, 400:500].any() and confirming_samples(one, 0)[0, 399]
    assert confirming_samples(np.ones((3, 10), bool), 5).all()
