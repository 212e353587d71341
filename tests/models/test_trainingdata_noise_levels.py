"""Synthetic microseism and high-frequency noise are scaled to the noise's power on the components it has.

A Z-only noise recording has zero horizontals; measuring its power over all three components makes the added
noise 4.8 dB weaker than the drawn level on the only component that is there."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import PairConfig, PairSampler, Recording

N = 9000


def _tone_noise(i, live):
    t = np.arange(N)
    data = np.zeros((3, N))
    for c in live:
        data[c] = np.sin(2 * np.pi * 10.0 * t / 100.0 + c)  # 10 Hz: far from the synthetic bands
    return Recording(f"XX_N{i}_1", f"XX.N{i}", data.astype(np.float32), None, None, 0 in live and 1 in live,
                     source="a")


def _event():
    rng = np.random.default_rng(0)
    data = 0.01 * rng.standard_normal((3, N))
    data[:, 900:1400] += 5 * np.sin(np.arange(500) / 3.0)
    # P at 900: too little pre-event noise for the noise pool, so only the tone recordings are noise
    return Recording("XX_E_1", "XX.E", data.astype(np.float32), 900, 1200, True, source="a")


@pytest.mark.parametrize("live", [(2,), (0, 1, 2)], ids=["Z only", "3-C"])
@pytest.mark.parametrize("kind", ["microseism", "high_freq"])
def test_added_noise_level_is_relative_to_the_live_components(live, kind):
    cfg = PairConfig(microseism_share=1.0 if kind == "microseism" else 0.0, microseism_db=(0.0, 0.0),
                     high_freq_share=1.0 if kind == "high_freq" else 0.0, high_freq_db=(0.0, 0.0))
    ps = PairSampler([_event()] + [_tone_noise(i, live) for i in range(3)], cfg, seed=5)
    f = np.fft.rfftfreq(cfg.window_samples, 1.0 / cfg.sampling_rate_hz)
    tone = (f > 8.0) & (f < 12.0)
    for _ in range(6):
        w = ps._noise_window(None, need_3c=False)
        spec = np.abs(np.fft.rfft(w[2].astype(np.float64))) ** 2
        ratio_db = 10 * np.log10(spec[~tone].sum() / spec[tone].sum())
        assert abs(ratio_db) < 1.5, f"added {kind} is {ratio_db:.1f} dB from the drawn 0 dB on Z"
