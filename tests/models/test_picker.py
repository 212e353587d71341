from __future__ import annotations

import numpy as np
import pytest

from models.picker import Picker, find_picks


def test_find_picks_on_synthetic_curves():
    probs = np.zeros((2, 3, 1000), np.float32)
    probs[0, 0, 300] = 0.9
    probs[0, 0, 330] = 0.5  # closer than min distance: dropped
    probs[1, 1, 700] = 0.6
    probs[1, 0, 100] = 0.2  # under threshold
    picks = find_picks(probs, 0.3, 0.3, min_distance_samples=100)
    assert [(b, ph, s) for b, ph, s, _ in picks] == [(0, "P", 300), (1, "S", 700)]


@pytest.mark.parametrize(("model", "weights"), [("phasenet", "original"), ("phasenetlight", "ethz")])
def test_picker_aligns_with_spec_order_input(picker_cache, ncedc_dir, model, weights):
    picker = Picker(model, weights, cache_root=picker_cache)
    assert picker.in_samples == 3001 and picker.name.endswith(weights)
    z = np.load(sorted(ncedc_dir.rglob("*.npz"))[0])
    x = z["data"].T.astype(np.float32)[None, :, 2000:5000]  # P at sample 1000
    probs = picker.predict(x)
    assert probs.shape == (1, 3, 3000) and probs.dtype == np.float32
    p_picks = [s for _, ph, s, _ in picker.find_picks(probs, 0.3, 0.3) if ph == "P"]
    assert p_picks and min(abs(s - 1000) for s in p_picks) <= 20
    long = np.concatenate([x, x], axis=-1)
    assert picker.predict(long).shape == (1, 3, 6000)


def test_classify_picks_maps_seisbench_picks_to_cases(picker_cache, ncedc_dir):
    from models.evaluate import classify_picks

    picker = Picker("phasenet", "original", cache_root=picker_cache)
    z = np.load(sorted(ncedc_dir.rglob("*.npz"))[0])
    event = z["data"].T.astype(np.float32)[:, 1000:7000]  # 60 s, P at sample 2000
    quiet = np.zeros_like(event)
    picks = classify_picks(picker, np.stack([quiet, event]), 0.3, 0.3)
    assert all(case == 1 for case, *_ in picks), "a silent case has no picks"
    p_samples = [s for case, ph, s, _ in picks if ph == "P"]
    assert p_samples and min(abs(s - 2000) for s in p_samples) <= 20
