from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from models import cli_evaluate, cli_train
from models.checkpoint import save_checkpoint
from models.data import load_npz_folder, make_station_split, write_split
from models.spec import DEFAULT_SPEC

from denoiser_fixtures import make_tiny_unet


def run_cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture
def tiny_weights(tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, make_tiny_unet(), schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__)
    return path


def test_cli_modules_define_the_plugin_interface():
    for module in (cli_train, cli_evaluate):
        assert isinstance(module.HELP, str) and module.HELP
        assert callable(module.add_arguments) and callable(module.run)


@pytest.mark.slow
def test_evaluate_cli_on_a_couple_of_events(tmp_path, tiny_weights, ncedc_dir, picker_cache):
    recs = load_npz_folder(ncedc_dir)
    split = make_station_split([r.station for r in recs], seed=0)
    # the split recorded with the weights, as `coldstream train` writes it: no --split-file needed
    weights = tmp_path / "with_split.pt"
    save_checkpoint(weights, make_tiny_unet(), schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__,
                    training={"split_stations": split})
    out = tmp_path / "eval"
    from streamer.commands import evaluate as evaluate_command  # the stream cases run the live path

    code = run_cli(evaluate_command, [
        "--data", str(ncedc_dir), "--out", str(out), "--weights", str(weights),
        "--steps", "1", "2", "--picker-cache", str(picker_cache), "--snr-levels", "-5", "5", "--noise-windows", "2",
        "--max-events", "4", "--no-progress", "--device", "cpu", "--protocol", "--protocol-steps", "1",
        "--protocol-noise-cases", "2",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"noisy", "bandpass", "denoised_1", "denoised_2", "clean"}
    assert "P_recall_below_5db" in metrics["methods"]["denoised_1"]["picks"]["0.5s"]
    assert "noise_only" in metrics["methods"]["noisy"]
    assert "p_picks_without_raw_support_per_window" in metrics["methods"]["denoised_1"]["noise_only"]
    assert (out / "report.md").read_text().startswith("# Denoiser evaluation")
    proto = json.loads((out / "protocol.json").read_text())
    assert {"noisy", "bandpass", "denoised_1"} <= set(proto["methods"]) and proto["n_noise_cases"] == 2
    assert proto["picking"] == "SeisBench classify"
    assert metrics["n_event_windows"] == 4 * 2  # four events of the test split, two SNR levels
    assert "Stream protocol" in (out / "report.md").read_text()
    for fig in ("examples.png", "metrics_vs_snr.png", "quality_vs_steps.png"):
        assert (out / fig).stat().st_size > 1000


def test_evaluate_cli_without_a_split_says_so(tmp_path, tiny_weights, caplog):
    code = run_cli(cli_evaluate, ["--data", str(tmp_path), "--out", str(tmp_path / "e"), "--weights",
                                  str(tiny_weights), "--no-progress"])
    assert code == 2
    assert "records no station split; pass --split-file" in caplog.text


def test_evaluate_cli_with_an_explicit_split_file(tmp_path, tiny_weights, caplog):
    split_file = tmp_path / "split.json"
    write_split(split_file, {"train": ["XX.A"], "val": ["XX.B"], "test": ["XX.C"]}, 0, "test")
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "XX_A_1.npz", data=np.zeros((9001, 3)), itp=3000, its=3500)
    code = run_cli(cli_evaluate, ["--data", str(tmp_path / "data"), "--split-file", str(split_file), "--out",
                                  str(tmp_path / "e"), "--weights", str(tiny_weights), "--no-progress"])
    assert code == 2
    assert "no recordings of the 'test' split" in caplog.text


@pytest.mark.parametrize(("argv", "expected"), [
    ([], 0.45),  # the weights' own, as the daemon
    (["--unconfirmed-p-threshold", "0.6"], 0.6),  # the override, as picker.unconfirmed_p_threshold
    (["--unconfirmed-p-threshold", "0.3"], None),  # at --p-threshold: the policy is off
    (["--unconfirmed-p-threshold", "0.4", "--p-threshold", "0.5"], None),
])
def test_evaluate_cli_overrides_the_weights_pick_policy(argv, expected):
    from types import SimpleNamespace

    parser = argparse.ArgumentParser()
    cli_evaluate.add_arguments(parser)
    args = parser.parse_args(["--data", "D", "--out", "O", *argv])
    den = SimpleNamespace(unconfirmed_p_threshold=0.45)
    cli_evaluate.apply_pick_policy(den, args)
    assert den.unconfirmed_p_threshold == expected
