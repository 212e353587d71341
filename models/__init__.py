"""coldstream's science core: cold-diffusion denoiser, samplers, training, evaluation, picker.

This package never imports the service (``streamer``), Redis or Prometheus; it takes arrays and
explicit parameters.
"""

from models.spec import DEFAULT_SPEC, ModelSpec

__all__ = ["DEFAULT_SPEC", "ModelSpec"]
