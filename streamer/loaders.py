"""Loading the models the service runs, failing fast with one error type.

``load_denoiser`` and ``load_picker`` turn the typed settings into loaded models; any failure (missing
or corrupt weights, a checksum mismatch, an unavailable picker) becomes a :class:`ServiceError` that
names what could not be loaded, raised before any thread or socket is started.
"""

from __future__ import annotations

from typing import Any

from streamer.config import Settings
from streamer.errors import StreamerError
from streamer.inventory import Inventory, InventoryError
from streamer.worker import DenoiserLike, PickerLike

__all__ = ["ServiceError", "load_denoiser", "load_inventory", "load_picker", "unconfirmed_p_threshold"]


class ServiceError(StreamerError):
    """The service cannot start (bad weights, unusable picker, Redis URL, ...)."""


def load_denoiser(settings: Settings) -> DenoiserLike:
    """The configured denoiser (shipped weights when ``model.weights`` is unset); fails fast."""
    from models.denoiser import Denoiser
    from models.errors import ModelsError

    try:
        return Denoiser.load(
            settings.model.weights,
            device=settings.worker.device,
            mixed_precision=settings.worker.mixed_precision,
            sha256=settings.model.sha256,
            residual_mix=settings.model.residual_mix,
            residual_mix_band_hz=settings.model.residual_mix_band_hz,
        )
    except (ModelsError, OSError) as exc:
        raise ServiceError(f"cannot load the denoiser: {exc}") from exc


def load_picker(settings: Settings, device: str = "cpu") -> PickerLike:
    """The configured PhaseNet picker; raises ServiceError when its weights are unavailable."""
    from models.errors import ModelsError
    from models.picker import Picker

    p = settings.picker
    try:
        return Picker(p.model, p.weights_name, cache_root=p.seisbench_cache, device=device)
    except (ModelsError, OSError) as exc:
        raise ServiceError(f"cannot load the picker: {exc}") from exc


def load_inventory(settings: Settings) -> Inventory | None:
    """The configured StationXML inventory (None when ``inventory.stationxml`` is unset); fails fast."""
    path = settings.inventory.stationxml
    if path is None:
        return None
    try:
        return Inventory.from_stationxml(path)
    except InventoryError as exc:
        raise ServiceError(str(exc)) from exc


def unconfirmed_p_threshold(settings: Settings, denoiser: Any = None) -> float | None:
    """The P probability a pick on the denoised output needs where PhaseNet on the raw input does not confirm
    it (:func:`models.peaks.confirm_p`), or None when no confirmation applies.

    ``picker.unconfirmed_p_threshold`` when set, else the weights' (``denoiser.unconfirmed_p_threshold``, from
    their sidecar); None where that is unset too or not above ``picker.p_threshold`` (then every pick stands
    at ``picker.p_threshold``, as before the policy).
    """
    p = settings.picker
    value = p.unconfirmed_p_threshold
    if value is None:
        value = getattr(denoiser, "unconfirmed_p_threshold", None)
    if value is None or float(value) <= float(p.p_threshold):
        return None
    return float(value)
