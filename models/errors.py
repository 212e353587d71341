"""Exceptions raised by the science core. Catch :class:`ModelsError` to handle all of them."""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of every error raised by :mod:`models`."""


class WeightsNotFoundError(ModelsError, FileNotFoundError):
    """A weight file (denoiser checkpoint or picker weights) is missing."""


class ChecksumMismatchError(ModelsError):
    """A weight file's sha256 differs from the expected one."""


class ShapeMismatchError(ModelsError, ValueError):
    """An array or a checkpoint does not have the shape the model expects."""


class DataError(ModelsError, ValueError):
    """Training or evaluation data is missing or malformed."""


class PickerUnavailableError(ModelsError):
    """The SeisBench picker or its weights cannot be loaded (and nothing is downloaded by surprise)."""


class InvalidParameterError(ModelsError, ValueError):
    """A parameter outside its valid range (e.g. ``residual_mix`` not in [0, 1))."""
