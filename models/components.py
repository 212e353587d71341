"""One component table for the whole project: which channel code letter is which model component.

The last letter of a SEED channel code names the component. ``E``, ``N``, ``Z`` are geographic;
``1`` and ``2`` are horizontals of unknown or non-geographic orientation, and ``3`` a vertical.
Following SeisBench's ``flexible_horizontal_components`` convention, ``1`` is taken as ``N`` and ``2``
as ``E`` when no orientation is known. When an inventory gives each channel's azimuth and dip,
:func:`rotate_to_zne` turns any three channels (ZNE, Z12, UVW ...) into true Z, N, E.

Both the live service and the offline tools map components through this module, so a Z12 station's
horizontals land in the same rows on both paths.

Pure code: numpy and ObsPy's rotation routine, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "COMPONENT_ALIASES",
    "Orientation",
    "component_of",
    "rotate_to_zne",
]

COMPONENT_ALIASES: dict[str, str] = {"E": "E", "N": "N", "Z": "Z", "1": "N", "2": "E", "3": "Z"}
"""Channel code letter -> model component (SeisBench convention: 1 -> N, 2 -> E, 3 -> Z)."""


def component_of(channel: str) -> str | None:
    """The model component (``"E"``, ``"N"`` or ``"Z"``) of a channel code such as ``HHZ`` or ``HH1``;
    None for letters that are no seismometer component (``U``, ``V``, ``W``, ``A``, ...) unless rotated."""
    if not channel:
        return None
    return COMPONENT_ALIASES.get(channel[-1].upper())


@dataclass(frozen=True)
class Orientation:
    """A channel's orientation from an inventory: ``azimuth_deg`` clockwise from north, ``dip_deg``
    down from horizontal (SEED convention: a vertical pointing up has dip -90)."""

    azimuth_deg: float
    dip_deg: float


def rotate_to_zne(
    data: np.ndarray, orientations: tuple[Orientation, Orientation, Orientation]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate three channels ``data`` ``(3, n)`` with the given orientations to ``(Z, N, E)``.

    Uses ObsPy's ``rotate2zne`` (it handles any three linearly independent directions). Raises
    ``ValueError`` when the three directions are not independent.
    """
    from obspy.signal.rotate import rotate2zne

    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != 3:
        raise ValueError(f"expected (3, n) data, got {arr.shape}")
    a, b, c = orientations
    z, n, e = rotate2zne(
        arr[0], a.azimuth_deg, a.dip_deg,
        arr[1], b.azimuth_deg, b.dip_deg,
        arr[2], c.azimuth_deg, c.dip_deg,
    )
    return np.asarray(z), np.asarray(n), np.asarray(e)
