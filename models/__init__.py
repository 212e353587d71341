"""coldstream's science core: cold-diffusion denoiser, samplers, training, evaluation, picker.

This package never imports the service (``streamer``), Redis or Prometheus; it takes arrays and
explicit parameters. Heavy modules (torch, seisbench) load on first use of the names below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.errors import (
    ChecksumMismatchError,
    DataError,
    InvalidParameterError,
    ModelsError,
    PickerUnavailableError,
    ShapeMismatchError,
    WeightsNotFoundError,
)
from models.spec import DEFAULT_SPEC, ModelSpec

if TYPE_CHECKING:
    from models.denoiser import DenoiseResult, Denoiser

__all__ = [
    "DEFAULT_SPEC",
    "ChecksumMismatchError",
    "DataError",
    "DenoiseResult",
    "Denoiser",
    "InvalidParameterError",
    "ModelSpec",
    "ModelsError",
    "PickerUnavailableError",
    "ShapeMismatchError",
    "WeightsNotFoundError",
]


def __getattr__(name: str) -> Any:
    if name in ("Denoiser", "DenoiseResult"):
        from models import denoiser

        return getattr(denoiser, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
