"""Denoiser weights on disk: a ``.pt`` state dict plus a JSON sidecar with everything needed to rebuild it.

Sidecar keys: ``format``, ``model_class``, ``model_args`` (constructor arguments), ``schedule`` (kind and
``n_train_steps``), ``normalization``, ``spec``, ``training`` (data, split, seed, steps, losses), ``code_version``
and ``sha256`` of the ``.pt`` file. Loading verifies the checksum and uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from models.errors import ChecksumMismatchError, ShapeMismatchError, WeightsNotFoundError
from models.masknet import STFTMaskNet
from models.unet import UNet1D

MODEL_CLASSES: dict[str, type[torch.nn.Module]] = {"UNet1D": UNet1D, "STFTMaskNet": STFTMaskNet}
"""The network classes a sidecar may name (``model_class``), each rebuilt from ``model_args``."""

__all__ = [
    "FORMAT",
    "code_version",
    "file_sha256",
    "load_checkpoint",
    "release_checkpoint",
    "save_checkpoint",
    "sidecar_path",
]

FORMAT = "coldstream-cdiffsd/1"
NORMALIZATION = {
    "kind": "noisy-window",
    "center": "per-channel mean of the noisy window, restored on output",
    "scale": "standard deviation of the centered noisy window over all three components",
}


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    """``git describe`` of the source tree when available, else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return version("coldstream")
    except Exception:
        return "unknown"


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    schedule_kind: str,
    n_train_steps: int,
    spec: dict[str, Any],
    training: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``path`` (``.pt``, float32 state dict) and its JSON sidecar; return the sidecar dict.

    ``inference``: top-level inference settings for the sidecar (e.g. the guard a model was trained with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path)
    meta = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "model_args": model.config,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "schedule": {"kind": schedule_kind, "n_train_steps": n_train_steps},
        "normalization": NORMALIZATION,
        "spec": spec,
        "training": training or {},
        "code_version": code_version(),
        "sha256": file_sha256(path),
    } | dict(inference or {})
    sidecar_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_checkpoint(path: str | Path, sha256: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model from ``path`` and its sidecar; verify the sha256 (the given one, else the sidecar's).

    Raises :class:`WeightsNotFoundError`, :class:`ChecksumMismatchError` or :class:`ShapeMismatchError`.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"denoiser weights not found: {path}")
    if not side.is_file():
        raise WeightsNotFoundError(f"denoiser weights sidecar not found: {side} (expected beside {path.name})")
    try:
        meta = json.loads(side.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ShapeMismatchError(f"{side}: the weights sidecar is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ShapeMismatchError(f"{side}: the weights sidecar is not a JSON object")
    actual = file_sha256(path)
    expected = str(sha256 or meta.get("sha256") or "").strip().lower()
    if not expected:
        # Weights are only ever loaded against a checksum: a sidecar without one cannot vouch for them.
        raise ChecksumMismatchError(f"{side}: no sha256 to verify {path.name} against")
    if actual != expected:
        raise ChecksumMismatchError(f"{path}: sha256 {actual} does not match the expected {expected}")
    meta["sha256"] = actual
    cls = MODEL_CLASSES.get(str(meta.get("model_class")))
    if cls is None:
        raise ShapeMismatchError(f"{path}: unknown model class {meta.get('model_class')!r}")
    if not isinstance(meta.get("model_args"), dict):
        raise ShapeMismatchError(f"{side}: model_args (the {cls.__name__} constructor arguments) is missing")
    args = dict(meta["model_args"])
    for key in ("channel_mults", "bottleneck_dilations", "widths"):
        if key in args:
            args[key] = tuple(args[key])
    try:
        model = cls(**args)
    except (TypeError, ValueError) as exc:  # an unknown or unusable constructor argument
        raise ShapeMismatchError(f"{side}: model_args do not describe a {cls.__name__}: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, or objects weights_only refuses
        raise ShapeMismatchError(f"{path}: the weights cannot be read as a state dict: {exc}") from exc
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ShapeMismatchError(f"{path}: weights do not fit the model described by {side.name}: {exc}") from exc
    if meta.get("guard_db") and hasattr(model, "set_guard"):
        # Inference settings of the mask model (no weights).
        model.set_guard(meta["guard_db"], meta.get("guard_max_hz"), meta.get("guard_smooth_s"),  # type: ignore[operator]
                        float(meta.get("spec", {}).get("sampling_rate_hz", 100.0)), meta.get("guard_min_hz"))
    return model.eval(), meta


def release_checkpoint(src: str | Path, dst: str | Path, **inference: Any) -> dict[str, Any]:
    """Copy trained weights ``src`` to ``dst`` (e.g. ``models/weights/<name>.pt``) with their sidecar, adding
    inference defaults chosen after evaluation (``recommended_steps``, ``residual_mix``) to the sidecar.

    The ``.pt`` bytes are copied unchanged, so the checksum (verified here) stays that of the trained file.
    Returns the new sidecar.
    """
    import shutil

    _, meta = load_checkpoint(src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    meta.update(inference)
    meta["released_from"] = Path(src).name
    sidecar_path(dst).write_text(json.dumps(meta, indent=1) + "\n")
    load_checkpoint(dst)
    return meta
