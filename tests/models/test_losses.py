from __future__ import annotations

import pytest
import torch

from models.losses import PickerLoss, asymmetric_magnitude_loss, keep_loss, multires_stft_loss, onset_weight, onset_weighted_l1


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


def _event(n: int = 3000, f_hz: float = 1.5, amp: float = 1.0, onset: int = 1200) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float32) / 100.0
    env = torch.where(torch.arange(n) >= onset, torch.exp(-(t - onset / 100.0) / 3.0), torch.zeros(n))
    return amp * env * torch.sin(2 * torch.pi * f_hz * t)


def test_keep_loss_prices_an_erased_event_by_its_cells_not_its_energy():
    """Erasing a weak 1.5 Hz event costs as much as erasing a strong 10 Hz one; keeping or over-keeping is free."""
    torch.manual_seed(0)
    noise = 0.01 * torch.randn(1, 3, 3000)
    for amp, f_hz in ((0.1, 1.5), (1.0, 10.0)):
        x0 = _event(f_hz=f_hz, amp=amp).expand(1, 3, -1).clone()
        y = x0 + noise
        assert keep_loss(x0, x0, y) == 0
        assert keep_loss(y, x0, y) < 0.1  # the observation keeps the signal cells (noise adds or takes a little)
        erased = float(keep_loss(torch.zeros_like(x0), x0, y))
        halved = float(keep_loss(0.5 * x0, x0, y))
        assert erased == pytest.approx(1.0, abs=1e-6) and halved == pytest.approx(0.5, abs=0.02)
    weak = _event(f_hz=1.5, amp=0.1).expand(1, 3, -1).clone()
    strong = _event(f_hz=10.0, amp=1.0).expand(1, 3, -1).clone()
    # the energy-weighted term barely notices the weak event's loss; the keep term counts it in full
    assert asymmetric_magnitude_loss(torch.zeros_like(weak), weak) < 0.2 * asymmetric_magnitude_loss(
        torch.zeros_like(strong), strong)


def test_keep_loss_is_zero_without_signal_cells_and_has_a_gradient():
    noise = torch.randn(2, 3, 1000)
    assert keep_loss(torch.zeros_like(noise), torch.zeros_like(noise), noise) == 0  # noise-only pair
    x0 = _event(n=1000, onset=300).expand(2, 3, -1).clone()
    pred = (0.3 * x0).requires_grad_()
    keep_loss(pred, x0, x0 + 0.01 * noise).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
