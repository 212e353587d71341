"""The root of every error the service raises on purpose.

Each module keeps its specific subclasses next to the code that raises them (``ConfigError`` in
``config.py``, ``StitchError`` in ``stitch.py``, ...); all of them derive from :class:`StreamerError`,
so a caller can catch "anything coldstream reported" in one clause and let real bugs through.
"""

from __future__ import annotations

__all__ = ["StreamerError"]


class StreamerError(Exception):
    """Base class of coldstream's service errors."""
