from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import ChecksumMismatchError, ShapeMismatchError, WeightsNotFoundError
from models.errors import InvalidParameterError
from models.checkpoint import file_sha256, load_checkpoint, release_checkpoint, save_checkpoint, sidecar_path
from models.denoiser import SHIPPED_WEIGHTS, Denoiser
from models.spec import DEFAULT_SPEC

from denoiser_fixtures import make_tiny_unet


def _save(tmp_path, seed=0):
    model = make_tiny_unet(seed)
    path = tmp_path / "tiny.pt"
    meta = save_checkpoint(
        path, model, schedule_kind="linear", n_train_steps=8, spec=DEFAULT_SPEC.__dict__, training={"data": "none"}
    )
    return model, path, meta


def test_save_load_round_trip_gives_identical_outputs(tmp_path, rng):
    model, path, meta = _save(tmp_path)
    assert meta["sha256"] == file_sha256(path)
    side = json.loads(sidecar_path(path).read_text())
    for key in ("model_args", "schedule", "normalization", "training", "code_version", "sha256"):
        assert key in side
    loaded, _ = load_checkpoint(path)
    x = torch.from_numpy(rng.standard_normal((2, 3, 3000)).astype(np.float32))
    t = torch.full((2,), 1.0)
    with torch.inference_mode():
        assert torch.equal(model(x, t), loaded(x, t))
    den_a = Denoiser(model, n_train_steps=8)
    den_b = Denoiser.load(path, device="cpu")
    xa = rng.standard_normal((2, 3, 3000)).astype(np.float32) * 1000
    np.testing.assert_array_equal(den_a.denoise_windows(xa, steps=3).x0, den_b.denoise_windows(xa, steps=3).x0)
    assert den_b.version == meta["sha256"][:12] and den_b.n_train_steps == 8 and den_b.name == "tiny"


def test_missing_file_checksum_and_shape_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        Denoiser.load(tmp_path / "absent.pt")
    _, path, meta = _save(tmp_path)
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        Denoiser.load(path, sha256="0" * 64)
    side = json.loads(sidecar_path(path).read_text())
    side["model_args"]["base_channels"] = 8
    side["sha256"] = meta["sha256"]
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ShapeMismatchError, match="do not fit"):
        Denoiser.load(path)


def test_shipped_weights_load_with_verified_checksum():
    den = Denoiser.load(device="cpu")
    assert den.name == SHIPPED_WEIGHTS.removesuffix(".pt")
    assert len(den.version) == 12 and den.meta["sha256"].startswith(den.version)
    assert den.spec == DEFAULT_SPEC
    with pytest.raises(ChecksumMismatchError):
        Denoiser.load(device="cpu", sha256="f" * 64)
    out = den.denoise_windows(np.zeros((1, 3, DEFAULT_SPEC.window_samples), np.float32))
    assert np.all(out.x0 == 0)


def test_denoiser_benchmark_script_runs_small(tmp_path, monkeypatch, capsys):
    """``bench/denoiser.py`` stays runnable: a tiny checkpoint, one batch size and step count, JSON out."""
    import importlib.util
    import sys
    from pathlib import Path

    weights = tmp_path / "tiny.pt"
    save_checkpoint(weights, make_tiny_unet(), schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__)
    path = Path(__file__).resolve().parents[2] / "bench" / "denoiser.py"
    spec = importlib.util.spec_from_file_location("bench_denoiser", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["denoiser.py", "--weights", str(weights), "--batch-sizes", "2",
                                      "--steps", "1", "2", "--min-seconds", "0.05", "--json", "--threads", "1"])
    assert bench.main() == 0
    res = json.loads(capsys.readouterr().out)
    assert res["flops_per_window_step"] > 0
    assert set(res["windows_per_s"]["2"]) == {"1", "2"} and res["windows_per_s"]["2"]["1"] > 0


def test_batch_shapes_benchmark_runs_small(tmp_path):
    """``bench/batch_shapes.py`` stays runnable and pads as the worker does (a fresh process per setting)."""
    import subprocess
    import sys
    from pathlib import Path

    weights = tmp_path / "tiny.pt"
    save_checkpoint(weights, make_tiny_unet(), schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__)
    script = Path(__file__).resolve().parents[2] / "bench" / "batch_shapes.py"
    out = subprocess.run([sys.executable, str(script), "--weights", str(weights), "--seconds", "0.3", "--max-batch", "4",
                          "--pad", "1", "4", "--threads", "1"], capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 4]
    assert int(rows[1][1]) == 1  # padded to a multiple of 4 with at most 4: one shape
    assert all(float(r[5]) > 0 for r in rows)


def test_release_adds_inference_defaults_and_keeps_the_checksum(tmp_path):
    src = tmp_path / "run" / "trained.pt"
    meta = save_checkpoint(src, make_tiny_unet(), schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__)
    dst = tmp_path / "weights" / "released.pt"
    release_checkpoint(src, dst, recommended_steps=4, residual_mix=0.2, unconfirmed_p_threshold=0.45)
    den = Denoiser.load(dst, device="cpu")
    assert den.version == meta["sha256"][:12] and den.default_steps == 4 and den.residual_mix == 0.2
    assert den.unconfirmed_p_threshold == 0.45
    assert Denoiser.load(src, device="cpu").unconfirmed_p_threshold is None  # weights that name none
    release_checkpoint(src, tmp_path / "bad.pt", unconfirmed_p_threshold=1.5)
    with pytest.raises(InvalidParameterError, match="unconfirmed_p_threshold"):
        Denoiser.load(tmp_path / "bad.pt", device="cpu")
    assert json.loads(sidecar_path(dst).read_text())["released_from"] == "trained.pt"
