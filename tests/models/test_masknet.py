"""STFTMaskNet: shape contract, it cannot invent (bounded gain on the observation), it passes the observation
through when untrained, the Denoiser gives it the observation at every step, and a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.denoiser import Denoiser
from models.masknet import STFTMaskNet


def _tiny(seed: int = 0) -> STFTMaskNet:
    torch.manual_seed(seed)
    return STFTMaskNet(widths=(8, 16, 16), bottleneck_dilations=(1,), time_dim=8).eval()


def test_shape_and_dtype():
    m = _tiny()
    x = torch.randn(2, 3, 3000)
    out = m(x, torch.ones(2), x)
    assert out.shape == x.shape and out.dtype == torch.float32


def test_cannot_invent_energy_or_signal():
    m = _tiny()
    torch.nn.init.normal_(m.head[-1].weight, std=1.0)  # an arbitrary, non-trivial gain
    x, y = torch.randn(3, 3, 3000) * 5, torch.randn(3, 3, 3000)
    with torch.no_grad():
        out = m(x, torch.full((3,), 0.5), y)
        assert (out**2).sum() <= (y**2).sum() * (1 + 1e-4)
        silent = m(x, torch.ones(3), torch.zeros_like(y))
    assert float(silent.abs().max()) == 0.0  # whatever the state, nothing where the observation is silent


def test_untrained_model_nearly_passes_the_observation():
    m = _tiny()
    y = torch.randn(1, 3, 3000)
    with torch.no_grad():
        out = m(y, torch.ones(1))
    g = float((out * y).sum() / (y * y).sum())
    assert 0.9 < g <= 1.0


def test_denoiser_binds_the_observation_and_one_step_is_direct():
    den = Denoiser(_tiny(), n_train_steps=8, device="cpu", name="mask", version="test")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3000)).astype(np.float32) * 100
    seen = []
    orig = den.model.forward

    def spy(xs, t, y=None):
        seen.append(y is not None)
        return orig(xs, t, y)

    den.model.forward = spy  # type: ignore[method-assign]
    r1 = den.denoise_windows(x, steps=1)
    r4 = den.denoise_windows(x, steps=4)
    assert r1.steps_done == 1 and r4.steps_done == 4 and all(seen)
    assert r1.x0.shape == x.shape and np.isfinite(r4.x0).all()


def test_save_load_round_trip(tmp_path):
    m = _tiny()
    save_checkpoint(tmp_path / "m.pt", m, schedule_kind="linear", n_train_steps=8, spec={})
    m2, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["model_class"] == "STFTMaskNet" and isinstance(m2, STFTMaskNet)
    x = torch.randn(1, 3, 3000)
    with torch.no_grad():
        assert torch.allclose(m(x, torch.ones(1)), m2(x, torch.ones(1)))


@pytest.mark.parametrize("n", [3000, 2999, 1024])
def test_any_window_length(n):
    m = _tiny()
    x = torch.randn(1, 3, n)
    with torch.no_grad():
        assert m(x, torch.ones(1)).shape == (1, 3, n)


def test_guard_keeps_a_clear_transient_that_the_network_would_erase():
    m = _tiny()
    torch.nn.init.constant_(m.head[-1].bias, -30.0)  # the network erases everything
    rng = np.random.default_rng(2)
    y = rng.standard_normal((1, 3, 3000)).astype(np.float32)
    t = np.arange(500) / 100.0
    y[0, :, 1500:2000] += 40 * np.exp(-t / 1.0) * np.sin(2 * np.pi * 4 * t)  # an onset far above the noise
    y = torch.from_numpy(y)
    with torch.no_grad():
        erased = m(y, torch.ones(1))
        m.guard_db = (15.0, 25.0)
        kept = m(y, torch.ones(1))
    assert float(erased.abs().max()) < 1e-3
    peak = float(kept[0, 2, 1500:2000].abs().max() / y[0, 2, 1500:2000].abs().max())
    assert peak > 0.8
    noise_left = float(kept[0, 2, :1400].pow(2).mean() / y[0, 2, :1400].pow(2).mean())
    assert noise_left < 0.05  # stationary noise stays under the guard


def test_guard_setting_comes_from_the_sidecar(tmp_path):
    from models.checkpoint import release_checkpoint

    save_checkpoint(tmp_path / "m.pt", _tiny(), schedule_kind="linear", n_train_steps=8, spec={})
    release_checkpoint(tmp_path / "m.pt", tmp_path / "g.pt", guard_db=[15, 25])
    assert load_checkpoint(tmp_path / "m.pt")[0].guard_db is None
    assert load_checkpoint(tmp_path / "g.pt")[0].guard_db == (15, 25)


def _eraser() -> STFTMaskNet:
    m = _tiny()
    torch.nn.init.constant_(m.head[-1].bias, -30.0)  # the network erases everything: only the guard keeps anything
    return m


def _kept(m: STFTMaskNet, y: np.ndarray, sl: slice) -> float:
    with torch.no_grad():
        out = m(torch.from_numpy(y), torch.ones(1))
    return float(out[0, 2, sl].abs().max() / np.abs(y[0, 2, sl]).max())


def _noise(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 3000)).astype(np.float32)


def test_guard_smoothing_keeps_a_lasting_arrival_and_not_a_short_burst():
    t = np.arange(3000) / 100.0
    arrival, burst = _noise(), _noise()
    arrival[0, :, 1500:2100] += 12 * np.sin(2 * np.pi * 3 * t[:600]) * np.exp(-t[:600] / 3.0)  # lasts seconds
    burst[0, :, 1500:1515] += 8 * np.sin(2 * np.pi * 20 * t[:15])  # 0.15 s, loud enough for the plain guard
    m = _eraser()
    m.set_guard((12.0, 20.0))
    burst_plain = _kept(m, burst, slice(1500, 1515))
    m.set_guard((12.0, 20.0), smooth_s=1.0)
    assert m.guard_smooth_frames == 7  # 1 s at hop 16 and 100 Hz: an odd number of frames
    assert _kept(m, arrival, slice(1500, 2100)) > 0.8
    assert burst_plain > 0.5
    assert _kept(m, burst, slice(1500, 1515)) < 0.5 * burst_plain


def test_guard_max_hz_leaves_higher_bins_to_the_network():
    t = np.arange(600) / 100.0
    low, high = _noise(), _noise()
    low[0, :, 1500:2100] += 12 * np.sin(2 * np.pi * 2 * t) * np.exp(-t / 3.0)
    high[0, :, 1500:2100] += 12 * np.sin(2 * np.pi * 20 * t) * np.exp(-t / 3.0)
    m = _eraser()
    m.set_guard((12.0, 20.0), max_hz=5.0)
    assert m.guard_max_bin == 4  # bins 0-3 (0, 1.6, 3.1, 4.7 Hz) are guarded
    assert _kept(m, low, slice(1500, 2100)) > 0.8
    assert _kept(m, high, slice(1500, 2100)) < 0.05  # erased: above 5 Hz the network's gain stands
    m.set_guard((12.0, 20.0))
    assert _kept(m, high, slice(1500, 2100)) > 0.8


def test_guard_min_hz_leaves_the_lowest_bins_to_the_network():
    """A lasting 0.2 Hz swell (microseism, far above the window's own floor in the lowest bin) is mostly kept by
    a guard on every bin and left to the network (here: erased) with ``min_hz`` above the bins it reaches; what
    leaks into the 1.6 Hz bin of a 64-sample STFT is still guarded there. A 2 Hz arrival is kept."""
    t = np.arange(3000) / 100.0
    swell, arrival = _noise(), _noise()
    swell[0, :, 1000:2600] += 12 * np.sin(2 * np.pi * 0.2 * t[:1600]) * np.hanning(1600)
    arrival[0, :, 1500:2100] += 12 * np.sin(2 * np.pi * 2 * t[:600]) * np.exp(-t[:600] / 3.0)
    m = _eraser()
    m.set_guard((12.0, 20.0), max_hz=5.0)
    assert _kept(m, swell, slice(1000, 2600)) > 0.5
    m.set_guard((12.0, 20.0), max_hz=5.0, min_hz=1.0)
    assert m.guard_min_bin == 1  # bin 0 (0-0.8 Hz) is the network's
    assert _kept(m, swell, slice(1000, 2600)) < 0.4
    assert _kept(m, arrival, slice(1500, 2100)) > 0.8
    m.set_guard((12.0, 20.0), max_hz=5.0, min_hz=2.0)
    assert m.guard_min_bin == 2
    assert _kept(m, swell, slice(1000, 2600)) < 0.05


def test_guard_restrictions_come_from_the_sidecar(tmp_path):
    from models.checkpoint import release_checkpoint

    save_checkpoint(tmp_path / "m.pt", _tiny(), schedule_kind="linear", n_train_steps=8,
                    spec={"sampling_rate_hz": 50.0})
    release_checkpoint(tmp_path / "m.pt", tmp_path / "g.pt", guard_db=[8, 14], guard_max_hz=5.0, guard_smooth_s=1.0,
                       guard_min_hz=1.0)
    m = load_checkpoint(tmp_path / "g.pt")[0]
    assert m.guard_db == (8, 14)
    assert m.guard_min_bin == 2  # bin centres at 50 Hz: 0, 0.78, 1.56 Hz
    assert m.guard_max_bin == int(5.0 * 64 / 50.0) + 1  # converted at the weights' own sampling rate
    assert m.guard_smooth_frames == 2 * round(1.0 * 50.0 / 16 / 2) + 1
    plain = load_checkpoint(tmp_path / "m.pt")[0]
    assert plain.guard_db is None and plain.guard_max_bin is None and plain.guard_smooth_frames == 1
    assert plain.guard_min_bin == 0
