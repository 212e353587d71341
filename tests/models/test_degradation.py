from __future__ import annotations

import pytest
import torch

from models.degradation import (
    degrade,
    denormalize_window,
    make_cosine_schedule,
    make_linear_schedule,
    make_schedule,
    normalize_window,
)


@pytest.mark.parametrize("make", [make_linear_schedule, make_cosine_schedule])
@pytest.mark.parametrize("n_steps", [1, 2, 16, 300])
def test_schedule_monotonic_with_exact_endpoints(make, n_steps):
    g = make(n_steps)
    assert isinstance(g, torch.Tensor) and g.shape == (n_steps + 1,)
    assert g[0].item() == 0.0 and g[-1].item() == 1.0
    assert torch.all(g[1:] > g[:-1])


def test_make_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic", 8)


def test_operator_identities():
    torch.manual_seed(0)
    x0, y = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    g = make_linear_schedule(8)
    assert torch.equal(degrade(x0, y, g[0]), x0)
    assert torch.equal(degrade(x0, y, g[-1]), y)
    per_window = degrade(x0, y, torch.tensor([0.0, 1.0]))
    assert torch.equal(per_window[0], x0[0]) and torch.equal(per_window[1], y[1])


def test_normalization_round_trip_and_statistic_of_noisy_window_only():
    torch.manual_seed(0)
    y = 1e5 * torch.randn(4, 3, 300, dtype=torch.float64) + 42.0
    yn, mean, scale = normalize_window(y)
    assert torch.allclose(denormalize_window(yn, mean, scale), y)
    assert torch.allclose(yn.pow(2).mean(dim=(1, 2)), torch.ones(4, dtype=torch.float64))
    assert scale.shape == (4, 1, 1) and mean.shape == (4, 3, 1)


def test_normalization_of_all_zero_window_is_finite_and_zero():
    yn, mean, scale = normalize_window(torch.zeros(1, 3, 100))
    assert torch.all(yn == 0) and torch.all(scale == 1)
