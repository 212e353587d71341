"""Stream fields of the scale-out work items: model input windows and worker results.

A window travels to the workers as :func:`encode_window` fields; a worker's output for one window
travels back as :func:`encode_result` fields (the input window's identity and mask, the denoised
window, the P/S/noise probabilities when a picker ran, the sampler steps and model names) and is
read back as a one-window :class:`~streamer.worker.BatchResult`. Data and masks round-trip exactly
(float32 little-endian, masks bit-packed). Pure code.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from streamer.records import Window
from streamer.schema import (
    DTYPE,
    MASK_ENCODING,
    SCHEMA_VERSION,
    EntryDecodeError,
    check_layout,
    field_text,
    field_value,
    pack_mask,
    unpack_mask,
)
from streamer.worker import BatchResult

__all__ = ["decode_result", "decode_window", "encode_result", "encode_window", "result_key"]

_RESULT_ARRAYS = ("probs", "raw_probs")
_RESULT_TEXT = ("model", "model_version", "picker", "picker_version", "worker")


def encode_window(window: Window) -> dict[str, bytes | str]:
    """Stream fields of a model input window (scale-out queue)."""
    data = np.ascontiguousarray(window.data, dtype=DTYPE)
    c, n = data.shape
    return {
        "window_id": window.window_id,
        "station": window.station_id,
        "start_ns": str(window.start_ns),
        "sampling_rate_hz": repr(float(window.sampling_rate_hz)),
        "channels": ",".join(window.channels),
        "dtype": DTYPE,
        "shape": f"{c},{n}",
        "data": data.tobytes(),
        "mask_encoding": MASK_ENCODING,
        "mask": pack_mask(window.mask),
        "newest_arrival_ns": str(window.newest_arrival_ns),
        "meta": json.dumps(window.meta, default=str, sort_keys=True),
        "schema": SCHEMA_VERSION,
    }


def decode_window(fields: dict[Any, Any]) -> Window:
    """Inverse of :func:`encode_window`; data and mask round-trip exactly. An entry of another layout is
    refused (:func:`streamer.schema.check_layout`)."""
    try:
        check_layout(fields)
        shape = tuple(int(v) for v in field_text(field_value(fields, "shape")).split(","))
        data = np.frombuffer(field_value(fields, "data"), dtype=field_text(field_value(fields, "dtype"))).reshape(shape)
        channels_text = field_text(field_value(fields, "channels"))
        return Window(
            station_id=field_text(field_value(fields, "station")),
            start_ns=int(field_text(field_value(fields, "start_ns"))),
            sampling_rate_hz=float(field_text(field_value(fields, "sampling_rate_hz"))),
            data=data.astype(np.float32),  # a writable copy
            mask=unpack_mask(field_value(fields, "mask"), shape),
            newest_arrival_ns=int(field_text(field_value(fields, "newest_arrival_ns"))),
            channels=tuple(channels_text.split(",")) if channels_text else (),
            meta=json.loads(field_text(field_value(fields, "meta"))),
        )
    except (ValueError, TypeError, EntryDecodeError) as exc:
        raise EntryDecodeError(f"bad window entry: {exc}") from exc


def _array_bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=DTYPE).tobytes()


def encode_result(result: BatchResult, i: int) -> dict[str, bytes | str]:
    """Stream fields of the worker's output for ``result.windows[i]``: the window's fields with the
    denoised data in place of the input, plus the probability blocks present, steps and names."""
    window = result.windows[i]
    out = encode_window(
        Window(window.station_id, window.start_ns, window.sampling_rate_hz, result.denoised[i], window.mask,
               window.newest_arrival_ns, window.channels, dict(window.meta))
    )
    for name in _RESULT_ARRAYS:
        block = getattr(result, name)
        if block is not None:
            out[name] = _array_bytes(block[i])
    if result.confirm_p is not None and result.unconfirmed_p_threshold is not None:
        # the pick policy travels with the result: the raw P that confirms, and the threshold it serves
        out["confirm_p"] = _array_bytes(result.confirm_p[i])
        out["unconfirmed_p_threshold"] = repr(float(result.unconfirmed_p_threshold))
    out["steps"] = str(int(result.steps))
    out["steps_chosen"] = str(int(result.steps_chosen))
    out["model"] = result.model
    out["model_version"] = result.model_version
    for key in ("picker", "picker_version", "worker"):
        if key in result.extra:
            out[key] = str(result.extra[key])
    return out


def decode_result(fields: dict[Any, Any]) -> BatchResult:
    """Inverse of :func:`encode_result`: a one-window :class:`BatchResult`."""
    window = decode_window(fields)
    try:
        blocks: dict[str, np.ndarray | None] = {}
        for name in _RESULT_ARRAYS:
            raw = fields.get(name.encode(), fields.get(name))
            blocks[name] = (
                None if raw is None else np.frombuffer(raw, dtype=DTYPE).reshape((1, *window.data.shape)).copy()
            )
        raw = fields.get(b"confirm_p", fields.get("confirm_p"))
        confirm = None if raw is None else np.frombuffer(raw, dtype=DTYPE).reshape((1, window.data.shape[-1])).copy()
        raw = fields.get(b"unconfirmed_p_threshold", fields.get("unconfirmed_p_threshold"))
        unconfirmed = None if raw is None else float(field_text(raw))
        if (confirm is None) != (unconfirmed is None):
            raise EntryDecodeError("confirm_p and unconfirmed_p_threshold come together")
        if unconfirmed is not None and not 0.0 < unconfirmed <= 1.0:
            raise EntryDecodeError(f"unconfirmed_p_threshold {unconfirmed} is not in (0, 1]")
        steps = int(field_text(field_value(fields, "steps")))
        chosen = int(field_text(field_value(fields, "steps_chosen")))
        text = {}
        for key in _RESULT_TEXT:
            raw = fields.get(key.encode(), fields.get(key))
            if raw is not None:
                text[key] = field_text(raw)
    except (ValueError, TypeError, EntryDecodeError) as exc:
        raise EntryDecodeError(f"bad result entry: {exc}") from exc
    return BatchResult(
        [window],
        window.data[None],
        blocks["probs"],
        blocks["raw_probs"],
        steps,
        chosen,
        None,
        0.0,
        0.0,
        model=text.get("model", ""),
        model_version=text.get("model_version", ""),
        extra={k: v for k, v in text.items() if k in ("picker", "picker_version", "worker")},
        confirm_p=confirm,
        unconfirmed_p_threshold=unconfirmed,
    )


def result_key(fields: dict[Any, Any]) -> str:
    """De-duplication id of a result entry: its window's id."""
    return field_text(field_value(fields, "window_id"))
