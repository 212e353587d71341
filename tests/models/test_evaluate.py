from __future__ import annotations

import numpy as np

from models.evaluate import _noise_metrics, pick_metrics


def test_noise_metrics_separate_invented_picks_from_ones_the_raw_input_supports():
    n = 1000
    noisy = np.ones((3, 3, n), np.float32)
    out = 0.1 * noisy
    raw_p = np.zeros((3, n), np.float32)
    raw_p[1, 480:520] = 0.2  # something PhaseNet half-sees on the raw input of window 1
    picks = [(1, "P", 500, 0.9), (1, "P", 900, 0.5), (2, "P", 10, 0.4), (2, "S", 500, 0.6), (0, "P", 5, 0.9)]
    m = _noise_metrics(picks, out, noisy, np.array([1, 2]), raw_p)
    assert m["p_picks_total"] == 3 and m["p_picks_per_window"] == 1.5 and m["s_picks_per_window"] == 0.5
    assert m["p_picks_without_raw_support_per_window"] == 1.0  # the picks at 900 and at 10
    assert m["windows_with_p_pick"] == 1.0
    assert abs(m["output_energy_db"] + 20) < 1e-6
    assert np.isnan(_noise_metrics(picks, out, noisy, np.array([1, 2]))["p_picks_without_raw_support_per_window"])


def test_pick_metrics_recall_precision_and_residuals():
    truth = np.array([100, 200, -1])
    picks = [(0, "P", 110, 0.9), (1, "P", 300, 0.8), (2, "P", 50, 0.5)]
    m = pick_metrics(picks, truth, "P", tolerance_samples=50, index=np.array([0, 1, 2]))
    assert m["recall"] == 0.5
    assert abs(m["residual_mean_s"] - 0.1) < 1e-9
    assert abs(m["precision"] - 1 / 3) < 1e-9 and m["n_true"] == 2
