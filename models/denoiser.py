"""The public denoiser: load weights, denoise windows (anytime).

``Denoiser.denoise_windows`` is the one entry point: ``(batch, 3, window_samples)`` float32 counts in spec
component order in, the same shape out. Recordings of any length are cut into windows, stitched and picked by
the service's own stages, also offline (``streamer.offline``, ``coldstream denoise``), so the offline tools and
the daemon run the same code.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt

from models.checkpoint import load_checkpoint
from models.degradation import SCALE_FLOOR, denormalize_window, make_schedule, normalize_window
from models.errors import InvalidParameterError, ShapeMismatchError, WeightsNotFoundError
from models.sampler import make_step_list, sample_cold, sample_direct
from models.spec import DEFAULT_SPEC, ModelSpec

log = logging.getLogger(__name__)

__all__ = ["DenoiseResult", "Denoiser", "SHIPPED_WEIGHTS"]

SHIPPED_WEIGHTS = "coldstream-cdiffsd-v2.pt"
"""File name of the shipped weights inside the ``models.weights`` package."""


@dataclass
class DenoiseResult:
    """``x0``: ``(batch, 3, window_samples)`` float32 counts; ``steps_done``: network calls; ``elapsed_ms``."""

    x0: np.ndarray
    steps_done: int
    elapsed_ms: float


def _mix_band(band: Any, sampling_rate_hz: float) -> tuple[tuple[float, float] | None, np.ndarray | None]:
    """Validate a sidecar's ``residual_mix_band_hz`` and design its zero-phase filter (second-order sections).

    ``None`` -> no band (the mix acts on every frequency). Raises :class:`InvalidParameterError`."""
    if band is None:
        return None, None
    try:
        lo, hi = (float(v) for v in band)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"residual_mix_band_hz must be [lo_hz, hi_hz], got {band!r}") from exc
    nyquist = sampling_rate_hz / 2
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi <= lo:
        raise InvalidParameterError(f"residual_mix_band_hz must satisfy 0 <= lo < hi, got {band!r}")
    if lo == 0 and hi >= nyquist:
        return (lo, hi), None  # every frequency: the plain mix
    if lo == 0:
        sos = butter(4, hi, btype="lowpass", fs=sampling_rate_hz, output="sos")
    elif hi >= nyquist:
        sos = butter(4, lo, btype="highpass", fs=sampling_rate_hz, output="sos")
    else:
        sos = butter(4, [lo, hi], btype="bandpass", fs=sampling_rate_hz, output="sos")
    return (lo, hi), np.asarray(sos)


def _resolve_device(device: str) -> str:
    """``"auto"``: CUDA when available, else CPU; an explicit CUDA device must exist (no silent fall-back)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device {device!r} requested but no CUDA device is available (use 'auto' or 'cpu')"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidParameterError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


class Denoiser:
    """A cold-diffusion denoiser ready to run.

    Attributes: ``spec`` (:class:`ModelSpec`), ``device``, ``name`` (weights file stem), ``version`` (first 12 hex
    digits of the weights' sha256), ``n_train_steps`` (T), ``default_steps`` (network calls used when ``steps`` is
    None; from the sidecar's ``recommended_steps``, else 1), ``residual_mix`` (share r of the removed part kept in
    the output, ``out = x0_hat + r * (y - x0_hat)``; from the sidecar's ``residual_mix`` unless given, else 0),
    ``residual_mix_band_hz`` (``(lo, hi)`` or None: where set, only the removed part inside that band is kept at
    r, through a zero-phase 4-pole Butterworth band-pass of ``y - x0_hat``, and outside it the estimate stands;
    ``lo = 0`` is a low-pass, ``hi`` at or above Nyquist a high-pass, ``(0, Nyquist)`` every frequency; from the
    sidecar unless given, else None),
    ``unconfirmed_p_threshold`` (the PhaseNet P probability a pick on this denoiser's output needs where PhaseNet
    on the raw input does not confirm it, :func:`models.peaks.confirm_p`; from the sidecar, None when the weights
    name none), ``meta`` (the sidecar).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        n_train_steps: int,
        schedule_kind: str = "linear",
        spec: ModelSpec = DEFAULT_SPEC,
        device: str = "cpu",
        mixed_precision: bool = True,
        name: str = "unnamed",
        version: str = "unversioned",
        meta: dict[str, Any] | None = None,
        residual_mix: float | None = None,
        residual_mix_band_hz: tuple[float, float] | None = None,
    ) -> None:
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.n_train_steps = int(n_train_steps)
        self.gammas = make_schedule(schedule_kind, self.n_train_steps).to(self.device)
        self.mixed_precision = bool(mixed_precision) and self.device.startswith("cuda")
        self.name = name
        self.version = version
        self.meta = meta or {}
        self.default_steps = int(self.meta.get("recommended_steps", 1))
        thr = self.meta.get("unconfirmed_p_threshold")
        self.unconfirmed_p_threshold = None if thr is None else float(thr)
        if self.unconfirmed_p_threshold is not None and not 0.0 < self.unconfirmed_p_threshold <= 1.0:
            raise InvalidParameterError(
                f"unconfirmed_p_threshold must be in (0, 1], got {self.unconfirmed_p_threshold}"
            )
        mix = self.meta.get("residual_mix", 0.0) if residual_mix is None else residual_mix
        self.residual_mix = float(mix)
        if not 0.0 <= self.residual_mix < 1.0:
            raise InvalidParameterError(f"residual_mix must be in [0, 1), got {self.residual_mix}")
        band = self.meta.get("residual_mix_band_hz") if residual_mix_band_hz is None else residual_mix_band_hz
        self.residual_mix_band_hz, self._mix_sos = _mix_band(band, float(spec.sampling_rate_hz))
        self._step_cost_ms: dict[int, float] = {}
        factor = int(getattr(model, "downsampling_factor", 1))
        if spec.window_samples % factor:
            raise ShapeMismatchError(f"window of {spec.window_samples} samples is not divisible by {factor}")

    # ---------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        mixed_precision: bool = True,
        sha256: str | None = None,
        residual_mix: float | None = None,
        residual_mix_band_hz: tuple[float, float] | None = None,
    ) -> Denoiser:
        """Load weights (``None``: the shipped ones) and verify their checksum.

        Raises :class:`models.errors.WeightsNotFoundError`, :class:`models.errors.ChecksumMismatchError` or
        :class:`models.errors.ShapeMismatchError`.
        """
        if path is None:
            res = importlib.resources.files("models.weights") / SHIPPED_WEIGHTS
            if not res.is_file():
                raise WeightsNotFoundError(f"shipped weights {SHIPPED_WEIGHTS} are missing from models/weights/")
            with importlib.resources.as_file(res) as p:
                return cls.load(p, device, mixed_precision, sha256, residual_mix, residual_mix_band_hz)
        path = Path(path)
        model, meta = load_checkpoint(path, sha256)
        spec_d = meta.get("spec") or {}
        try:
            spec = ModelSpec(**spec_d) if spec_d else DEFAULT_SPEC
        except TypeError as exc:
            raise ShapeMismatchError(f"{path}: the sidecar's spec is not a ModelSpec: {exc}") from exc
        sched = meta.get("schedule", {})
        den = cls(
            model,
            n_train_steps=int(sched.get("n_train_steps", 16)),
            schedule_kind=str(sched.get("kind", "linear")),
            spec=spec,
            device=device,
            mixed_precision=mixed_precision,
            name=path.stem,
            version=str(meta["sha256"])[:12],
            meta=meta,
            residual_mix=residual_mix,
            residual_mix_band_hz=residual_mix_band_hz,
        )
        log.info("denoiser %s (%s) loaded on %s, T=%d", den.name, den.version, den.device, den.n_train_steps)
        return den

    # ------------------------------------------------------------------------------------- windows
    def _model_fn(self, x: torch.Tensor, t_frac: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One network call; models that condition on the observation (``conditions_on_observation``) get ``y``
        as well as the state ``x``."""
        ctx = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.mixed_precision
            else contextlib.nullcontext()
        )
        with ctx:
            if y is not None and getattr(self.model, "conditions_on_observation", False):
                return self.model(x, t_frac, y).float()
            return self.model(x, t_frac).float()

    def denoise_windows(
        self,
        x: np.ndarray,
        steps: int | None = None,
        budget_ms: float | None = None,
        callback: Callable[[int, np.ndarray], None] | None = None,
    ) -> DenoiseResult:
        """Denoise ``(batch, 3, window_samples)`` windows in counts.

        ``steps``: network calls (1 = direct prediction, k > 1 = truncated cold sampler over an evenly spaced step
        list; None = ``default_steps``). ``budget_ms``: stop early and return the best estimate so far.
        Non-finite samples are treated as zero; all-zero windows come back as zeros, and windows whose every
        component is constant come back unchanged. ``callback(k, x0)`` sees each
        intermediate estimate in counts.
        """
        start = time.perf_counter()
        arr = np.asarray(x, dtype=np.float32)
        n, c = self.spec.window_samples, self.spec.n_components
        if arr.ndim != 3 or arr.shape[1:] != (c, n):
            raise ShapeMismatchError(f"expected (batch, {c}, {n}) windows, got {arr.shape}")
        arr = np.where(np.isfinite(arr), arr, np.float32(0.0))
        k = self.default_steps if steps is None else int(steps)
        k = max(1, min(k, self.n_train_steps))
        with torch.inference_mode():
            y = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
            yn, mean, scale = normalize_window(y.double())
            yn, mean, scale = yn.float(), mean, scale
            silent = (y.abs().amax(dim=(1, 2)) == 0) | (scale.view(-1) <= SCALE_FLOOR)
            # A window whose every component is constant (a flat-lined station, a constant fill) carries no
            # signal: it comes back as it went in. Its centred data are zero and its scale falls back to 1, so a
            # waveform network would otherwise draw its response to silence there, which a picker that
            # normalizes by the standard deviation sees at full scale.
            flat = (arr.max(axis=-1) == arr.min(axis=-1)).all(axis=1)[:, None, None]

            def finish(x0n: torch.Tensor) -> np.ndarray:
                est = self._to_counts(x0n, mean, scale, silent)
                if self.residual_mix:
                    # Keep a fraction of what the model removed: a noise floor under the estimate, so that a
                    # faint residual wavelet on a noise-only window is not the only thing a picker sees.
                    removed = arr - est
                    if self._mix_sos is not None:
                        # Only inside the band where arrivals are picked; outside it (the microseism, the
                        # highest frequencies) the estimate stands. A gain in [0, 1] per frequency still.
                        removed = sosfiltfilt(self._mix_sos, removed, axis=-1).astype(np.float32)
                    est = est + np.float32(self.residual_mix) * removed
                return np.where(flat, arr, est) if flat.any() else est

            cb = None
            if callback is not None:

                def cb(i: int, x0n: torch.Tensor) -> None:
                    callback(i, finish(x0n))

            def model_fn(xs: torch.Tensor, t_frac: torch.Tensor) -> torch.Tensor:
                return self._model_fn(xs, t_frac, yn)

            if k == 1:
                res = sample_direct(model_fn, yn, self.gammas, callback=cb)
            else:
                steps_list = make_step_list(self.n_train_steps, k)
                res = sample_cold(model_fn, yn, self.gammas, steps_list, callback=cb, budget_ms=budget_ms)
            out = finish(res.x0)
        return DenoiseResult(out, res.steps_done, (time.perf_counter() - start) * 1e3)

    @staticmethod
    def _to_counts(x0n: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, silent: torch.Tensor) -> np.ndarray:
        out = denormalize_window(x0n.double(), mean, scale)
        out = torch.where(silent.view(-1, 1, 1), torch.zeros_like(out), out)
        out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out.float().cpu().numpy()

    def warm_up(self, batch_size: int = 1) -> None:
        """Run one forward pass so the first real call does not pay for allocation and kernel selection."""
        self.step_cost_ms(batch_size)

    def step_cost_ms(self, batch_size: int) -> float:
        """Measured wall time (ms) of one network call for ``batch_size`` windows; cached per batch size."""
        if batch_size not in self._step_cost_ms:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch_size, self.spec.n_components, self.spec.window_samples)).astype(np.float32)
            self.denoise_windows(x, steps=1)
            costs = []
            for _ in range(3):
                costs.append(self.denoise_windows(x, steps=1).elapsed_ms)
            self._step_cost_ms[batch_size] = float(np.median(costs))
        return self._step_cost_ms[batch_size]
