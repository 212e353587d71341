"""A denoiser that can only attenuate: a bounded time-frequency gain on the observation.

``STFTMaskNet(x_t, t_frac, y) -> x0_hat`` with

    x0_hat = iSTFT( M(x_t, y, t) * STFT(y) ),   0 <= M <= 1 (a sigmoid),

so every time-frequency cell of the output is the observation's cell scaled down, never up: the network cannot
invent energy where the observation has none, and its output is the observation's own phase. It sees the current
cold-diffusion state x_t (x_t = x0 + gamma_t (y - x0), see :mod:`models.degradation`) *and* the observation y, so
every sampler step can refine the gain with the first estimate in view (``sample_cold`` gives the model x_t; the
:class:`models.denoiser.Denoiser` binds y). With no ``y`` given, ``y = x`` (the first step, where x_T = y).

Features: log STFT magnitudes of x_t and y for the three components, stacked as channels over STFT frames
(``3 * (n_fft / 2 + 1)`` bins each); a 1-D U-Net over frames (residual blocks with FiLM from the step embedding,
two down-samplings, a dilated bottleneck and a squeeze-and-excitation gate) gives the gain's logits per component
and bin. Erasing is still possible (M = 0); it is what the training loss penalises most (see
:func:`models.losses.asymmetric_magnitude_loss`), and the output can be floored towards y with
``Denoiser.residual_mix``, and with ``guard_db`` a measured lower bound on the gain keeps every cell far above its
own window's noise floor (:meth:`STFTMaskNet.guard`): an event onset clearly above the noise cannot be erased.
The guard has no weights; a sidecar's top-level ``guard_db`` sets it on loaded weights (an inference setting like
``residual_mix``), with ``guard_max_hz`` (the guard acts on bins up to that frequency only) and ``guard_smooth_s``
(a cell must stay above its floor for about that long, measured on the power averaged over that time).

Input and output are ``(batch, 3, window_samples)`` in normalized units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.unet import _ContextGate, _ResBlock, _TimeEmbedding, unet_trunk

__all__ = ["GUARD_QUANTILE", "STFTMaskNet"]

GUARD_QUANTILE = 0.2


class STFTMaskNet(nn.Module):
    """Bounded STFT gain predictor.

    Args:
        in_channels: components (3).
        n_fft: STFT size (samples); hop_length: STFT hop (samples). Hann window, centred frames.
        widths: channels of the three frame-resolution levels.
        bottleneck_dilations: dilations of the bottleneck residual blocks.
        time_dim: size of the step embedding.
    """

    conditions_on_observation = True
    downsampling_factor = 1

    def __init__(
        self,
        in_channels: int = 3,
        n_fft: int = 64,
        hop_length: int = 16,
        widths: tuple[int, ...] = (48, 96, 160),
        bottleneck_dilations: tuple[int, ...] = (1, 2, 4),
        time_dim: int = 32,
        guard_db: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "widths": list(widths),
            "bottleneck_dilations": list(bottleneck_dilations),
            "time_dim": time_dim,
        }
        self.n_fft, self.hop = n_fft, hop_length
        self.n_bins = n_fft // 2 + 1
        self.c = in_channels
        feat = 2 * in_channels * self.n_bins
        t_dim = 2 * time_dim
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.time_embedding = _TimeEmbedding(time_dim)
        self.stem = nn.Conv1d(feat, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, w in enumerate(widths):
            c_in = widths[i - 1] if i > 0 else widths[0]
            self.down_blocks.append(_ResBlock(c_in, w, t_dim, 5))
            if i < len(widths) - 1:
                self.downsamplers.append(nn.Conv1d(w, w, 4, stride=2, padding=1))
        self.mid_blocks = nn.ModuleList([_ResBlock(widths[-1], widths[-1], t_dim, 3, d) for d in bottleneck_dilations])
        self.context = _ContextGate(widths[-1])
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.upsamplers.append(nn.ConvTranspose1d(widths[i + 1], widths[i], 4, stride=2, padding=1))
            self.up_blocks.append(_ResBlock(2 * widths[i], widths[i], t_dim, 5))
        self.head = nn.Sequential(
            nn.GroupNorm(8 if widths[0] % 8 == 0 else 1, widths[0]), nn.SiLU(),
            nn.Conv1d(widths[0], in_channels * self.n_bins, 3, padding=1),
        )
        # Start near "keep everything": an untrained model passes the observation through.
        last = self.head[-1]
        assert isinstance(last, nn.Conv1d)  # narrowing for the type checker
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, 3.0)  # type: ignore[arg-type]  # the head convolution has a bias
        self._frame_multiple = 2 ** (len(widths) - 1)
        self.guard_db = tuple(guard_db) if guard_db else None
        self.guard_max_bin: int | None = None  # bins at or above it are left to the network (None: all guarded)
        self.guard_min_bin = 0  # bins below it are left to the network
        self.guard_smooth_frames = 1  # frames of the guard's moving power average (1: none)

    def set_guard(self, guard_db, max_hz: float | None = None, smooth_s: float | None = None,
                  sampling_rate_hz: float = 100.0, min_hz: float | None = None) -> None:
        """Configure the guard in physical units: ``guard_db`` (lo, hi) or None (off); ``max_hz``: guard only the
        bins whose centre frequency is at most this; ``smooth_s``: average the power over about this long (an odd
        number of frames) before comparing it with the floor; ``min_hz``: guard only the bins whose centre
        frequency is at least this (the lowest bins, where the microseism lies, are then left to the network)."""
        self.guard_db = tuple(guard_db) if guard_db else None  # type: ignore[assignment]
        self.guard_max_bin = None
        if max_hz is not None:
            self.guard_max_bin = int(max_hz * self.n_fft / sampling_rate_hz) + 1
        self.guard_min_bin = 0
        if min_hz:
            self.guard_min_bin = math.ceil(min_hz * self.n_fft / sampling_rate_hz - 1e-9)
        self.guard_smooth_frames = 1
        if smooth_s:
            half = int(round(smooth_s * sampling_rate_hz / self.hop / 2))
            self.guard_smooth_frames = 2 * half + 1

    def guard(self, sy: torch.Tensor) -> torch.Tensor:
        """The measured fall-back: a lower bound on the gain, ``(batch*3, bins, frames)`` in [0, 1].

        For each component and bin, the noise floor is the 20th percentile of the observation's magnitude over
        the window's frames. A cell ``guard_db[0]`` dB above its floor starts to be kept, one ``guard_db[1]`` dB
        above is kept whole, whatever the network says: stationary noise stays under the lower bound (a Rayleigh
        magnitude exceeds its 20th percentile by 15 dB about once in a thousand cells), a transient far above the
        noise of its own window (an event onset) cannot be erased. Coda-only windows, with no quiet frames, are
        left to the network.

        Two restrictions (``set_guard``) keep the guard from passing what no earthquake looks like: with
        ``guard_smooth_frames`` > 1 the power is averaged over that many frames first (a burst shorter than about
        a second, such as the modulated noise of a wind turbine, averages down; an arrival's energy lasts), and
        bins at or above ``guard_max_bin`` are not guarded at all (the network's judgement stands there; the
        guard exists for the low-frequency energy of an event, which the network can take for microseism)."""
        mag = sy.abs()
        k = self.guard_smooth_frames
        if k > 1:
            power = nn.functional.avg_pool1d(mag.pow(2), k, 1, k // 2, count_include_pad=False)
            mag = power[..., : sy.shape[-1]].sqrt()
        floor = torch.quantile(mag, GUARD_QUANTILE, dim=-1, keepdim=True).clamp(min=1e-6)
        snr_db = 20 * torch.log10(mag.clamp(min=1e-12) / floor)
        lo, hi = self.guard_db  # type: ignore[misc]  # set when the guard is on
        g = ((snr_db - lo) / (hi - lo)).clamp(0, 1)  # a new tensor: zeroing bins in place below is safe
        if self.guard_max_bin is not None:
            g[:, self.guard_max_bin :, :] = 0
        if self.guard_min_bin:
            g[:, : self.guard_min_bin, :] = 0
        return g

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        return torch.stft(x.reshape(b * c, n).float(), self.n_fft, self.hop, window=self.window,  # type: ignore[arg-type]
                          center=True,
                          return_complex=True)

    def mask(self, x: torch.Tensor, t_frac: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gain (batch, 3, bins, frames) in [0, 1], STFT of y (batch*3, bins, frames))``."""
        y = x if y is None else y
        b = x.shape[0]
        sx, sy = self._stft(x), self._stft(y)
        frames = sx.shape[-1]
        feats = torch.cat([torch.log(sx.abs() + 1e-3), torch.log(sy.abs() + 1e-3)], dim=0)
        feats = feats.reshape(2, b, self.c * self.n_bins, frames).permute(1, 0, 2, 3).reshape(b, -1, frames)
        pad = (-frames) % self._frame_multiple
        if pad:
            feats = nn.functional.pad(feats, (0, pad), mode="replicate")
        h = unet_trunk(self, self.stem(feats), self.time_embedding(t_frac))
        logits = self.head(h)[..., :frames].float()
        return torch.sigmoid(logits).reshape(b, self.c, self.n_bins, frames), sy

    def forward(self, x: torch.Tensor, t_frac: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: state ``(batch, 3, time)``; ``t_frac``: ``(batch,)`` t / T; ``y``: the observation (default x)."""
        n = x.shape[-1]
        m, sy = self.mask(x, t_frac, y)
        b = x.shape[0]
        m = m.reshape(b * self.c, self.n_bins, -1)
        if self.guard_db is not None:
            m = torch.maximum(m, self.guard(sy))
        spec = sy * m
        out = torch.istft(spec, self.n_fft, self.hop, window=self.window, center=True, length=n)  # type: ignore[arg-type]
        return out.reshape(b, self.c, n).to(x.dtype)
