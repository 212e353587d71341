from __future__ import annotations

import pytest
import torch

from models.losses import PickerLoss, multires_stft_loss, onset_weight, onset_weighted_l1


def fake_probabilities(x: torch.Tensor) -> torch.Tensor:
    """A differentiable stand-in for PhaseNet: P and S 'probabilities' are squashed amplitudes of E and N."""
    p = torch.sigmoid(4 * x[:, :2].abs() - 2)
    return torch.cat([p, 1 - p.amax(dim=1, keepdim=True)], dim=1)


def test_onset_weight_marks_both_phases_and_skips_absent_ones():
    w = onset_weight(torch.tensor([100, -1]), torch.tensor([500, 200]), 1000, extra=4.0, before=20, after=100)
    assert w.shape == (2, 1, 1000)
    assert w[0, 0, 79] == 1 and w[0, 0, 80] == 5 and w[0, 0, 199] == 5 and w[0, 0, 200] == 1
    assert w[0, 0, 480] == 5 and w[1, 0, 100] == 1 and w[1, 0, 180] == 5


def test_l1_and_stft_losses_vanish_only_at_the_target():
    x = torch.randn(2, 3, 1024)
    w = torch.ones(2, 1, 1024)
    assert onset_weighted_l1(x, x, w) == 0 and multires_stft_loss(x, x) == 0
    assert onset_weighted_l1(x + 0.1, x, w) > 0 and multires_stft_loss(0.5 * x, x) > 0


@pytest.mark.parametrize("weight", [0.0, 5.0])
def test_false_pick_weight_makes_an_invented_pick_cost_more_than_a_missed_one(weight):
    quiet = torch.zeros(1, 3, 200)
    blip = quiet.clone()
    blip[:, :2, 90:110] = 2.0
    loss = PickerLoss(fake_probabilities, false_pick_weight=weight)
    invented = float(loss(blip, quiet))  # picked where the target is not
    missed = float(loss(quiet, blip))  # not picked where the target is
    assert invented > 0 and missed > 0
    base = PickerLoss(fake_probabilities)
    if weight:
        assert invented > float(base(blip, quiet)) and missed == pytest.approx(float(base(quiet, blip)))
