"""The Redis entry schema: key names, entry ids and field encodings of segments and picks.

``docs/redis-schema.md`` is the contract for consumers; this module is its one implementation, used
by the publisher, ``coldstream tail``, the tests and consumers written in Python. Pure code: no
connection, no I/O.

Key layout (prefix ``RedisSettings.stream_prefix``, default ``coldstream``):

``{prefix}:picks``                  one stream, every pick (auto IDs), flat string fields
``{prefix}:pickseen:{pick_id}``     de-duplication marker of a published pick (string, TTL)
``{prefix}:picktime:{station}|{phase}|{source}:{bucket}`` time of a published pick (string, TTL)
``{prefix}:denoised:{NET.STA.LOC}`` one stream per station, denoised segments, ID from data time
``{prefix}:onset:{station}|{phase}:{bucket}`` lifecycle of one onset: ``pick_id status update rev time_ns`` (TTL)
``{prefix}:openpicks``              hash: pick_id -> ``station|phase|time_ns|probability|update`` of provisional picks not yet final or retracted
``{prefix}:latest``                 hash: station -> end time (ns) of its newest published segment
``{prefix}:windows``                scale-out: windows for the workers (consumer group)
``{prefix}:results``                scale-out: worker results for the ingest (consumer group)
``{prefix}:{stream}seen:{id}``      de-duplication marker of a pushed work item (string, TTL)
``{prefix}:{stream}:dead``          work items delivered too often (poison), for inspection
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.errors import StreamerError
from streamer.picks import Pick, PickDetails
from streamer.stitch import Segment, sample_index

DTYPE = "<f4"
MASK_ENCODING = "packbits-le"
SCHEMA_VERSION = "1"


class PublishError(StreamerError):
    """Base error of the Redis output side."""


class EntryDecodeError(PublishError):
    """A stream entry does not follow the schema."""


# --------------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class StreamKeys:
    """Every Redis key the service writes, for one prefix."""

    prefix: str = "coldstream"

    @property
    def picks(self) -> str:
        return f"{self.prefix}:picks"

    def pickseen(self, pick_id: str) -> str:
        return f"{self.prefix}:pickseen:{pick_id}"

    def picktime(self, station_id: str, phase: str, source: str, bucket: int) -> str:
        return f"{self.prefix}:picktime:{station_id}|{phase}|{source}:{bucket}"

    def onset(self, station_id: str, phase: str, bucket: int) -> str:
        return f"{self.prefix}:onset:{station_id}|{phase}:{bucket}"

    @property
    def openpicks(self) -> str:
        return f"{self.prefix}:openpicks"

    def denoised(self, station_id: str) -> str:
        return f"{self.prefix}:denoised:{station_id}"

    @property
    def denoised_pattern(self) -> str:
        return f"{self.prefix}:denoised:*"

    @property
    def latest(self) -> str:
        return f"{self.prefix}:latest"

    def windows(self, stream: str = "windows") -> str:
        return f"{self.prefix}:{stream}"

    def windowseen(self, window_id: str, stream: str = "windows") -> str:
        return f"{self.prefix}:{stream}seen:{window_id}"

    def dead(self, stream: str = "windows") -> str:
        return f"{self.prefix}:{stream}:dead"


def segment_entry_id(start_ns: int) -> str:
    """Stream ID of a segment: ``<start ms>-<remaining ns>``. Distinct start times give distinct,
    time-ordered IDs, also below 1 ms; the same start always gives the same ID."""
    if start_ns <= 0:
        raise PublishError(f"segment start {start_ns} ns is not after the epoch")
    ms, rem = divmod(int(start_ns), 1_000_000)
    return f"{ms}-{rem}"


# ----------------------------------------------------------------------------------- encoding


def field_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def field_value(fields: dict[Any, Any], name: str) -> Any:
    if name.encode() in fields:
        return fields[name.encode()]
    if name in fields:
        return fields[name]
    raise EntryDecodeError(f"entry has no field {name!r}")


def pack_mask(mask: np.ndarray) -> bytes:
    """Bool array -> bits, row-major, least significant bit first (``np.packbits(bitorder="little")``)."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel(), bitorder="little").tobytes()


def unpack_mask(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=count, bitorder="little")
    return bits.reshape(shape).astype(bool)


def _channels_text(channels: Sequence[str], component_order: str) -> str:
    if channels and len(channels) == len(component_order):
        return ",".join(ch or comp for ch, comp in zip(channels, component_order))
    return ",".join(component_order)


def encode_segment(
    segment: Segment, model: str = "", model_version: str = "", published_ns: int | None = None
) -> dict[str, bytes | str]:
    """Stream fields of a denoised segment (see ``docs/redis-schema.md``)."""
    data = np.ascontiguousarray(segment.data, dtype=DTYPE)
    c, n = data.shape
    return {
        "station": segment.station_id,
        "start_ns": str(segment.start_ns),
        "end_ns": str(segment.end_ns),
        "sampling_rate_hz": repr(float(segment.sampling_rate_hz)),
        "channels": _channels_text(segment.channels, segment.component_order),
        "component_order": segment.component_order,
        "dtype": DTYPE,
        "shape": f"{c},{n}",
        "data": data.tobytes(),
        "mask_encoding": MASK_ENCODING,
        "mask": pack_mask(segment.mask),
        "steps": str(segment.steps_min),
        "steps_max": str(segment.steps_max),
        "model": model,
        "model_version": model_version,
        "published_ns": str(time.time_ns() if published_ns is None else published_ns),
        "schema": SCHEMA_VERSION,
    }


@dataclass
class DecodedSegment:
    segment: Segment
    model: str
    model_version: str
    published_ns: int


def check_layout(fields: dict[Any, Any]) -> None:
    """Refuse an entry written to another layout than this code reads: a ``schema`` version or a
    ``mask_encoding`` it does not know (a producer of another release, mid-upgrade). Read anyway, such an
    entry could decode into wrong data; refused, it is reported (or dead-lettered) with both versions named.
    An entry without these fields is read as this layout."""
    for key, known in (("schema", SCHEMA_VERSION), ("mask_encoding", MASK_ENCODING)):
        value = _optional(fields, key, known)
        if value != known:
            raise EntryDecodeError(f"{key} {value!r}, this release reads {known!r}: "
                                   "producer and consumer run different releases")


def decode_segment(fields: dict[Any, Any]) -> DecodedSegment:
    """Inverse of :func:`encode_segment` (bytes or str keys); an entry of another layout is refused
    (:func:`check_layout`)."""
    try:
        check_layout(fields)
        shape = tuple(int(v) for v in field_text(field_value(fields, "shape")).split(","))
        data = np.frombuffer(field_value(fields, "data"), dtype=field_text(field_value(fields, "dtype"))).reshape(shape)
        mask = unpack_mask(field_value(fields, "mask"), shape)
        rate = float(field_text(field_value(fields, "sampling_rate_hz")))
        channels = field_text(field_value(fields, "channels")).split(",")
        order = field_text(field_value(fields, "component_order"))
        seg = Segment(
            station_id=field_text(field_value(fields, "station")),
            start_sample=sample_index(int(field_text(field_value(fields, "start_ns"))), rate),
            sampling_rate_hz=rate,
            data=data.astype(np.float32),
            mask=mask,
            steps_min=int(field_text(field_value(fields, "steps"))),
            steps_max=int(field_text(field_value(fields, "steps_max"))),
            channels=tuple(channels),
            component_order=order,
        )
        return DecodedSegment(
            seg, field_text(field_value(fields, "model")), field_text(field_value(fields, "model_version")), int(field_text(field_value(fields, "published_ns")))
        )
    except (ValueError, TypeError, EntryDecodeError) as exc:
        raise EntryDecodeError(f"bad segment entry: {exc}") from exc


_PICK_FIELDS = (
    "pick_id", "station", "phase", "time_ns", "time_iso", "probability", "source", "denoiser",
    "denoiser_version", "picker", "picker_version", "steps", "emitted_ns",
)
_AMPLITUDE_FIELDS = ("pd_{k}s_m", "pv_{k}s_m_s", "pa_{k}s_m_s2", "tau_c_{k}s_s")


def _opt(value: float | None, fmt: str = "{:.6g}") -> str:
    return "" if value is None or value != value else fmt.format(value)


def encode_pick(pick: Pick, published_ns: int | None = None) -> dict[str, str]:
    """Flat string fields of a pick (no JSON). Lifecycle fields (``status``, ``update``,
    ``reason``) and the early-warning fields (coordinates, amplitudes, timing) follow
    ``docs/redis-schema.md``; an unknown value is an empty string, amplitude fields exist only for
    the seconds that had arrived."""
    out = {
        "pick_id": pick.pick_id,
        "station": pick.station_id,
        "phase": pick.phase,
        "time_ns": str(pick.time_ns),
        "time_iso": pick.time_iso,
        "probability": f"{pick.probability:.4f}",
        "source": pick.source,
        "denoiser": pick.denoiser,
        "denoiser_version": pick.denoiser_version,
        "picker": pick.picker,
        "picker_version": pick.picker_version,
        "steps": str(pick.steps),
        "emitted_ns": str(pick.emitted_ns),
        "status": pick.status,
        "update": str(pick.update),
        "reason": pick.reason,
    }
    d = pick.details if pick.details is not None else PickDetails()
    out.update({
        "latitude_deg": _opt(d.latitude_deg, "{:.6f}"),
        "longitude_deg": _opt(d.longitude_deg, "{:.6f}"),
        "elevation_m": _opt(d.elevation_m, "{:.1f}"),
        "time_uncertainty_s": _opt(d.time_uncertainty_s, "{:.3f}"),
        "polarity": d.polarity,
        "snr_db": _opt(d.snr_db, "{:.1f}"),
        "amplitude_seconds": str(len(d.amplitudes)),
        "newest_sample_ns": str(d.newest_sample_ns),
        "newest_arrival_ns": str(d.newest_arrival_ns),
        "onset_arrival_ns": str(d.onset_arrival_ns),
        "inference_ns": str(d.inference_ns),
        "published_ns": str(time.time_ns() if published_ns is None else published_ns),
    })
    for sec, pd, pv, pa, tc in d.amplitudes:
        for name, value in zip(_AMPLITUDE_FIELDS, (pd, pv, pa, tc)):
            out[name.format(k=sec)] = _opt(value)
    return out


def _optional(fields: dict[Any, Any], name: str, default: str = "") -> str:
    try:
        return field_text(field_value(fields, name))
    except EntryDecodeError:
        return default


def _float_or_none(text: str) -> float | None:
    return float(text) if text else None


def decode_pick(fields: dict[Any, Any]) -> Pick:
    """Inverse of :func:`encode_pick`; entries written before the lifecycle fields existed decode as
    ``final``, update 0."""
    try:
        v = {name: field_text(field_value(fields, name)) for name in _PICK_FIELDS}
        amps = []
        for sec in (1, 2, 3):
            vals = [_optional(fields, n.format(k=sec)) for n in _AMPLITUDE_FIELDS]
            if vals[0]:
                amps.append((sec, *(float(x) if x else float("nan") for x in vals)))
        details = PickDetails(
            latitude_deg=_float_or_none(_optional(fields, "latitude_deg")),
            longitude_deg=_float_or_none(_optional(fields, "longitude_deg")),
            elevation_m=_float_or_none(_optional(fields, "elevation_m")),
            time_uncertainty_s=_float_or_none(_optional(fields, "time_uncertainty_s")),
            polarity=_optional(fields, "polarity"),
            snr_db=_float_or_none(_optional(fields, "snr_db")),
            amplitudes=tuple(amps),  # type: ignore[arg-type]
            newest_sample_ns=int(_optional(fields, "newest_sample_ns", "0") or 0),
            newest_arrival_ns=int(_optional(fields, "newest_arrival_ns", "0") or 0),
            onset_arrival_ns=int(_optional(fields, "onset_arrival_ns", "0") or 0),
            inference_ns=int(_optional(fields, "inference_ns", "0") or 0),
        )
        return Pick(
            pick_id=v["pick_id"],
            station_id=v["station"],
            phase=v["phase"],
            time_ns=int(v["time_ns"]),
            probability=float(v["probability"]),
            source=v["source"],
            denoiser=v["denoiser"],
            denoiser_version=v["denoiser_version"],
            picker=v["picker"],
            picker_version=v["picker_version"],
            steps=int(v["steps"]),
            emitted_ns=int(v["emitted_ns"]),
            status=_optional(fields, "status", "final") or "final",
            update=int(_optional(fields, "update", "0") or 0),
            reason=_optional(fields, "reason"),
            details=None if details == PickDetails() else details,
        )
    except (ValueError, EntryDecodeError) as exc:
        raise EntryDecodeError(f"bad pick entry: {exc}") from exc


def published_ns_of(fields: dict[Any, Any]) -> int:
    """When the publisher wrote a pick entry (0 for entries without the field)."""
    return int(_optional(fields, "published_ns", "0") or 0)


def flat_fields(fields: dict[str, bytes | str]) -> list[bytes | str]:
    """``{k: v}`` as ``[k, v, ...]`` (XADD arguments)."""
    out: list[bytes | str] = []
    for k, v in fields.items():
        out.extend((k, v))
    return out
