"""Training losses on normalized windows ``(batch, 3, time)``.

- :func:`onset_weighted_l1`: L1 on x0_hat with extra weight in the first second after P and S (and a little
  before), where a plain L1 fit is cheapest to flatten and where picking happens.
- :func:`multires_stft_loss`: L1 between log STFT magnitudes at three resolutions; it penalizes both spectral holes
  (flattened onsets) and left-over noise in quiet parts, which an L1 on samples weights weakly at low amplitude.
- :class:`PickerLoss`: a frozen PhaseNet's P and S probabilities on the output against those on the clean target
  (binary cross-entropy with soft targets). This is what the evaluation asks of the output: to be picked like the
  clean trace, and not to be picked on noise-only input (``false_pick_weight`` makes an invented pick cost more than
  a missed one).
- :func:`keep_loss`: the share of each time-frequency cell's clean energy that the output loses, on the cells where
  the clean signal stands clearly above the noise: a learned counterpart of the guard (a cell that is mostly
  earthquake must be kept whole, however weak the cell is next to the rest of the window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["PickerLoss", "asymmetric_magnitude_loss", "keep_loss", "multires_stft_loss", "onset_weight",
           "onset_weighted_l1"]


def onset_weight(
    p: torch.Tensor, s: torch.Tensor, n: int, extra: float, before: int = 20, after: int = 100
) -> torch.Tensor:
    """``(batch, 1, n)`` weights: 1 everywhere, ``1 + extra`` in ``[pick - before, pick + after)`` for P and S
    (picks < 0 are absent)."""
    idx = torch.arange(n, device=p.device).view(1, -1)
    w = torch.ones(p.shape[0], n, device=p.device)
    for pick in (p, s):
        pk = pick.view(-1, 1)
        mask = (pk >= 0) & (idx >= pk - before) & (idx < pk + after)
        w = w + extra * mask.float()
    return w.unsqueeze(1)


def onset_weighted_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ((pred - target).abs() * weight).sum() / (weight.sum() * pred.shape[1])


def multires_stft_loss(
    pred: torch.Tensor, target: torch.Tensor, n_ffts: tuple[int, ...] = (64, 256, 1024), eps: float = 1e-2
) -> torch.Tensor:
    """Mean over resolutions of mean |log(|S_pred| + eps) - log(|S_target| + eps)|."""
    b, c, n = pred.shape
    x = torch.cat([pred, target]).reshape(2 * b * c, n).float()
    total = x.new_zeros(())
    for n_fft in n_ffts:
        spec = torch.stft(
            x, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, device=x.device), return_complex=True
        ).abs()
        sp, st = spec[: b * c], spec[b * c :]
        total = total + (torch.log(sp + eps) - torch.log(st + eps)).abs().mean()
    return total / len(n_ffts)


class PickerLoss(torch.nn.Module):
    """BCE between a frozen picker's P/S probabilities on the prediction and on the target.

    ``probabilities`` is a callable ``(batch, 3, N) -> (batch, 3, N)`` in (P, S, Noise) order, e.g.
    :meth:`models.picker.Picker.probabilities`.
    """

    def __init__(self, probabilities, false_pick_weight: float = 0.0) -> None:
        super().__init__()
        self.probabilities = probabilities
        self.false_pick_weight = float(false_pick_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.probabilities(target.float())[:, :2].clamp(0, 1)
        p = self.probabilities(pred.float())[:, :2].clamp(1e-6, 1 - 1e-6)
        # Up-weight samples where either curve is high: picks are rare, so a plain mean is all "noise".
        w = 1.0 + 20.0 * torch.maximum(t, p.detach())
        if self.false_pick_weight:
            # An invented onset (output probability above the clean target's) costs more than a missed one: a
            # false pick on noise is what an early-warning consumer cannot tolerate.
            w = w * (1.0 + self.false_pick_weight * (p.detach() - t).clamp(min=0))
        return (F.binary_cross_entropy(p, t, reduction="none") * w).mean()


def asymmetric_magnitude_loss(
    pred: torch.Tensor, target: torch.Tensor, under_weight: float = 3.0, n_fft: int = 64, hop_length: int = 16
) -> torch.Tensor:
    """Mean |(|S_pred| - |S_target|)| over time-frequency cells, with cells where the output has *less* energy
    than the clean target weighted ``1 + under_weight``: erasing signal costs more than leaving noise."""
    b, c, n = pred.shape
    win = torch.hann_window(n_fft, device=pred.device)
    x = torch.cat([pred, target]).reshape(2 * b * c, n).float()
    mag = torch.stft(x, n_fft, hop_length, window=win, return_complex=True).abs()
    mp, mt = mag[: b * c], mag[b * c :]
    w = 1.0 + under_weight * (mt > mp).float()
    return ((mp - mt).abs() * w).mean()


def keep_loss(
    pred: torch.Tensor, target: torch.Tensor, y: torch.Tensor, keep_db: float = 6.0, n_fft: int = 64,
    hop_length: int = 16, floor: float = 1e-3,
) -> torch.Tensor:
    """Mean over *signal cells* of ``relu(1 - |S_pred| / |S_target|)``: how much of a cell the output erases.

    A signal cell is a time-frequency cell whose clean magnitude is at least ``keep_db`` dB above the noise's
    (``y - target``) and at least ``floor`` of its trace's largest clean cell (so that numerically empty cells of
    a noise-free pair do not count). Every such cell weighs the same, whatever its energy: the 1-2 Hz energy of an
    event that the network takes for microseism is as costly to erase as the strong high-frequency onset, which an
    energy-weighted term (:func:`asymmetric_magnitude_loss`) hardly sees. Over-keeping costs nothing here; the other
    terms price the noise left in. 0 where there are no signal cells (noise-only pairs)."""
    b, c, n = pred.shape
    win = torch.hann_window(n_fft, device=pred.device)
    x = torch.cat([pred, target, y - target]).reshape(3 * b * c, n).float()
    mag = torch.stft(x, n_fft, hop_length, window=win, return_complex=True).abs()
    mp, mt, mn = mag[: b * c], mag[b * c : 2 * b * c], mag[2 * b * c :]
    peak = mt.amax(dim=(-2, -1), keepdim=True)
    cells = (mt >= mn * 10 ** (keep_db / 20)) & (mt > floor * peak) & (peak > 0)
    short = (1.0 - mp / mt.clamp(min=1e-12)).clamp(min=0)
    count = cells.sum()
    if count == 0:
        return pred.new_zeros(())
    return (short * cells).sum() / count
