"""A small 1-D U-Net over the three components at once: (x_t, t) -> x0_hat.

Local convolutions only, plus one cheap global context gate at the bottleneck (a squeeze-and-excitation
channel gate: one mean over time, two tiny linear layers). No softmax attention, so the cost is linear in the
window length and a CPU can run it fast. Four resolution levels of kernel-5 convolutions and a dilated
bottleneck give a receptive field of several seconds either side of each sample, enough to see a P onset
together with the noise before it.

Input and output are ``(batch, 3, window_samples)`` in normalized units (see
:func:`models.degradation.normalize_window`); ``window_samples`` must be divisible by ``2 ** (levels - 1)``.
The step ``t`` enters as ``t / T`` through a sinusoidal embedding and FiLM in every residual block.
"""

from __future__ import annotations

import math

from typing import Any

import torch
from torch import nn

__all__ = ["UNet1D"]


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _TimeEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim * 2))

    def forward(self, t_frac: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t_frac.device, dtype=torch.float32) * (-math.log(1000.0) / half))
        arg = (t_frac.float() * 1000.0)[:, None] * freqs[None, :]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1))


class _ResBlock(nn.Module):
    """[GroupNorm -> SiLU -> Conv] x 2 with FiLM from the time embedding and a residual path."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, kernel: int = 5, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation)
        self.film = nn.Linear(t_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.film(temb).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.act(h))
        return h + self.skip(x)


class _ContextGate(nn.Module):
    """Squeeze-and-excitation: a global, linear-cost view of the whole window."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // 4), nn.SiLU(), nn.Linear(channels // 4, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=-1))).unsqueeze(-1)


def unet_trunk(net: Any, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """The encoder-decoder body shared by the waveform U-Net and the mask network: ``net`` has
    ``down_blocks``, ``downsamplers``, ``mid_blocks``, ``context``, ``upsamplers`` and ``up_blocks``;
    ``h`` is the stem's output ``(batch, width, time)``, ``temb`` the step embedding."""
    skips = []
    for i, block in enumerate(net.down_blocks):
        h = block(h, temb)
        if i < len(net.downsamplers):
            skips.append(h)
            h = net.downsamplers[i](h)
    for block in net.mid_blocks:
        h = block(h, temb)
    h = net.context(h)
    for up, block in zip(net.upsamplers, net.up_blocks):
        h = up(h)
        h = block(torch.cat([h, skips.pop()], dim=1), temb)
    return h


class UNet1D(nn.Module):
    """1-D U-Net predicting the clean window.

    Args:
        in_channels: components in (3).
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per level (4 levels by default: 3000 -> 1500 -> 750 -> 375 samples).
        kernel_size: convolution kernel (odd).
        bottleneck_dilations: dilations of the residual blocks at the coarsest level.
        time_dim: size of the step embedding.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 16,
        channel_mults: tuple[int, ...] = (1, 2, 4, 8),
        kernel_size: int = 5,
        bottleneck_dilations: tuple[int, ...] = (1, 2, 4),
        time_dim: int = 32,
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "kernel_size": kernel_size,
            "bottleneck_dilations": list(bottleneck_dilations),
            "time_dim": time_dim,
        }
        widths = [base_channels * m for m in channel_mults]
        t_dim = 2 * time_dim
        self.time_embedding = _TimeEmbedding(time_dim)
        self.stem = nn.Conv1d(in_channels, widths[0], 7, padding=3)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, w in enumerate(widths):
            c_in = widths[i - 1] if i > 0 else widths[0]
            self.down_blocks.append(_ResBlock(c_in, w, t_dim, kernel_size))
            if i < len(widths) - 1:
                self.downsamplers.append(nn.Conv1d(w, w, 4, stride=2, padding=1))
        self.mid_blocks = nn.ModuleList(
            [_ResBlock(widths[-1], widths[-1], t_dim, 3, dilation=d) for d in bottleneck_dilations]
        )
        self.context = _ContextGate(widths[-1])
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.upsamplers.append(nn.ConvTranspose1d(widths[i + 1], widths[i], 4, stride=2, padding=1))
            self.up_blocks.append(_ResBlock(2 * widths[i], widths[i], t_dim, kernel_size))
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(widths[0]), widths[0]), nn.SiLU(), nn.Conv1d(widths[0], in_channels, 3, padding=1)
        )
        self.downsampling_factor = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor, t_frac: torch.Tensor) -> torch.Tensor:
        """``x``: ``(batch, 3, time)``; ``t_frac``: ``(batch,)`` step as a fraction t/T in [0, 1]."""
        if x.shape[-1] % self.downsampling_factor:
            raise ValueError(f"length {x.shape[-1]} is not divisible by {self.downsampling_factor}")
        h = unet_trunk(self, self.stem(x), self.time_embedding(t_frac))
        # Residual on the input: at high SNR the clean window is close to the input.
        return self.head(h) + x
