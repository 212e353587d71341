"""``coldstream train``'s options reach the training configuration (nothing parsed and dropped)."""

from __future__ import annotations

import argparse

import pytest

import models.train as train_mod
from models import cli_train

pytestmark = pytest.mark.timeout(30)


def _config_of(monkeypatch, argv: list[str]) -> train_mod.TrainConfig:
    seen: list[train_mod.TrainConfig] = []

    def fake_train(cfg):
        seen.append(cfg)
        return "weights.pt"

    monkeypatch.setattr(train_mod, "train", fake_train)
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    assert cli_train.run(parser.parse_args(argv)) == 0
    return seen[0]


def test_every_option_reaches_the_training_configuration(monkeypatch, tmp_path):
    argv = ["--data", "D", "--out", "O", "--sources", "a", "b", "--architecture", "mask", "--chain-steps", "1", "2",
            "--chain-probabilities", "0.6", "0.4", "--snapshot-minutes", "5", "10", "--asym-weight", "1.5",
            "--keep-weight", "0.7", "--keep-db", "4",
            "--max-minutes", "7", "--max-steps", "99", "--seed", "3", "--resume", "--split-file", "S.json",
            "--batch-size", "4", "--lr", "0.002", "--n-train-steps", "8", "--schedule", "cosine", "--base-channels",
            "12", "--unfold-weight", "0.25", "--stft-weight", "0.3", "--picker-weight", "1.5", "--false-pick-weight",
            "5", "--picker-mix", "0.4", "--picker-mix-both", "--train-guard", "8", "14", "--train-guard-max-hz", "5",
            "--train-guard-smooth-s", "1", "--noise-only-share", "0.3", "--init-weights", "I.pt", "--picker-cache",
            str(tmp_path), "--device", "cpu", "--threads", "1", "--no-progress"]
    cfg = _config_of(monkeypatch, argv)
    assert (cfg.data, cfg.out, cfg.sources, cfg.architecture) == ("D", "O", ("a", "b"), "mask")
    assert cfg.chain_steps == (1, 2) and cfg.chain_probabilities == (0.6, 0.4) and cfg.snapshot_minutes == (5.0, 10.0)
    assert (cfg.asym_weight, cfg.max_minutes, cfg.max_steps, cfg.seed, cfg.resume) == (1.5, 7.0, 99, 3, True)
    assert (cfg.split_file, cfg.batch_size, cfg.lr, cfg.n_train_steps, cfg.schedule) == ("S.json", 4, 0.002, 8,
                                                                                          "cosine")
    assert (cfg.base_channels, cfg.unfold_weight, cfg.stft_weight, cfg.picker_weight) == (12, 0.25, 0.3, 1.5)
    assert (cfg.false_pick_weight, cfg.picker_mix, cfg.picker_mix_both) == (5.0, 0.4, True)
    assert (cfg.keep_weight, cfg.keep_db) == (0.7, 4.0)
    assert (cfg.train_guard_db, cfg.train_guard_max_hz, cfg.train_guard_smooth_s) == ((8.0, 14.0), 5.0, 1.0)
    assert cfg.pairs.noise_only_share == 0.3 and cfg.init_weights == "I.pt" and cfg.picker_cache == str(tmp_path)
    assert (cfg.device, cfg.threads, cfg.progress) == ("cpu", 1, False)


@pytest.mark.parametrize("extra", [
    ["--chain-probabilities", "0.5", "0.5"],  # probabilities without chains
    ["--chain-steps", "1", "2", "4", "--chain-probabilities", "0.5", "0.5"],  # one probability short
    ["--train-guard-max-hz", "5"],  # guard restrictions without a guard
    ["--train-guard-smooth-s", "1"],
])
def test_an_option_that_would_be_ignored_is_refused(monkeypatch, extra):
    """Options that only mean something together with another are refused alone, not silently dropped."""
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    monkeypatch.setattr(train_mod, "train", lambda cfg: pytest.fail("training started"))
    assert cli_train.run(parser.parse_args(["--data", "D", "--out", "O", "--architecture", "mask", *extra])) == 2
