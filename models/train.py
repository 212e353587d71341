"""Training loop for the cold-diffusion denoiser.

One step, in normalized units (both y and x0 divided by the noisy window's scale, see
:func:`models.degradation.normalize_window`):

1. draw a batch of pairs (:class:`models.data.PairSampler`) and a step t per window (t = T with probability
   ``p_top`` because direct prediction is the common use; otherwise uniform in 1..T-1);
2. x_t = D(x0, t); x0_hat = f(x_t, t);
3. unfolded term (Yen et al. 2023, with the *same* operator): t' uniform in 1..t-1, x' = D(sg(x0_hat), t') -- the
   state the sampler actually visits after its first step -- and x0_tilde = f(x', t');
4. loss = L(x0_hat) + ``unfold_weight`` * L(x0_tilde), with L = onset-weighted L1 + ``stft_weight`` * multi-resolution
   log-STFT + ``picker_weight`` * picker loss (frozen PhaseNet).

AdamW with a cosine learning-rate decay over the run, gradient clipping, an exponential moving average of the
weights (the EMA is what gets exported), mixed precision (bfloat16) on CUDA. Checkpoints (model, EMA, optimizer,
step, sampler RNG) let a run resume. Bounded by steps and by wall-clock minutes; with ``max_steps`` binding, a
run is reproducible under its seed (on the same device and thread count).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import PairConfig, PairSampler, load_recordings, make_station_split, read_split, select, write_split
from models.degradation import degrade, make_schedule, normalize_window
from models.errors import DataError
from models.losses import (
    PickerLoss,
    asymmetric_magnitude_loss,
    keep_loss,
    multires_stft_loss,
    onset_weight,
    onset_weighted_l1,
)
from models.masknet import STFTMaskNet
from models.sampler import make_step_list
from models.spec import DEFAULT_SPEC
from models.unet import UNet1D

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    data: str
    out: str
    seed: int = 0
    max_minutes: float = 45.0
    max_steps: int = 1_000_000
    batch_size: int = 16
    lr: float = 1e-3
    n_train_steps: int = 16
    schedule: str = "linear"
    p_top: float = 0.4
    unfold_weight: float = 0.5
    onset_extra_weight: float = 4.0
    stft_weight: float = 0.15
    picker_weight: float = 2.0
    false_pick_weight: float = 0.0
    picker_cache: str | None = None
    init_weights: str | None = None
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 4, 8)
    device: str = "auto"
    threads: int = 2
    split_file: str | None = None
    checkpoint_every_minutes: float = 5.0
    val_every_steps: int = 250
    export_name: str = "coldstream-cdiffsd"
    resume: bool = False
    progress: bool = True
    pairs: PairConfig = field(default_factory=PairConfig)
    architecture: str = "unet"
    sources: tuple[str, ...] | None = None
    chain_steps: tuple[int, ...] = ()
    chain_probabilities: tuple[float, ...] = ()
    chain_intermediate_weight: float = 0.5
    asym_weight: float = 0.0
    keep_weight: float = 0.0
    """Weight of :func:`models.losses.keep_loss` (0: off, as before): the share of the clean energy lost on cells
    where the clean signal is ``keep_db`` above the noise, every such cell alike. A learned counterpart of the
    guard."""
    keep_db: float = 6.0
    mask_widths: tuple[int, ...] = (48, 96, 160)
    mask_n_fft: int = 64
    """Mask model: STFT size (samples). 64 at 100 Hz gives 1.6 Hz bins (v2); 128 gives 0.8 Hz bins, fine enough to
    separate microseism (below about 0.5 Hz) from an event's 1-2 Hz energy, at twice the window's time support."""
    mask_hop: int = 16
    """Mask model: STFT hop (samples); the U-Net runs over these frames."""
    snapshot_minutes: tuple[float, ...] = ()
    picker_mix: float = 0.0
    """The PhaseNet term scores ``pred + picker_mix * (y - pred)``, the output as the shipped residual mix makes it,
    against the clean target: on a noise-only window the network cannot then lower the picker's response below the
    raw input's (a uniform gain leaves PhaseNet's normalized input unchanged), only raise it, which the false-pick
    weight penalises. 0: the network's own output, as before."""
    picker_mix_both: bool = False
    """With ``picker_mix``: the PhaseNet term is the mean of its score on the network's own output and on the mixed
    one, so the network alone is kept quiet on noise as well as the shipped output (two PhaseNet passes a step)."""
    train_guard_db: tuple[float, ...] = ()
    """Train with the mask model's guard in the loop (``(lo, hi)`` dB; empty: off, as before): the network is scored
    on ``max(gain, guard)``, the gain it will run with, so it learns around what the guard keeps instead of meeting
    it first at release. Exported weights carry these guard settings in their sidecar."""
    train_guard_max_hz: float | None = None
    train_guard_smooth_s: float | None = None

    def __post_init__(self) -> None:
        # Settings that only mean something with another one fail here rather than being dropped without a word.
        if self.chain_probabilities and len(self.chain_probabilities) != len(self.chain_steps):
            raise DataError(f"chain_probabilities {list(self.chain_probabilities)} need one value per chain_steps "
                            f"value {list(self.chain_steps)}")
        if not self.train_guard_db and (self.train_guard_max_hz is not None or self.train_guard_smooth_s is not None):
            raise DataError("train_guard_max_hz and train_guard_smooth_s need train_guard_db")
        if self.picker_mix_both and not self.picker_mix:
            raise DataError("picker_mix_both needs picker_mix (the residual mix r of the second output)")
        if self.mask_hop <= 0 or self.mask_n_fft < 2 * self.mask_hop or self.mask_n_fft % self.mask_hop:
            raise DataError(f"mask_n_fft {self.mask_n_fft} must be a multiple of mask_hop {self.mask_hop}, "
                            "at least twice it (the inverse STFT needs overlapping frames)")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        self.picker = None
        split_path = Path(cfg.split_file) if cfg.split_file else self.out / "split.json"
        self.split_seed = cfg.seed  # a split read from a file keeps the seed it was made with
        self.split: Any = {}
        if cfg.sources:
            train_recs, val_recs = self._load_sources(split_path)
            self.split_seed = self.split.get("seed", cfg.seed)
        else:
            recs = load_recordings(cfg.data, DEFAULT_SPEC)
            if split_path.exists():
                self.split = read_split(split_path)
                self.split_seed = json.loads(split_path.read_text()).get("seed", cfg.seed)
            else:
                self.split = make_station_split([r.station for r in recs], cfg.seed)
                write_split(split_path, self.split, cfg.seed, str(cfg.data))
            train_recs = select(recs, self.split["train"])
            val_recs = select(recs, self.split["val"])
        self.split_path = split_path
        if not train_recs:
            raise DataError("training split is empty")
        self.sampler = PairSampler(train_recs, cfg.pairs, seed=cfg.seed)
        self.val_batch = None
        if val_recs:
            try:
                self.val_batch = PairSampler(val_recs, cfg.pairs, seed=cfg.seed + 1).draw(64)
            except DataError as exc:
                log.warning("no validation pairs: %s", exc)
        self.gammas = make_schedule(cfg.schedule, cfg.n_train_steps).to(self.device)
        self.model = self._build().to(self.device)
        self.ema = self._build().to(self.device)
        self.init_meta: dict[str, Any] | None = None
        if cfg.init_weights:
            self._init_from(cfg.init_weights)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        if cfg.train_guard_db:
            if not hasattr(self.model, "set_guard"):
                raise DataError("train_guard_db needs the mask architecture (the guard bounds its gain)")
            for m in (self.model, self.ema):
                m.set_guard(tuple(cfg.train_guard_db), cfg.train_guard_max_hz, cfg.train_guard_smooth_s,  # type: ignore[operator]
                            DEFAULT_SPEC.sampling_rate_hz)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        self.picker_loss = None
        if cfg.picker_weight > 0:
            picker = self._picker()
            self.picker_loss = PickerLoss(picker.probabilities, cfg.false_pick_weight)
        self.step = 0
        self.elapsed_s = 0.0
        self.history: list[dict[str, Any]] = []

    def _build(self) -> torch.nn.Module:
        cfg = self.cfg
        if cfg.architecture == "mask":
            return STFTMaskNet(n_fft=cfg.mask_n_fft, hop_length=cfg.mask_hop, widths=tuple(cfg.mask_widths))
        if cfg.architecture == "unet":
            return UNet1D(base_channels=cfg.base_channels, channel_mults=tuple(cfg.channel_mults))
        raise DataError(f"unknown architecture {cfg.architecture!r} (unet or mask)")

    def _picker(self):
        if self.picker is None:
            from models.picker import Picker

            self.picker = Picker(cache_root=self.cfg.picker_cache, device=str(self.device))  # type: ignore[assignment]
        return self.picker

    def _load_sources(self, split_path: Path):
        """Several sources under the data folder (``cfg.sources``), split by station within each."""
        from models.sources import CONTINUOUS, load_sources, make_source_split, read_source_split, select_split
        from models.sources import write_source_split

        cfg = self.cfg
        predict = None
        sources = tuple(cfg.sources or ())
        if CONTINUOUS in sources:
            picker = self._picker()
            predict = picker.predict
        by_source = load_sources(cfg.data, sources, predict=predict, screen_cache=self.out / "screen.json")
        if split_path.exists():
            self.split = read_source_split(split_path)
        else:
            self.split = make_source_split(by_source, cfg.seed)
            write_source_split(split_path, self.split)
        recs = [r for rs in by_source.values() for r in rs]
        train_recs, val_recs = select_split(recs, self.split, "train"), select_split(recs, self.split, "val")
        for src in sources:
            n_tr = sum(r.source == src for r in train_recs)
            log.info("source %s: %d training, %d validation recordings", src, n_tr,
                     sum(r.source == src for r in val_recs))
        return train_recs, val_recs

    def _call(self, model: torch.nn.Module, x: torch.Tensor, t_frac: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if getattr(model, "conditions_on_observation", False):
            return model(x, t_frac, y)
        return model(x, t_frac)

    def _init_from(self, path: str) -> None:
        """Start from exported weights (fine-tuning); their architecture and schedule must match this run's."""
        init, meta = load_checkpoint(path)
        if init.config != self.model.config:
            raise DataError(f"--init-weights {path}: architecture {init.config} differs from {self.model.config}")
        sched = meta.get("schedule", {})
        if sched.get("n_train_steps") != self.cfg.n_train_steps or sched.get("kind") != self.cfg.schedule:
            raise DataError(f"--init-weights {path}: schedule {sched} differs from this run's")
        self.model.load_state_dict(init.state_dict())
        self.init_meta = {"name": Path(path).name, "sha256": meta["sha256"], "training": meta.get("training", {})}
        log.info("initialised from %s (%s)", path, str(meta["sha256"])[:12])

    # ------------------------------------------------------------------------------------- state
    def _state_path(self) -> Path:
        return self.out / "last.ckpt.pt"

    def save_state(self) -> None:
        # Written beside and then moved into place, with the data RNG inside: a process killed while writing leaves
        # the previous checkpoint whole, never a truncated one or one whose data stream belongs to another step.
        path = self._state_path()
        tmp = path.with_name(path.name + ".tmp")
        torch.save(
            {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "step": torch.tensor(self.step),
                "elapsed_s": torch.tensor(self.elapsed_s),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": json.dumps(self.sampler.rng.bit_generator.state),
            },
            tmp,
        )
        tmp.replace(path)

    def load_state(self) -> None:
        state = torch.load(self._state_path(), map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        torch.set_rng_state(state["torch_rng"].cpu())
        rng_file = self.out / "last.rng.json"  # where checkpoints of earlier versions kept the data RNG
        if "sampler_rng" in state:
            self.sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
        elif rng_file.exists():
            self.sampler.rng.bit_generator.state = json.loads(rng_file.read_text())
        log.info("resumed from step %d (%.1f min)", self.step, self.elapsed_s / 60)

    # -------------------------------------------------------------------------------------- loss
    def _loss(self, pred: torch.Tensor, x0: torch.Tensor, w: torch.Tensor, picker: bool = True,
              y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        parts = {"l1": onset_weighted_l1(pred, x0, w)}
        if cfg.stft_weight > 0:
            parts["stft"] = multires_stft_loss(pred, x0)
        if cfg.asym_weight > 0:
            parts["asym"] = asymmetric_magnitude_loss(pred, x0)
        if cfg.keep_weight > 0 and y is not None:
            # at the mask's own STFT resolution (the defaults are v2's 64 / 16)
            parts["keep"] = keep_loss(pred, x0, y, cfg.keep_db, cfg.mask_n_fft, cfg.mask_hop)
        if self.picker_loss is not None and picker:
            if not cfg.picker_mix or y is None:
                parts["pick"] = self.picker_loss(pred, x0)
            else:
                mixed = self.picker_loss(pred + cfg.picker_mix * (y - pred), x0)
                parts["pick"] = 0.5 * (self.picker_loss(pred, x0) + mixed) if cfg.picker_mix_both else mixed
        total = (parts["l1"] + cfg.stft_weight * parts.get("stft", 0.0) + cfg.asym_weight * parts.get("asym", 0.0)
                 + cfg.keep_weight * parts.get("keep", 0.0)
                 + cfg.picker_weight * parts.get("pick", 0.0))
        parts["total"] = total
        return parts

    def chain_step(self, yn: torch.Tensor, x0n: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Train the sampler's steps as they are used: draw a step count K, run ``sample_cold``'s chain over
        ``make_step_list(T, K)`` from x = y, and score every estimate (the last with weight 1 and the picker term,
        the others with ``chain_intermediate_weight``). The state between steps is detached."""
        cfg = self.cfg
        T = cfg.n_train_steps
        probs = np.asarray(cfg.chain_probabilities or [1.0] * len(cfg.chain_steps), np.float64)
        K = int(cfg.chain_steps[int(self.sampler.rng.choice(len(cfg.chain_steps), p=probs / probs.sum()))])
        steps = make_step_list(T, K)
        b = yn.shape[0]
        x = yn
        loss = yn.new_zeros(())
        parts: dict = {}
        for k in range(len(steps) - 1):
            s, s_next = steps[k], steps[k + 1]
            last = k == len(steps) - 2
            pred = self._call(self.model, x, torch.full((b,), s / T, device=self.device), yn).float()
            p = self._loss(pred, x0n, w, picker=last, y=yn)
            loss = loss + (1.0 if last else cfg.chain_intermediate_weight) * p["total"]
            if last:
                parts = p
            if s_next > 0:
                x = (x - degrade(pred, yn, self.gammas[s]) + degrade(pred, yn, self.gammas[s_next])).detach()
        parts["k"] = torch.tensor(float(K))
        return loss, parts

    def _batch(self, batch) -> tuple[torch.Tensor, ...]:
        y = torch.from_numpy(batch.y).to(self.device)
        x0 = torch.from_numpy(batch.x0).to(self.device)
        yn, mean, scale = normalize_window(y)
        x0n = (x0 - x0.mean(dim=-1, keepdim=True)) / scale
        p = torch.from_numpy(batch.p).to(self.device)
        s = torch.from_numpy(batch.s).to(self.device)
        w = onset_weight(p, s, y.shape[-1], self.cfg.onset_extra_weight)
        return yn, x0n, w

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        T = cfg.n_train_steps
        yn, x0n, w = self._batch(self.sampler.draw(cfg.batch_size))
        b = yn.shape[0]
        if cfg.chain_steps:
            loss, parts = self.chain_step(yn, x0n, w)
            return self._optimize(loss, parts)
        top = torch.rand(b, device=self.device) < cfg.p_top
        t = torch.where(top, torch.full((b,), T, device=self.device), torch.randint(1, T, (b,), device=self.device))
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else _nullcontext()
        with amp:
            xt = degrade(x0n, yn, self.gammas[t])
            pred = self._call(self.model, xt, t.float() / T, yn).float()
        parts = self._loss(pred, x0n, w, y=yn)
        loss = parts["total"]
        if cfg.unfold_weight > 0 and T > 1:
            t2 = (torch.rand(b, device=self.device) * (t - 1).clamp(min=1).float()).long() + 1
            t2 = torch.minimum(t2, (t - 1).clamp(min=1))
            with amp:
                x2 = degrade(pred.detach(), yn, self.gammas[t2])
                pred2 = self._call(self.model, x2, t2.float() / T, yn).float()
            parts2 = self._loss(pred2, x0n, w, y=yn)
            loss = loss + cfg.unfold_weight * parts2["total"]
        return self._optimize(loss, parts)

    def _optimize(self, loss: torch.Tensor, parts: dict) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + self.step) / (10 + self.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1 - decay)
            for be, bm in zip(self.ema.buffers(), self.model.buffers()):
                be.copy_(bm)
        return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in parts.items()} | {
            "loss": float(loss.detach())
        }

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_batch is None:
            return {}
        yn, x0n, w = self._batch(self.val_batch)
        T = self.cfg.n_train_steps
        pred = self._call(self.ema, yn, torch.ones(yn.shape[0], device=self.device), yn)
        l1 = onset_weighted_l1(pred, x0n, w)
        err = ((pred - x0n) ** 2).sum(dim=(1, 2))
        ref = ((yn - x0n) ** 2).sum(dim=(1, 2))
        gain = 10 * torch.log10(ref.clamp(min=1e-12) / err.clamp(min=1e-12))
        del T
        return {"val_l1": float(l1), "val_snr_gain_db": float(gain.mean())}

    def export(self, name: str) -> Path:
        cfg = self.cfg
        path = self.out / f"{name}.pt"
        training = {
            "data": Path(cfg.data).name,
            "split": ({k: len(v) for k, v in self.split.items()} | {"by": "station", "seed": self.split_seed}  # type: ignore[attr-defined]
                      if "sources" not in self.split else
                      {src: {k: len(e[k]) for k in ("train", "val", "test")}
                       for src, e in self.split["sources"].items()}  # type: ignore[attr-defined]
                      | {"by": "station within source", "seed": self.split_seed}),
            "split_stations": self.split,
            "steps": self.step,
            "minutes": round(self.elapsed_s / 60, 1),
            "device": str(self.device),
            "config": _jsonable(asdict(cfg))
            | {"data": Path(cfg.data).name, "out": None, "picker_cache": None,
               "init_weights": Path(cfg.init_weights).name if cfg.init_weights else None},
            "weights": "exponential moving average (decay 0.999)",
        }
        if self.init_meta is not None:
            training["initialised_from"] = self.init_meta
        save_checkpoint(
            path,
            self.ema,
            schedule_kind=cfg.schedule,
            n_train_steps=cfg.n_train_steps,
            spec=asdict(DEFAULT_SPEC),
            training=training,
            inference={"guard_db": list(cfg.train_guard_db), "guard_max_hz": cfg.train_guard_max_hz,
                       "guard_smooth_s": cfg.train_guard_smooth_s} if cfg.train_guard_db else None,
        )
        return path

    # --------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        cfg = self.cfg
        if cfg.resume and self._state_path().exists():
            self.load_state()
        budget_s = cfg.max_minutes * 60
        t_start = time.perf_counter() - self.elapsed_s
        last_ckpt = time.perf_counter()
        bar = _progress(cfg.progress, cfg.max_steps, self.step)
        log_file = open(self.out / "train_log.jsonl", "a")
        snapshots_done = {m for m in cfg.snapshot_minutes if self.elapsed_s >= m * 60}
        try:
            while self.step < cfg.max_steps and self.elapsed_s < budget_s:
                progress = max(self.step / cfg.max_steps, self.elapsed_s / budget_s)
                warm = min(1.0, (self.step + 1) / 100)
                # The rate applied, warm-up included: the log and the progress bar show this one.
                lr = warm * cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
                for g in self.opt.param_groups:
                    g["lr"] = lr
                parts = self.train_step()
                self.step += 1
                self.elapsed_s = time.perf_counter() - t_start
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{lr:.1e}")
                if self.step % 25 == 0:
                    rec = {"step": self.step, "min": round(self.elapsed_s / 60, 2), "lr": lr} | parts
                    if self.step % cfg.val_every_steps == 0:
                        rec |= self.validate()
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                for m in cfg.snapshot_minutes:
                    if m not in snapshots_done and self.elapsed_s >= m * 60:
                        # A budget-matched copy, e.g. to compare with a shorter run on fewer sources.
                        self.export(f"{cfg.export_name}-{m:g}min")
                        snapshots_done.add(m)
                if time.perf_counter() - last_ckpt > cfg.checkpoint_every_minutes * 60:
                    self.save_state()
                    self.export(cfg.export_name)
                    last_ckpt = time.perf_counter()
        finally:
            log_file.close()
            if bar is not None:
                bar.close()
        self.save_state()
        path = self.export(cfg.export_name)
        log.info("training stopped at step %d after %.1f min; weights %s", self.step, self.elapsed_s / 60, path)
        return path


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=None if total >= 1_000_000 else total, initial=initial, desc="train", unit="step")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def train(cfg: TrainConfig) -> Path:
    """Train under ``cfg``; returns the path of the exported ``.pt`` (JSON sidecar beside it)."""
    return _Trainer(cfg).run()
