"""Mixtures are at their stated input SNR: a recording without a vertical component has no Z SNR, so it is not a
clean event to mix (its "mixture" would be the clean horizontals with no noise added at every SNR level), and a
noise segment without a vertical component cannot scale noise to a Z SNR."""

from __future__ import annotations

import math

import numpy as np

from models.data import Recording, build_eval_set, event_snr_db, snr_db
from models.evaluate import build_protocol_cases
from models.source_eval import build_source_sets


def _event(name: str, rng, z: bool = True, n: int = 9000, p: int = 3000) -> Recording:
    data = 0.05 * rng.standard_normal((3, n))
    t = np.arange(n - p) / 100.0
    data[:, p:] += 30 * np.exp(-t / 4.0) * np.sin(2 * np.pi * 5 * t)
    if not z:
        data[2] = 0.0
    return Recording(name, f"XX.{name}", data.astype(np.float32), p, p + 500, True, source="syn")


def _noise(name: str, rng, z: bool = True) -> Recording:
    data = rng.standard_normal((3, 9000))
    if not z:
        data[2] = 0.0
    return Recording(name, f"XX.{name}", data.astype(np.float32), None, None, True, source="syn")


def test_a_recording_without_z_has_no_z_snr():
    rng = np.random.default_rng(0)
    assert event_snr_db(_event("E0", rng)) > 15.0
    assert not event_snr_db(_event("H0", rng, z=False)) >= 15.0  # not "infinitely clean"


def _assert_at_stated_snr(es, recs_by_name):
    for i in np.flatnonzero(~es.noise_only):
        ev = recs_by_name[es.names[i].split("|")[0]]
        added = es.noisy[i, 2] - es.clean[i, 2]
        assert np.any(added != 0), f"{es.names[i]}: no noise added at {es.snr_db[i]} dB"
        got = snr_db(ev.data[2], int(ev.p_sample), added)
        assert math.isfinite(got) and abs(got - es.snr_db[i]) < 0.01, (es.names[i], es.snr_db[i], got)


def test_source_mixtures_hold_no_window_without_noise():
    rng = np.random.default_rng(1)
    recs = [_event("E0", rng), _event("E1", rng), _event("H0", rng, z=False)] + [_noise(f"N{i}", rng) for i in range(3)]
    sets = build_source_sets({"syn": recs}, snr_levels_db=(-10, 0, 10), n_noise_only=2, seed=3)
    es = sets["syn"]
    assert not any(nm.startswith("H0|") for nm in es.names)
    _assert_at_stated_snr(es, {r.name: r for r in recs})


def test_eval_set_mixtures_are_at_the_stated_snr():
    rng = np.random.default_rng(2)
    recs = [_event("E0", rng), _event("H0", rng, z=False)] + [_noise(f"N{i}", rng) for i in range(2)]
    es = build_eval_set(recs, (-5, 5), n_noise_only=1, seed=4)
    _assert_at_stated_snr(es, {r.name: r for r in recs})


def test_protocol_cases_do_not_mix_noise_without_z():
    rng = np.random.default_rng(3)
    recs = [_event("E0", rng)] + [_noise("N0", rng)] + [_noise(f"D{i}", rng, z=False) for i in range(4)]
    cases = build_protocol_cases(recs, snr_levels_db=(-5, 0, 5), n_noise_only=3, seed=5)
    assert np.isfinite(cases.noisy).all()
    _assert_at_stated_snr(cases, {r.name: r for r in recs})
