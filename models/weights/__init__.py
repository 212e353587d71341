"""Shipped denoiser weights (``*.pt`` + JSON sidecar), loaded through :mod:`importlib.resources`."""
