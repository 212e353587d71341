"""``bench/step_schedules.py``: its step list reaches the sampler, its lists are checked, its table is right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import models.denoiser as denoiser_module
from denoiser_fixtures import make_tiny_unet
from models.checkpoint import save_checkpoint
from models.denoiser import Denoiser
from models.spec import DEFAULT_SPEC


def _script():
    path = Path(__file__).resolve().parents[2] / "bench" / "step_schedules.py"
    spec = importlib.util.spec_from_file_location("bench_step_schedules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_step_list_reaches_the_sampler_and_is_restored(tmp_path, monkeypatch):
    bench = _script()
    weights = tmp_path / "tiny.pt"
    save_checkpoint(weights, make_tiny_unet(), schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__)
    den = Denoiser.load(weights, device="cpu")
    seen: list[list[int]] = []
    original = denoiser_module.sample_cold

    def recording(model, y, gammas, steps=None, **kw):
        seen.append(list(steps))
        return original(model, y, gammas, steps, **kw)

    monkeypatch.setattr(denoiser_module, "sample_cold", recording)
    x = np.random.default_rng(0).standard_normal((1, 3, DEFAULT_SPEC.window_samples)).astype(np.float32)
    with bench.use_step_list([4, 1, 0]):
        concentrated = den.denoise_windows(x, steps=2).x0
    even = den.denoise_windows(x, steps=2).x0
    assert seen == [[4, 1, 0], [4, 2, 0]]
    assert not np.array_equal(concentrated, even)


def test_step_lists_must_fall_to_zero():
    bench = _script()
    assert bench.parse_list("8,2,1,0") == [8, 2, 1, 0]
    for bad in ("8,4", "8,8,0", "8", "4,6,0"):
        with pytest.raises(ValueError):
            bench.parse_list(bad)


def _report(method: str, recall: float, noise: int) -> dict:
    def mix(r: float, n: int) -> dict:
        return {"by_snr": {"0": {"p_recall": r}, "5": {"p_recall": r}}, "noise_p_picks": n, "snr_gain_db": 2.0,
                "p_residual_mean_s": 0.01, "p_residual_std_s": 0.1}
    return {"sources": {s: {"mixtures": {"raw": mix(0.5, 7), method: mix(recall, noise)}} for s in ("a", "b")}}


def test_summary_has_the_raw_row_and_one_row_per_list():
    bench = _script()
    table = bench.summarize({"[4, 0]": _report("w/1", 0.75, 3), "[4, 2, 0]": _report("w/2", 0.25, 9)})
    lines = table.splitlines()
    assert lines[2] == "| raw input | 0.50 / 0.50 | 7 + 7 | 2.0 / 2.0 | 0.010±0.100 |"
    assert lines[3].startswith("| [4, 0] | 0.75 / 0.75 | 3 + 3 |")
    assert lines[4].startswith("| [4, 2, 0] | 0.25 / 0.25 | 9 + 9 |")
    with pytest.raises(ValueError):
        bench.summarize({"x": {"sources": {"a": {"mixtures": {"raw": {}, "u/1": {}, "v/1": {}}}}}})
