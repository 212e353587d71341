"""The training loop as a whole: resume, learning-rate schedule, EMA export, training log, on tiny models and a few
synthetic NCEDC-layout files the tests write themselves (no picker term, a handful of steps)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.train import TrainConfig, _Trainer

pytestmark = pytest.mark.timeout(60)


def _write_events(folder, seed: int = 0, n: int = 6) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data = 0.01 * rng.standard_normal((9001, 3))
        data[3000:3600] += np.sin(np.arange(600) / 3.0)[:, None] * 3
        np.savez(folder / f"XX_S{i}_2020.npz", data=data, itp=3000, its=3300, channels="HHE_HHN_HHZ")


def _unet_cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), batch_size=1, threads=1, base_channels=4, channel_mults=(1, 2),
                picker_weight=0.0, stft_weight=0.0, n_train_steps=4, progress=False, max_minutes=600.0)
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def _mask_cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), batch_size=1, threads=1, architecture="mask", mask_widths=(8, 16, 16),
                picker_weight=0.0, stft_weight=0.0, n_train_steps=4, progress=False, max_minutes=600.0,
                chain_steps=(1, 2, 4))
    return TrainConfig(**(base | kw))  # type: ignore[arg-type]


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("make_cfg", [_unet_cfg, _mask_cfg], ids=["unet-unfolded", "mask-chain"])
def test_resume_after_an_interruption_continues_the_same_run(tmp_path, make_cfg):
    """A run stopped after its last checkpoint and resumed ends where the uninterrupted run ends, bit for bit:
    same learning-rate schedule, same data stream, same torch random stream, same EMA."""
    _write_events(tmp_path / "ev")
    n = 3
    whole = _Trainer(make_cfg(tmp_path / "ev", tmp_path / "whole", max_steps=n))
    whole.run()

    cfg = make_cfg(tmp_path / "ev", tmp_path / "cut", max_steps=n, checkpoint_every_minutes=0.0)
    cut = _Trainer(cfg)
    real_step = cut.train_step

    def crash_at_third():
        if cut.step == 2:
            raise KeyboardInterrupt  # the process dies after the checkpoint of step 2
        return real_step()

    cut.train_step = crash_at_third  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    cfg.resume = True
    resumed = _Trainer(cfg)
    resumed.run()
    assert resumed.step == n
    assert _states_equal(resumed.model, whole.model)
    assert _states_equal(resumed.ema, whole.ema)


def test_the_logged_learning_rate_is_the_one_applied(tmp_path):
    """The training log's ``lr`` is the optimizer's learning rate at that step, warm-up included."""
    _write_events(tmp_path / "ev")
    trainer = _Trainer(_unet_cfg(tmp_path / "ev", tmp_path / "run", max_steps=50))
    applied = []

    def fake_step():
        applied.append(trainer.opt.param_groups[0]["lr"])
        return {"loss": 0.0}

    trainer.train_step = fake_step  # type: ignore[method-assign]
    trainer.run()
    recs = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [25, 50]
    for r in recs:
        assert r["lr"] == pytest.approx(applied[r["step"] - 1], rel=1e-9)


def test_the_cosine_decay_spans_the_wall_clock_budget(tmp_path, monkeypatch):
    """Bounded by minutes, the learning rate follows the cosine over the minutes (not over ``max_steps``) and ends
    near 2 % of the peak when the budget runs out."""
    import models.train as train_mod

    _write_events(tmp_path / "ev")
    clock = {"now": 1000.0}

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock["now"]

    trainer = _Trainer(_unet_cfg(tmp_path / "ev", tmp_path / "run", max_minutes=200.0, lr=1.0,
                                 checkpoint_every_minutes=1e6))
    applied = []

    def fake_step():
        applied.append(trainer.opt.param_groups[0]["lr"])
        clock["now"] += 60.0  # one minute per step: 200 steps fill the budget
        return {"loss": 0.0}

    trainer.train_step = fake_step  # type: ignore[method-assign]
    monkeypatch.setattr(train_mod, "time", FakeTime)
    trainer.run()
    assert len(applied) == 200
    for i in (100, 150, 199):
        expected = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * i / 200))
        assert applied[i] == pytest.approx(expected, rel=1e-6)


def test_the_exported_weights_are_the_moving_average(tmp_path):
    _write_events(tmp_path / "ev")
    trainer = _Trainer(_mask_cfg(tmp_path / "ev", tmp_path / "run", max_steps=3))
    path = trainer.run()
    exported, meta = load_checkpoint(path)
    assert _states_equal(exported, trainer.ema)
    assert not _states_equal(exported, trainer.model)
    assert meta["training"]["steps"] == 3


def test_a_given_split_file_is_used_and_described_with_its_own_seed(tmp_path):
    """``split_file``: training draws only from the file's training stations, and the sidecar describes the split
    by the seed it was made with, not by this run's seed (a fine-tune with another seed reuses a run's split)."""
    from models.data import make_station_split, write_split

    _write_events(tmp_path / "ev", n=10)
    stations = [f"XX.S{i}" for i in range(10)]
    split = make_station_split(stations, seed=7)
    write_split(tmp_path / "split.json", split, 7, "ev")
    trainer = _Trainer(_unet_cfg(tmp_path / "ev", tmp_path / "run", max_steps=1, seed=1,
                                 split_file=str(tmp_path / "split.json")))
    assert trainer.split == split
    assert {r.station for r in trainer.sampler.events} <= set(split["train"])
    meta = json.loads(trainer.run().with_suffix(".json").read_text())
    assert meta["training"]["split"]["seed"] == 7
    assert meta["training"]["split_stations"] == split


def test_a_checkpoint_cut_off_while_written_leaves_the_previous_one(tmp_path, monkeypatch):
    """A process killed while it writes its checkpoint leaves the previous checkpoint whole (weights, optimizer and
    both random streams of one step), so the resumed run still ends where the uninterrupted one ends."""
    _write_events(tmp_path / "ev")
    whole = _Trainer(_mask_cfg(tmp_path / "ev", tmp_path / "whole", max_steps=3))
    whole.run()

    cfg = _mask_cfg(tmp_path / "ev", tmp_path / "cut", max_steps=3, checkpoint_every_minutes=0.0)
    cut = _Trainer(cfg)
    real_save = torch.save

    def killed_while_writing(obj, f, *a, **kw):
        if cut.step == 2 and isinstance(obj, dict) and "opt" in obj:
            with open(f, "wb") as fh:
                fh.write(b"\x80\x02trunc")  # the first bytes made it to disk
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    monkeypatch.setattr(torch, "save", real_save)
    cfg.resume = True
    resumed = _Trainer(cfg)
    resumed.run()
    assert resumed.step == 3
    assert _states_equal(resumed.model, whole.model) and _states_equal(resumed.ema, whole.ema)
