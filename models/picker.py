"""A SeisBench PhaseNet wrapper working on ``ModelSpec``-ordered arrays.

``Picker.predict`` takes ``(batch, 3, N)`` float32 windows in spec order ("ENZ") and returns P/S/Noise
probabilities ``(batch, 3, N)`` aligned sample for sample with the input. It handles PhaseNet's odd input length
(3001: the window is edge-padded by one sample and the extra output sample dropped), the model's component order
(PhaseNetLight is ZNE) and its normalization (demean, then std or peak per component, as SeisBench's
``annotate_batch_pre``). Weights come from a local SeisBench cache; nothing is downloaded by surprise.

Limitation: windows longer than the model's input are cut into overlapping model windows and the probabilities
averaged; windows are processed as given (no filtering, no resampling).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.errors import PickerUnavailableError
from models.spec import DEFAULT_SPEC, ModelSpec

log = logging.getLogger(__name__)

__all__ = ["Picker", "find_picks", "prepare_cache_root"]

_PREPARED: dict[str, str] = {}


def prepare_cache_root(cache_root: str | Path) -> str:
    """Make ``cache_root`` usable as ``SEISBENCH_CACHE_ROOT`` (a writable copy if needed) and set the variable.

    Must run before the first ``import seisbench`` to take effect; returns the directory used.
    """
    src = Path(cache_root).resolve()
    if str(src) in _PREPARED:
        target = _PREPARED[str(src)]
    elif os.access(src, os.W_OK) and os.access(src / "models", os.W_OK):
        target = str(src)
    else:
        target = tempfile.mkdtemp(prefix="coldstream-seisbench-")
        shutil.copytree(src, target, dirs_exist_ok=True)
    _PREPARED[str(src)] = target
    os.environ["SEISBENCH_CACHE_ROOT"] = target
    try:  # seisbench already imported: point it at the new root as well
        import sys

        if "seisbench" in sys.modules:
            sb = sys.modules["seisbench"]
            setattr(sb, "cache_root", Path(target))
            setattr(sb, "cache_model_root", Path(target) / "models" / "v3")
    except Exception:  # pragma: no cover - best effort for unusual seisbench versions
        pass
    return target


class Picker:
    """PhaseNet (or PhaseNetLight) from SeisBench with local weights.

    Attributes: ``name`` (e.g. ``"PhaseNet/original"``), ``version`` (weight version), ``component_order``
    (the model's own order), ``in_samples`` (model input length), ``module`` (the frozen torch module).
    """

    def __init__(
        self,
        model: str = "phasenet",
        weights_name: str = "original",
        cache_root: str | Path | None = None,
        device: str = "cpu",
        spec: ModelSpec = DEFAULT_SPEC,
    ) -> None:
        if cache_root is not None:
            prepare_cache_root(cache_root)
        try:
            import seisbench.models as sbm
        except ImportError as exc:  # pragma: no cover - seisbench is a dependency
            raise PickerUnavailableError(f"seisbench is not installed: {exc}") from exc
        classes = {"phasenet": sbm.PhaseNet, "phasenetlight": sbm.PhaseNetLight}
        if model.lower() not in classes:
            raise PickerUnavailableError(f"unknown picker model {model!r}; choose one of {sorted(classes)}")
        try:
            net = classes[model.lower()].from_pretrained(weights_name, update=False)
        except Exception as exc:
            root = os.environ.get("SEISBENCH_CACHE_ROOT", "~/.seisbench")
            raise PickerUnavailableError(
                f"{model}/{weights_name} weights are not in the local SeisBench cache ({root}) and cannot be "
                f"downloaded: {exc}. Pass cache_root= a folder holding models/v3/{model.lower()}/{weights_name}.pt.v*"
            ) from exc
        self.module = net.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.device = device
        self.spec = spec
        self.name = f"{type(net).__name__}/{weights_name}"
        self.version = str(getattr(net, "weights_version", "") or "")
        self.component_order = str(getattr(net, "component_order", "ZNE"))
        self.in_samples = int(getattr(net, "in_samples", 3001))
        self.norm = str(getattr(net, "norm", "std"))
        labels = list(getattr(net, "labels", "NPS"))
        self._out_index = [labels.index(c) for c in "PSN"]
        self._in_index = [spec.component_order.index(c) for c in self.component_order]
        log.info("picker %s loaded (order %s, %d samples)", self.name, self.component_order, self.in_samples)

    # ------------------------------------------------------------------------------------ differentiable
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable P/S/Noise probabilities for ``(batch, 3, N)`` spec-order tensors, N <= ``in_samples``.

        Used by the picker-aware training loss; the input is normalized like SeisBench does.
        """
        n = x.shape[-1]
        if n > self.in_samples:
            raise ValueError(f"window of {n} samples is longer than the picker input {self.in_samples}")
        x = x[:, self._in_index]
        if n < self.in_samples:
            x = torch.nn.functional.pad(x, (0, self.in_samples - n), mode="replicate")
        x = x - x.mean(dim=-1, keepdim=True)
        if self.norm == "peak":
            x = x / (x.abs().amax(dim=-1, keepdim=True) + 1e-10)
        else:
            x = x / (x.std(dim=-1, keepdim=True) + 1e-10)
        out = self.module(x)
        return out[:, self._out_index, :n]

    # ------------------------------------------------------------------------------------------ numpy
    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """P/S/Noise probabilities ``(batch, 3, N)`` float32 for ``(batch, 3, N)`` spec-order windows in counts
        (non-finite samples are treated as zero)."""
        # Non-finite samples count as zero, as in the denoiser (nan_to_num's default would turn inf into
        # the largest float32, and the mean and std of a window holding a few of those are inf and NaN).
        x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if x.ndim != 3 or x.shape[1] != 3:
            raise ValueError(f"expected (batch, 3, N), got {x.shape}")
        b, _, n = x.shape
        step = self.in_samples // 2
        starts = [0] if n <= self.in_samples else list(range(0, n - self.in_samples + 1, step))
        if n > self.in_samples and starts[-1] != n - self.in_samples:
            starts.append(n - self.in_samples)
        out = np.zeros((b, 3, n), np.float32)
        weight = np.zeros(n, np.float32)
        with torch.inference_mode():
            for st in starts:
                chunk = x[:, :, st : st + self.in_samples]
                probs = []
                for i in range(0, b, batch_size):
                    t = torch.from_numpy(np.ascontiguousarray(chunk[i : i + batch_size])).to(self.device)
                    probs.append(self.probabilities(t).float().cpu().numpy())
                out[:, :, st : st + chunk.shape[-1]] += np.concatenate(probs)
                weight[st : st + chunk.shape[-1]] += 1.0
        return out / np.maximum(weight, 1.0)

    def find_picks(
        self, probs: np.ndarray, p_threshold: float, s_threshold: float, min_distance_samples: int = 100
    ) -> list[tuple[int, str, int, float]]:
        return find_picks(probs, p_threshold, s_threshold, min_distance_samples)


def find_picks(
    probs: np.ndarray, p_threshold: float, s_threshold: float, min_distance_samples: int = 100
) -> list[tuple[int, str, int, float]]:
    """Picks on each window's P and S probability curves, by the live detector's rule
    (:func:`models.peaks.local_peaks`, ``d = min_distance_samples``; window edges judged with the context
    there is).

    ``probs``: ``(batch, 3, N)`` in (P, S, Noise) order. Returns ``(batch index, "P"|"S", sample, probability)``
    sorted by batch, phase and sample.
    """
    from models.peaks import local_peaks

    picks: list[tuple[int, str, int, float]] = []
    for b in range(probs.shape[0]):
        for ch, phase, thr in ((0, "P", p_threshold), (1, "S", s_threshold)):
            curve = probs[b, ch]
            picks.extend((b, phase, i, float(curve[i])) for i in local_peaks(curve, thr, min_distance_samples))
    return picks
