"""Helpers shared by the science-core tests: a constant-gain identity model and a tiny U-Net."""

from __future__ import annotations

import torch

from models.unet import UNet1D


class IdentityModel(torch.nn.Module):
    """Returns its input times a constant gain: x0_hat = gain * x_t."""

    downsampling_factor = 1

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor, t_frac: torch.Tensor) -> torch.Tensor:
        return self.gain * x


def make_tiny_unet(seed: int = 0) -> UNet1D:
    torch.manual_seed(seed)
    return UNet1D(base_channels=4, channel_mults=(1, 2), bottleneck_dilations=(1,), time_dim=8).eval()
