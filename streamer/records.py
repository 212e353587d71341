"""Plain data passed between the service's stages. Times are integer nanoseconds since the epoch
(UTC); durations carry their unit in the name."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models.grid import NS_PER_S  # one definition, re-exported for the service

if TYPE_CHECKING:
    from streamer.picks import Pick
    from streamer.stitch import Segment


@dataclass(frozen=True)
class PacketRef:
    """Where a block came from, so SeedLink state can advance once its data is published."""

    server: str  # "host:port"
    station_key: str  # SeedLink station key "NET_STA"
    sequence: int  # SeedLink sequence number (v3: 24-bit, v4: 64-bit)


@dataclass
class SampleBlock:
    """Decoded samples of one channel from one miniSEED record.

    ``samples`` is 1-D (int32, float32 or float64 as decoded); ``seed_id`` is ``NET.STA.LOC.CHA``;
    ``start_ns`` is the time of the first sample; ``arrival_ns`` the wall-clock time the record
    was received (for latency accounting).
    """

    seed_id: str
    start_ns: int
    sampling_rate_hz: float
    samples: np.ndarray
    arrival_ns: int
    packet: PacketRef | None = None

    @property
    def station_id(self) -> str:
        """``NET.STA.LOC`` (the buffer key)."""
        return self.seed_id.rsplit(".", 1)[0]

    @property
    def channel(self) -> str:
        return self.seed_id.rsplit(".", 1)[1]

    @property
    def end_ns(self) -> int:
        """Time just after the last sample (start + n / rate)."""
        return self.start_ns + round(len(self.samples) * NS_PER_S / self.sampling_rate_hz)


@dataclass
class Window:
    """One model input window of one station, on the absolute time grid.

    ``data`` is ``(3, window_samples)`` float32 in counts, components in ModelSpec order;
    ``mask`` is the same shape, True where the sample is real data (False: gap, zero-filled,
    missing component or non-finite sample replaced by 0). ``newest_arrival_ns`` is the arrival
    time of the newest sample in the window (end-to-end latency starts there);
    ``newest_arrival_mono_ns`` the same instant on the monotonic clock, from which durations (queue
    ages, shedding) are measured, so a wall-clock step cannot make windows look stale.
    """

    station_id: str
    start_ns: int
    sampling_rate_hz: float
    data: np.ndarray
    mask: np.ndarray
    newest_arrival_ns: int
    channels: tuple[str, ...] = ()  # source channel codes in ModelSpec order ("" when missing)
    meta: dict[str, object] = field(default_factory=dict)
    newest_arrival_mono_ns: int = 0  # the same arrival on the monotonic clock (0: unknown), for ages

    @property
    def window_samples(self) -> int:
        return int(self.data.shape[-1])

    @property
    def end_ns(self) -> int:
        return self.start_ns + round(self.window_samples * NS_PER_S / self.sampling_rate_hz)

    @property
    def window_id(self) -> str:
        """Stable identity: station and grid start time (replays produce the same id)."""
        return f"{self.station_id}@{self.start_ns}"


OutputKind = Literal["segment", "pick", "marker"]


@dataclass
class OutputItem:
    """One output of the output stage, queued for the publisher (Redis). ``token`` is opaque to the publisher and comes back in
    ``on_acked`` (the service puts SeedLink packet references there); a ``marker`` writes nothing
    and only carries a token through the in-order queue."""

    kind: OutputKind
    segment: Segment | None = None
    pick: Pick | None = None
    model: str = ""
    model_version: str = ""
    token: Any = None
    queued_ns: int = field(default_factory=time.time_ns)

    @classmethod
    def of_segment(cls, segment: Segment, model: str = "", model_version: str = "", token: Any = None) -> "OutputItem":
        return cls("segment", segment=segment, model=model, model_version=model_version, token=token)

    @classmethod
    def of_pick(cls, pick: Pick, token: Any = None) -> "OutputItem":
        return cls("pick", pick=pick, token=token)

    @classmethod
    def marker(cls, token: Any) -> "OutputItem":
        return cls("marker", token=token)
