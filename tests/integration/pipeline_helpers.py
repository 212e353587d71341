"""Helpers shared by the pipeline integration tests: the denoiser to use, settings, Redis readers."""

from __future__ import annotations

import importlib.resources
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.denoiser import SHIPPED_WEIGHTS as SHIPPED
from streamer.config import Settings, load_settings
from streamer.schema import StreamKeys, decode_pick, decode_segment
from streamer.stitch import Segment


def shipped_weights_present() -> bool:
    return (importlib.resources.files("models.weights") / SHIPPED).is_file()


def weights_path(tmp_dir: Path) -> Path | None:
    """None (the shipped weights) when they exist; else a tiny random-init checkpoint written with the
    real checkpoint code, so the real loading path runs either way."""
    if shipped_weights_present():
        return None
    import torch

    from models.checkpoint import save_checkpoint
    from models.spec import DEFAULT_SPEC
    from models.unet import UNet1D

    torch.manual_seed(0)
    model = UNet1D(base_channels=4, channel_mults=(1, 2), bottleneck_dilations=(1,), time_dim=8)
    path = tmp_dir / "tiny.pt"
    spec = {
        "sampling_rate_hz": DEFAULT_SPEC.sampling_rate_hz,
        "window_samples": DEFAULT_SPEC.window_samples,
        "component_order": DEFAULT_SPEC.component_order,
    }
    save_checkpoint(path, model, schedule_kind="linear", n_train_steps=8, spec=spec)
    return path


def make_settings(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    replay_port: int,
    weights: Path | None,
    seisbench_cache: Path | None,
    **extra: Any,
) -> Settings:
    overrides: dict[str, Any] = {
        "seedlink": {
            "servers": [{"host": "127.0.0.1", "port": replay_port, "streams": ["XX_*"]}],
            "state_file": str(tmp_path / "seedlink.state"),
            "state_save_interval_s": 0.5,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
        "redis": {"url": redis_url, "stream_prefix": prefix},
        "metrics": {"enabled": False},
        "worker": {"batch_size": 16, "max_wait_ms": 20.0, "max_steps": 2, "budget_ms": 60_000.0,
                   "shed_age_strides": 0.0, "device": "cpu"},
        "model": {"weights": str(weights) if weights is not None else None},
        "picker": {"enabled": seisbench_cache is not None,
                   "seisbench_cache": str(seisbench_cache) if seisbench_cache is not None else None},
        "service": {"drain_timeout_s": 60.0},
    }
    for k, v in extra.items():
        overrides.setdefault(k, {}).update(v)
    if overrides["model"]["weights"] is None:
        del overrides["model"]["weights"]
    if overrides["picker"]["seisbench_cache"] is None:
        del overrides["picker"]["seisbench_cache"]
    return load_settings(overrides=overrides, environ={})


def read_segments(client: Any, prefix: str, station_id: str) -> list[Segment]:
    entries = client.xrange(StreamKeys(prefix).denoised(station_id))
    return [decode_segment(fields).segment for _id, fields in entries]


def read_picks(client: Any, prefix: str, status: str | None = "final") -> list[Any]:
    """The pick reports in Redis, in stream order: only those of ``status`` (default the final picks;
    None: every report of the lifecycle)."""
    picks = [decode_pick(fields) for _id, fields in client.xrange(StreamKeys(prefix).picks)]
    return [p for p in picks if status is None or p.status == status]


def assert_continuous(segments: list[Segment], start_sample: int, end_sample: int) -> None:
    """Segments tile ``[start_sample, end_sample)`` exactly, in order, with finite data and full masks."""
    assert segments, "no segments"
    assert segments[0].start_sample == start_sample
    for a, b in zip(segments, segments[1:]):
        assert a.end_sample == b.start_sample, f"hole or overlap at sample {a.end_sample} / {b.start_sample}"
    assert segments[-1].end_sample == end_sample
    for s in segments:
        assert np.isfinite(s.data).all()
        assert s.mask.all()


def wait_for(cond: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Poll ``cond`` until it is true; fail the test after ``timeout_s`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")
