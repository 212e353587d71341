from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from models import DEFAULT_SPEC, Denoiser, ShapeMismatchError

from denoiser_fixtures import IdentityModel, make_tiny_unet

N = DEFAULT_SPEC.window_samples


def test_shape_dtype_contract(tiny_denoiser, rng):
    x = (rng.standard_normal((4, 3, N)) * 500).astype(np.float32)
    for steps in (1, 2, 8, 100):
        res = tiny_denoiser.denoise_windows(x, steps=steps)
        assert res.x0.shape == x.shape and res.x0.dtype == np.float32
        assert res.steps_done == min(steps, tiny_denoiser.n_train_steps)
        assert res.elapsed_ms > 0
    with pytest.raises(ShapeMismatchError):
        tiny_denoiser.denoise_windows(np.zeros((1, 3, N - 1), np.float32))
    with pytest.raises(ShapeMismatchError):
        tiny_denoiser.denoise_windows(np.zeros((3, N), np.float32))


def test_determinism_under_a_seed(rng):
    x = (rng.standard_normal((2, 3, N)) * 10).astype(np.float32)
    a = Denoiser(make_tiny_unet(seed=7), n_train_steps=8).denoise_windows(x, steps=4).x0
    b = Denoiser(make_tiny_unet(seed=7), n_train_steps=8).denoise_windows(x, steps=4).x0
    np.testing.assert_array_equal(a, b)


def test_all_zero_and_non_finite_input(tiny_denoiser, rng):
    x = (rng.standard_normal((3, 3, N)) * 100).astype(np.float32)
    x[0] = 0.0
    x[1, 0, 100:200] = np.nan
    x[1, 2, 5] = np.inf
    x[2, :, 1000:] = 0.0  # partly zero-filled
    for steps in (1, 4):
        out = tiny_denoiser.denoise_windows(x, steps=steps).x0
        assert np.all(np.isfinite(out))
        assert np.all(out[0] == 0)


def test_amplitudes_come_back_in_counts(identity_denoiser, rng):
    for amp in (1e-3, 1.0, 1e7):
        x = (rng.standard_normal((2, 3, N)) * amp + 3 * amp).astype(np.float32)
        out = identity_denoiser.denoise_windows(x, steps=4).x0
        np.testing.assert_allclose(out, x, rtol=1e-4, atol=1e-4 * amp)


def test_budget_stops_early_and_callback_sees_estimates(rng):
    class Slow(IdentityModel):
        def forward(self, x, t):
            time.sleep(0.02)
            return x

    den = Denoiser(Slow(), n_train_steps=16)
    seen = []
    res = den.denoise_windows(rng.standard_normal((1, 3, N)).astype(np.float32), steps=16, budget_ms=70,
                              callback=lambda k, x0: seen.append((k, x0.shape)))
    assert 1 <= res.steps_done < 16 and len(seen) == res.steps_done
    assert res.elapsed_ms < 70 + 20 * 1.5 + 15


def test_step_cost_is_measured_and_cached(tiny_denoiser):
    tiny_denoiser.warm_up(2)
    a = tiny_denoiser.step_cost_ms(2)
    assert a > 0 and tiny_denoiser.step_cost_ms(2) == a


@pytest.mark.gpu
def test_gpu_mixed_precision_smoke(tiny_unet, rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    den = Denoiser(tiny_unet, n_train_steps=8, device="cuda", mixed_precision=True)
    out = den.denoise_windows(rng.standard_normal((2, 3, N)).astype(np.float32), steps=2).x0
    assert np.all(np.isfinite(out))


def test_residual_mix_keeps_a_share_of_the_removed_part(rng):
    from models.errors import InvalidParameterError

    x = (rng.standard_normal((2, 3, N)) * 50 + 7).astype(np.float32)
    half = Denoiser(IdentityModel(gain=0.5), n_train_steps=8, device="cpu")
    mixed = Denoiser(IdentityModel(gain=0.5), n_train_steps=8, device="cpu", residual_mix=0.2)
    est = half.denoise_windows(x, steps=1).x0
    np.testing.assert_allclose(mixed.denoise_windows(x, steps=1).x0, est + 0.2 * (x - est), rtol=1e-5, atol=1e-3)
    from_sidecar = Denoiser(IdentityModel(gain=0.5), n_train_steps=8, device="cpu", meta={"residual_mix": 0.2})
    assert from_sidecar.residual_mix == 0.2
    overridden = Denoiser(IdentityModel(), n_train_steps=8, device="cpu", meta={"residual_mix": 0.2}, residual_mix=0)
    assert overridden.residual_mix == 0.0
    with pytest.raises(InvalidParameterError, match="residual_mix"):
        Denoiser(IdentityModel(), n_train_steps=8, device="cpu", residual_mix=1.0)


def _band_energy(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(x[..., 500:-500], axis=-1)) ** 2
    f = np.fft.rfftfreq(x.shape[-1] - 1000, 1 / DEFAULT_SPEC.sampling_rate_hz)
    return float(spec[..., (f >= lo_hz) & (f < hi_hz)].sum())


def test_residual_mix_band_keeps_the_removed_part_only_inside_the_band(rng):
    """A model that removes everything (gain 0): with the mix limited to 1-20 Hz the output holds r of the
    input inside that band and nothing of the microseism or of the highest frequencies."""
    from models.errors import InvalidParameterError

    t = np.arange(N) / DEFAULT_SPEC.sampling_rate_hz
    x = np.zeros((1, 3, N), np.float32)
    x[:, :] = 1000 * np.sin(2 * np.pi * 0.2 * t) + 100 * np.sin(2 * np.pi * 5 * t) + 50 * np.sin(2 * np.pi * 35 * t)
    x += rng.standard_normal(x.shape).astype(np.float32)
    meta = {"residual_mix": 0.4, "residual_mix_band_hz": [1.0, 20.0]}
    den = Denoiser(IdentityModel(gain=0.0), n_train_steps=8, device="cpu", meta=meta)
    assert den.residual_mix_band_hz == (1.0, 20.0)
    out = den.denoise_windows(x, steps=1).x0
    ratio = {name: _band_energy(out, lo, hi) / _band_energy(x, lo, hi)
             for name, (lo, hi) in {"micro": (0.1, 0.3), "band": (4.5, 5.5), "high": (34, 36)}.items()}
    assert ratio["band"] == pytest.approx(0.16, rel=0.05)  # r^2 of the energy
    assert ratio["micro"] < 1e-3 and ratio["high"] < 1e-3
    plain = Denoiser(IdentityModel(gain=0.0), n_train_steps=8, device="cpu", meta={"residual_mix": 0.4})
    np.testing.assert_allclose(plain.denoise_windows(x, steps=1).x0, 0.4 * x, rtol=1e-5, atol=1e-2)
    # lo = 0: a low-pass; hi at Nyquist: a high-pass; the whole band: the plain mix
    low = Denoiser(IdentityModel(gain=0.0), n_train_steps=8, device="cpu",
                   meta={"residual_mix": 0.4, "residual_mix_band_hz": [0, 20]}).denoise_windows(x, steps=1).x0
    assert _band_energy(low, 0.1, 0.3) / _band_energy(x, 0.1, 0.3) == pytest.approx(0.16, rel=0.05)
    assert _band_energy(low, 34, 36) / _band_energy(x, 34, 36) < 1e-3
    high = Denoiser(IdentityModel(gain=0.0), n_train_steps=8, device="cpu",
                    meta={"residual_mix": 0.4, "residual_mix_band_hz": [1, 50]}).denoise_windows(x, steps=1).x0
    assert _band_energy(high, 0.1, 0.3) / _band_energy(x, 0.1, 0.3) < 1e-3
    assert _band_energy(high, 34, 36) / _band_energy(x, 34, 36) == pytest.approx(0.16, rel=0.05)
    whole = Denoiser(IdentityModel(gain=0.0), n_train_steps=8, device="cpu",
                     meta={"residual_mix": 0.4, "residual_mix_band_hz": [0, 50]})
    np.testing.assert_allclose(whole.denoise_windows(x, steps=1).x0, 0.4 * x, rtol=1e-5, atol=1e-2)
    for bad in ([20, 1], [-1, 5], "1-20", [1], [1, float("nan")]):
        with pytest.raises(InvalidParameterError, match="residual_mix_band_hz"):
            Denoiser(IdentityModel(), n_train_steps=8, device="cpu", meta={"residual_mix_band_hz": bad})
