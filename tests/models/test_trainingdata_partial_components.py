"""Training pairs from recordings with one horizontal missing: the live horizontal gets noise like the others.

seisdae-stead groups single-component files into recordings; some have Z and only one horizontal. Such a
recording is not three-component, but its live horizontal is data in both input and target, so it must be noisy
in the input. Otherwise the network sees a horizontal whose input equals its target at every stated SNR."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import PairConfig, PairSampler, Recording

N = 9000
P = 3000


def _event(rng, i, live=(0, 1, 2), source="a"):
    t = np.arange(N)
    data = 0.01 * rng.standard_normal((3, N))
    env = np.where(t >= P, np.exp(-(t - P) / 300.0), 0.0)
    data += 5.0 * env * np.sin(2 * np.pi * 5.0 * t / 100.0)[None]
    for c in range(3):
        if c not in live:
            data[c] = 0.0
    three_c = 0 in live and 1 in live
    return Recording(f"XX_E{i}_1", f"XX.E{i}", data.astype(np.float32), P, P + 300, three_c, source=source)


def _noise(rng, i):
    return Recording(f"XX_N{i}_1", f"XX.N{i}", rng.standard_normal((3, N)).astype(np.float32), None, None, True,
                     source="a")


def _plain_config(**kw):
    base = dict(noise_only_share=0.0, short_period_share=0.0, strong_motion_share=0.0, en_swap_share=0.0,
                component_flip_share=0.0, z_only_share=0.0, one_horizontal_missing_share=0.0,
                microseism_share=0.0, high_freq_share=0.0, p_position_range=(500, 1000), slow_share=0.0,
                stretch_share=0.0)
    return PairConfig(**(base | kw))


@pytest.mark.parametrize("live", [(0, 2), (1, 2)], ids=["Z+E", "Z+N"])
def test_live_horizontal_of_a_partial_recording_gets_noise(live):
    rng = np.random.default_rng(7)
    recs = [_event(rng, i, live) for i in range(3)] + [_noise(rng, i) for i in range(3)]
    ps = PairSampler(recs, _plain_config(), seed=3)
    h = live[0]
    missing = 1 - h
    for _ in range(8):
        y, x0, p, _s, _snr, _ = ps.draw_one()
        assert p >= 0
        res = (y - x0)[:, p:]  # after P the target is the recording itself: what is left is the added noise
        z_pow = float(np.mean(res[2].astype(np.float64) ** 2))
        h_pow = float(np.mean(res[h].astype(np.float64) ** 2))
        assert z_pow > 0
        assert h_pow > 0.1 * z_pow, "the live horizontal of a partial recording is noise-free in the input"
        assert not np.any(y[missing]) and not np.any(x0[missing]), "a missing component stays zero in both"


def test_three_component_and_z_only_events_keep_their_noise_layout():
    rng = np.random.default_rng(8)
    recs = ([_event(rng, i) for i in range(2)] + [_event(rng, 10 + i, (2,)) for i in range(2)]
            + [_noise(rng, i) for i in range(3)])
    ps = PairSampler(recs, _plain_config(), seed=4)
    for _ in range(12):
        y, x0, p, _s, _snr, _ = ps.draw_one()
        res = (y - x0)[:, p:]
        if np.any(x0[:2]):  # a 3-C event: noise on all three
            assert all(np.mean(res[c] ** 2) > 0 for c in range(3))
        else:  # Z only: horizontals zero in input and target
            assert not np.any(y[:2])
