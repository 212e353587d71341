"""What one training step feeds the network, against what the sampler feeds it at inference: the chain of K steps,
and the observation a mask model sees. Trainers are built without data (only the step under test runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.degradation import make_schedule
from models.masknet import STFTMaskNet
from models.sampler import make_step_list, sample_cold
from models.train import TrainConfig, _Trainer

pytestmark = pytest.mark.timeout(60)


class _Recorder(torch.nn.Module):
    """A model that conditions on the observation, records its calls, and predicts a fixed shrink of its state."""

    conditions_on_observation = True

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(0.7))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, t_frac, y=None):
        self.calls.append((x.detach().clone(), t_frac.detach().clone(), None if y is None else y.detach().clone()))
        return self.gain * x + 0.1 * (y if y is not None else x)


class _Batch:
    def __init__(self, rng: np.random.Generator, b: int = 2, n: int = 3000) -> None:
        self.y = rng.standard_normal((b, 3, n)).astype(np.float32)
        self.x0 = (0.5 * self.y).astype(np.float32)
        self.p = np.full(b, 1000, np.int64)
        self.s = np.full(b, 1300, np.int64)


class _Sampler:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def draw(self, b):
        return _Batch(self.rng, b)


def _bare_trainer(model: torch.nn.Module, **kw) -> _Trainer:
    cfg = TrainConfig(**(dict(data="unused", out="unused", picker_weight=0.0, stft_weight=0.0, n_train_steps=8,
                              batch_size=2) | kw))  # type: ignore[arg-type]
    trainer = _Trainer.__new__(_Trainer)
    trainer.cfg = cfg
    trainer.device = torch.device("cpu")
    trainer.picker_loss = None
    trainer.sampler = _Sampler()
    trainer.gammas = make_schedule(cfg.schedule, cfg.n_train_steps)
    trainer.model = model
    trainer.ema = model
    trainer.opt = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer.step = 0
    return trainer


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_a_training_chain_calls_the_network_as_the_sampler_does(k):
    """The chain of K steps trains on exactly the (state, t/T, observation) the sampler passes at inference."""
    model = _Recorder()
    trainer = _bare_trainer(model, chain_steps=(k,))
    yn, x0n, w = trainer._batch(_Batch(np.random.default_rng(3)))
    trainer.chain_step(yn, x0n, w)
    trained = list(model.calls)
    model.calls.clear()
    gammas = make_schedule("linear", 8)
    sample_cold(lambda x, t: model(x, t, yn), yn, gammas, make_step_list(8, k))
    assert len(trained) == len(model.calls) == len(make_step_list(8, k)) - 1
    for (xa, ta, ya), (xb, tb, yb) in zip(trained, model.calls):
        assert torch.allclose(xa, xb, atol=1e-6) and torch.equal(ta, tb) and torch.equal(ya, yb)


def test_a_mask_model_trained_without_chains_sees_the_observation():
    """The mask model's gain applies to the observation y at inference (every step gets y); the teacher-forced
    training step (no ``chain_steps``) must give it y too, not its state x_t in y's place."""
    model = _Recorder()
    trainer = _bare_trainer(model, unfold_weight=0.5, p_top=0.0)
    yn, _, _ = trainer._batch(trainer.sampler.draw(2))
    trainer.sampler = _Sampler()  # the step draws the same batch again
    trainer.train_step()
    assert len(model.calls) == 2  # direct term and unfolded term
    for x, _, y in model.calls:
        assert y is not None and torch.equal(y, yn)
        assert not torch.equal(x, yn)  # t < T: the state is not the observation


def test_a_tiny_mask_network_trains_without_chains():
    """The same on the real mask network: one teacher-forced step runs and its gain is applied to y."""
    torch.manual_seed(0)
    model = STFTMaskNet(widths=(8, 16, 16))
    trainer = _bare_trainer(model, unfold_weight=0.5, n_train_steps=4)
    seen = []
    real = model.forward

    def spy(x, t_frac, y=None):
        seen.append(y is not None)
        return real(x, t_frac, y)

    model.forward = spy  # type: ignore[method-assign]
    out = trainer.train_step()
    assert np.isfinite(out["loss"]) and seen == [True, True]


def test_the_keep_term_enters_the_loss_with_its_weight():
    """``keep_weight`` adds the keep term to the total, scaled as configured; 0 leaves the loss as before."""
    batch = _Batch(np.random.default_rng(5))
    batch.x0 = (0.9 * batch.y).astype(np.float32)  # the noise, y - x0, is 19 dB under the signal in every cell
    totals = {}
    for weight in (0.0, 2.0):
        trainer = _bare_trainer(_Recorder(), keep_weight=weight)
        yn, x0n, w = trainer._batch(batch)
        parts = trainer._loss(0.2 * x0n, x0n, w, y=yn)
        totals[weight] = (float(parts["total"]), float(parts.get("keep", 0.0)))
    assert totals[0.0][1] == 0.0 and totals[2.0][1] > 0.5  # 0.2 of every signal cell kept: 0.8 of it lost
    assert totals[2.0][0] == pytest.approx(totals[0.0][0] + 2.0 * totals[2.0][1], rel=1e-5)
