"""Windows, batch results and an output collector shared by the service-piece tests."""

from __future__ import annotations

import numpy as np

from streamer.records import NS_PER_S, Window
from streamer.worker import BatchResult

N, S = 3000, 1000
T0 = 1_700_000_000 * NS_PER_S  # on the 10 s grid


def window(k: int, station: str = "XX.STA.", value: float = 1.0) -> Window:
    data = np.full((3, N), value, np.float32)
    return Window(station, T0 + k * 10 * NS_PER_S, 100.0, data, np.ones((3, N), bool), T0 + (k * 10 + 30) * NS_PER_S,
                  ("HHE", "HHN", "HHZ"))


def result(windows: list[Window], probs: bool = True) -> BatchResult:
    den = np.stack([w.data * 0.5 for w in windows])
    p = None
    if probs:
        p = np.zeros_like(den)
        p[:, 2] = 1.0
    return BatchResult(windows, den, p, None, 2, 2, None, 1.0, 1.0, model="m", model_version="v1",
                       extra={"picker": "PhaseNet/original", "picker_version": "3"})


class Sink:
    def __init__(self) -> None:
        self.items: list = []

    def __call__(self, items: list) -> None:
        self.items.extend(items)

    @property
    def markers(self) -> list:
        return [i.token for i in self.items if i.kind == "marker"]

    @property
    def segments(self) -> list:
        return [i.segment for i in self.items if i.kind == "segment"]
