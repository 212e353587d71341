from __future__ import annotations

import time

import pytest
import torch

from models.degradation import make_linear_schedule
from models.sampler import make_step_list, sample_cold, sample_direct

from denoiser_fixtures import make_tiny_unet


@pytest.mark.parametrize(("T", "k", "expected"), [(16, 1, [16, 0]), (16, 4, [16, 12, 8, 4, 0]), (3, 8, [3, 2, 1, 0])])
def test_step_list_evenly_spaced_and_decreasing(T, k, expected):
    assert make_step_list(T, k) == expected


def test_one_step_list_equals_direct_prediction():
    model = make_tiny_unet()
    g = make_linear_schedule(8)
    y = torch.randn(2, 3, 3000)
    with torch.inference_mode():
        direct = sample_direct(model, y, g)
        cold = sample_cold(model, y, g, [8, 0])
    assert cold.steps_done == direct.steps_done == 1
    assert torch.equal(cold.x0, direct.x0)


def test_oracle_model_returns_clean_window_exactly():
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 200)
    y = x0 + torch.randn(2, 3, 200)
    g = make_linear_schedule(16)
    seen = []

    def oracle(x, t):
        return x0

    res = sample_cold(oracle, y, g, make_step_list(16, 16), callback=lambda k, x: seen.append(k))
    assert torch.equal(res.x0, x0)
    assert res.steps_done == 16 and seen == list(range(16))


def test_sampler_states_follow_the_operator_with_an_oracle():
    """With x0_hat = x0 every intermediate state is exactly D(x0, s): the sampler uses the training operator."""
    torch.manual_seed(0)
    x0 = torch.randn(1, 3, 50, dtype=torch.float64)
    y = x0 + torch.randn(1, 3, 50, dtype=torch.float64)
    g = make_linear_schedule(8).double()
    states = []

    def oracle(x, t):
        states.append((round(float(t[0]) * 8), x.clone()))
        return x0

    sample_cold(oracle, y, g, [8, 6, 3, 1, 0])
    for s, x in states:
        assert torch.allclose(x, x0 + g[s] * (y - x0))


def test_rejects_bad_step_lists():
    g = make_linear_schedule(8)
    y = torch.zeros(1, 3, 10)
    for steps in ([8, 4], [7, 0], [8, 4, 4, 0]):
        with pytest.raises(ValueError):
            sample_cold(lambda x, t: x, y, g, steps)


def test_deadline_stops_within_one_step():
    step_s = 0.03

    def slow(x, t):
        time.sleep(step_s)
        return x

    g = make_linear_schedule(16)
    y = torch.randn(1, 3, 10)
    budget_ms = 100.0
    res = sample_cold(slow, y, g, make_step_list(16, 16), budget_ms=budget_ms)
    assert 1 <= res.steps_done < 16
    assert res.elapsed_ms <= budget_ms + step_s * 1e3 * 1.5
    # A valid estimate exists even when the budget is smaller than one step.
    tiny = sample_cold(slow, y, g, make_step_list(16, 16), budget_ms=1.0)
    assert tiny.steps_done == 1 and tiny.x0.shape == y.shape
