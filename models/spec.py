"""The contract between the science core and the service: what a window looks like to the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Shape of one model input window.

    Arrays handed to the model are ``(batch, channel, time)`` float32, channels in
    ``component_order`` (E, N, Z by default: the order of the training data and of PhaseNet
    ``original``), ``window_samples`` samples at ``sampling_rate_hz``.
    """

    sampling_rate_hz: float = 100.0
    window_samples: int = 3000
    component_order: str = "ENZ"

    @property
    def window_s(self) -> float:
        """Window length in seconds."""
        return self.window_samples / self.sampling_rate_hz

    @property
    def n_components(self) -> int:
        return len(self.component_order)


DEFAULT_SPEC = ModelSpec()
