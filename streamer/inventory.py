"""What a StationXML inventory tells the pipeline about each channel: orientation (and position).

Loaded once at start-up (``inventory.stationxml``); lookups are pure and cheap. Channel epochs are
respected: the orientation used for a window is the one valid at the window's start. A channel the
inventory does not list, or lists without azimuth or dip, has no orientation, and its station's
windows keep the component table's mapping (``models.components``: 1 -> N, 2 -> E).

Limitations: only azimuth, dip, coordinates and the overall sensitivity (with its input units, for the
early-warning amplitudes) are read; the full response is not applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.components import Orientation
from streamer.errors import StreamerError

log = logging.getLogger(__name__)

__all__ = ["ChannelEpoch", "Inventory", "InventoryError"]


class InventoryError(StreamerError):
    """The StationXML file cannot be read."""


@dataclass(frozen=True)
class ChannelEpoch:
    """One epoch of a channel: ``[start_ns, end_ns)`` (``end_ns`` None: open), its orientation (None
    when the inventory gives no azimuth or dip) and coordinates (degrees, metres)."""

    start_ns: int
    end_ns: int | None
    orientation: Orientation | None
    latitude_deg: float | None = None
    longitude_deg: float | None = None
    elevation_m: float | None = None
    sensitivity: float | None = None  # counts per input unit at the sensitivity frequency
    input_units: str = ""  # e.g. M/S (velocity sensor) or M/S**2 (accelerometer)

    def covers(self, time_ns: int) -> bool:
        return self.start_ns <= time_ns and (self.end_ns is None or time_ns < self.end_ns)


class Inventory:
    """Channel epochs by SEED id ``NET.STA.LOC.CHA``."""

    def __init__(self, epochs: dict[str, list[ChannelEpoch]] | None = None) -> None:
        self.epochs: dict[str, list[ChannelEpoch]] = epochs or {}

    def __len__(self) -> int:
        return len(self.epochs)

    def epoch(self, seed_id: str, time_ns: int) -> ChannelEpoch | None:
        for ep in self.epochs.get(seed_id, ()):
            if ep.covers(time_ns):
                return ep
        return None

    def orientation(self, seed_id: str, time_ns: int) -> Orientation | None:
        ep = self.epoch(seed_id, time_ns)
        return ep.orientation if ep is not None else None

    @classmethod
    def from_stationxml(cls, path: str | Path) -> Inventory:
        """Read a StationXML file (ObsPy's reader). Raises :class:`InventoryError`."""
        import obspy

        try:
            inv = obspy.read_inventory(str(path), format="STATIONXML")
        except Exception as exc:  # ObsPy raises many types for unreadable files
            raise InventoryError(f"cannot read the StationXML file {path}: {exc}") from exc
        epochs: dict[str, list[ChannelEpoch]] = {}
        for net in inv:
            for sta in net:
                for cha in sta:
                    seed_id = f"{net.code}.{sta.code}.{cha.location_code}.{cha.code}"
                    orient = None
                    if cha.azimuth is not None and cha.dip is not None:
                        orient = Orientation(float(cha.azimuth), float(cha.dip))
                    start = cha.start_date or sta.start_date
                    end = cha.end_date or sta.end_date
                    epochs.setdefault(seed_id, []).append(ChannelEpoch(
                        start_ns=int(start.ns) if start is not None else -(2**62),
                        end_ns=int(end.ns) if end is not None else None,
                        orientation=orient,
                        latitude_deg=_f(cha.latitude if cha.latitude is not None else sta.latitude),
                        longitude_deg=_f(cha.longitude if cha.longitude is not None else sta.longitude),
                        elevation_m=_f(cha.elevation if cha.elevation is not None else sta.elevation),
                        **_sensitivity(cha),
                    ))
        log.info("inventory %s: %d channels", path, len(epochs))
        return cls(epochs)


def _sensitivity(cha: object) -> dict[str, Any]:
    """The channel's overall sensitivity and input units (empty when the inventory has none)."""
    resp = getattr(cha, "response", None)
    sens = getattr(resp, "instrument_sensitivity", None) if resp is not None else None
    if sens is None or not getattr(sens, "value", None):
        return {}
    return {"sensitivity": float(sens.value), "input_units": str(sens.input_units or "").upper()}


def _f(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
