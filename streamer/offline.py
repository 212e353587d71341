"""The offline path: a finished recording through the live service's own stages, without sockets.

``coldstream denoise`` and the stream evaluation of ``coldstream evaluate`` call
:func:`denoise_stream`. It runs exactly the stages the daemon runs between a SeedLink packet and a
Redis entry, in one thread and in this order:

1. the traces become :class:`~streamer.records.SampleBlock` objects of ``block_s`` each, fed in time
   order to the live :class:`~streamer.ingest.Ingestor` (ring buffers, component mapping, the
   absolute window grid, gap and rate handling: ``buffers.py``, ``windows.py``), flushed at the end;
2. the windows go in batches through :meth:`streamer.worker.Worker.process_batch` (denoiser with a
   fixed number of sampler steps and no time budget, then PhaseNet on the denoised windows);
3. :meth:`streamer.output.OutputStage.handle` stitches them into final segments and finds picks,
   and :meth:`~streamer.output.OutputStage.flush_all` emits the held tails.

So a recording denoised offline and the same recording streamed through the daemon give the same
samples and the same picks (``tests/integration/test_offline_equivalence.py``), as long as the
daemon ran the same number of sampler steps and the data had no telemetry outage: the daemon ends a
station's stitching run after ``3 x windows.stride_s`` of wall-clock silence (a new run and its
edges follow), which a finished file cannot show; within a file, gaps act on both paths alike.

What this means for a file: windows start on the absolute grid (every ``windows.stride_s`` since
the epoch) at or after a station's first sample and end at or before its last, so up to one stride
at the start and at the end of each contiguous stretch is not denoised (reported in
:attr:`OfflineResult.uncovered_s`); output is at the model rate (100 Hz) whatever the input rate;
gaps longer than ``buffers.max_zero_fill_gap_s`` split the output. The blocks arrive on a simulated
clock that follows their data time (:func:`stream_blocks`), so a gap longer than
``buffers.max_clock_jump_s`` is what a station's outage is live: the station restarts right after
it and the data after it are denoised like any other (``docs/ingest.md``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.config import Settings
from streamer.ingest import Ingestor
from streamer.loaders import unconfirmed_p_threshold
from streamer.inventory import Inventory
from streamer.metrics import Metrics
from streamer.output import OutputStage
from streamer.picks import Pick
from streamer.records import NS_PER_S, OutputItem, SampleBlock, Window
from streamer.stitch import Segment
from streamer.worker import DenoiserLike, PickerLike, Worker

log = logging.getLogger(__name__)

__all__ = ["OfflineResult", "denoise_stream", "segments_to_stream", "stream_blocks"]

BLOCK_S = 10.0
"""Length of the blocks a trace is cut into (a few miniSEED records' worth)."""


@dataclass
class OfflineResult:
    """What the offline path produced: final ``segments`` (as the daemon would publish them),
    ``picks`` in time order, the denoised ObsPy ``stream``, and per input trace id the seconds of
    input that no window covered (``uncovered_s``)."""

    segments: list[Segment]
    picks: list[Pick]
    stream: Any
    uncovered_s: dict[str, float] = field(default_factory=dict)


def _utc_ns(t: Any) -> int:
    return int(t.ns) if hasattr(t, "ns") else round(float(t.timestamp) * NS_PER_S)


def stream_blocks(stream: Any, block_s: float = BLOCK_S, arrival_ns: int | None = None) -> Iterator[SampleBlock]:
    """The traces of an ObsPy ``stream`` as blocks of ``block_s``, ordered by start time (ties by id,
    so the components of one interval arrive together, as from a SeedLink server).

    Each block arrives as if the recording were streamed live from ``arrival_ns`` (default: now)
    on: at ``arrival_ns`` plus the time from the recording's first sample to the block's last. A gap
    in the data is then as long a silence on the arrival clock, as a station's outage is live, so
    the ring buffers treat it alike (``streamer.buffers``: a gap longer than
    ``buffers.max_clock_jump_s`` restarts the station at once, it is not a clock jump to confirm)."""
    base = time.time_ns() if arrival_ns is None else arrival_ns
    pieces: list[tuple[int, str, int, float, np.ndarray]] = []
    for tr in stream:
        s = tr.stats
        rate = float(s.sampling_rate)
        if not rate > 0:
            log.warning("%s: sampling rate %r, trace skipped", tr.id, rate)
            continue
        data = np.ma.filled(np.ma.masked_invalid(np.asarray(tr.data, dtype=np.float64)), np.nan)
        n = max(1, round(block_s * rate))
        t0 = _utc_ns(s.starttime)
        for i in range(0, len(data), n):
            start = t0 + round(i * NS_PER_S / rate)
            samples = data[i : i + n]
            end = t0 + round((i + len(samples)) * NS_PER_S / rate)
            pieces.append((start, tr.id, end, rate, samples))
    if not pieces:
        return
    first_ns = min(p[0] for p in pieces)
    pieces.sort(key=lambda p: (p[0], p[1]))
    for start, seed_id, end, rate, samples in pieces:
        yield SampleBlock(seed_id, start, rate, samples, base + (end - first_ns))


def denoise_stream(
    stream: Any,
    denoiser: DenoiserLike,
    settings: Settings,
    *,
    picker: PickerLike | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    metrics: Metrics | None = None,
    inventory: Inventory | None = None,
) -> OfflineResult:
    """Denoise (and with ``picker`` pick) an ObsPy ``stream`` through the live stages (module docstring).

    ``steps``: sampler steps per window (None: ``worker.max_steps``, where unset the denoiser's recommended
    steps, as the daemon resolves it); ``batch_size``: windows per
    model call (None: ``worker.batch_size``). ``inventory``: channel orientations (rotation to Z, N, E),
    as the daemon loads from ``inventory.stationxml``. ``settings`` supply the buffers, windows, stitching,
    picker thresholds and batch padding, as for the daemon.
    """
    m = metrics if metrics is not None else Metrics()
    spec = getattr(denoiser, "spec", None)
    if spec is None:
        from models.spec import DEFAULT_SPEC

        spec = DEFAULT_SPEC
    k = int(steps) if steps is not None else Worker.resolve_max_steps(settings.worker, denoiser)
    items: list[OutputItem] = []
    output = OutputStage(
        settings, m, items.extend, window_samples=spec.window_samples, sampling_rate_hz=spec.sampling_rate_hz,
        picker=picker,
    )
    ws = settings.worker
    worker = Worker(
        denoiser, m, lambda _result: None,
        batch_size=batch_size or ws.batch_size, budget_ms=1e12, min_steps=k, max_steps=k,
        queue_max_windows=2**31 - 1, picker=picker, raw_picker=settings.picker.raw_comparison,
        pad_batch_multiple=ws.pad_batch_multiple, p_threshold=settings.picker.p_threshold,
        unconfirmed_p_threshold=unconfirmed_p_threshold(settings, denoiser),
    )
    ingestor = Ingestor(spec, settings.buffers, settings.windows, m, inventory=inventory)
    pending: list[Window] = []

    def run(windows: Sequence[Window], final: bool = False) -> None:
        pending.extend(windows)
        while len(pending) >= worker.batch_size or (final and pending):
            batch = pending[: worker.batch_size]
            del pending[: worker.batch_size]
            output.handle(worker.process_batch(batch))

    for block in stream_blocks(stream):
        run(ingestor.add_block(block))
    run(ingestor.flush(), final=True)
    output.flush_all()
    segments = [i.segment for i in items if i.kind == "segment" and i.segment is not None]
    picks = sorted((i.pick for i in items if i.kind == "pick" and i.pick is not None), key=lambda p: p.time_ns)
    out = segments_to_stream(segments, note=_note(denoiser, k, settings))
    return OfflineResult(segments, picks, out, _uncovered(stream, segments))


def _note(denoiser: Any, steps: int, settings: Settings) -> str:
    return (
        f"coldstream denoise: {getattr(denoiser, 'name', '?')} version {getattr(denoiser, 'version', '?')}, "
        f"{steps} step(s), stride {settings.windows.stride_s:g} s, {settings.stitch.mode}"
    )


def segments_to_stream(segments: Sequence[Segment], note: str = "") -> Any:
    """Segments as an ObsPy ``Stream``: one float32 trace per component that has data, named by the
    segment's channel codes (``NET.STA.LOC.CHA``); masked samples become gaps."""
    from obspy import Stream, Trace, UTCDateTime

    out = Stream()
    for seg in segments:
        net, sta, loc = (seg.station_id.split(".") + ["", "", ""])[:3]
        for row, comp in enumerate(seg.component_order):
            cha = seg.channels[row] if row < len(seg.channels) else ""
            mask = seg.mask[row]
            if not cha or not mask.any():
                continue
            data = seg.data[row].astype(np.float32)
            values: Any = data if mask.all() else np.ma.masked_array(data, mask=~mask)
            tr = Trace(values, header={
                "network": net, "station": sta, "location": loc, "channel": cha,
                "sampling_rate": seg.sampling_rate_hz,
                "starttime": UTCDateTime(ns=seg.start_ns),
            })
            if note:
                tr.stats.processing = [note]
            out.append(tr)
    out.merge(method=0)  # consecutive segments of one channel join; gaps stay masked
    return out


def _uncovered(stream: Any, segments: Sequence[Segment]) -> dict[str, float]:
    """Seconds of each input trace no segment covers, counted per station and band/instrument code
    (rotated output names its channels ..E/..N/..Z whatever the input channels were)."""
    covered: dict[str, float] = {}
    for seg in segments:
        bands = {cha[:2] for row, cha in enumerate(seg.channels) if cha and seg.mask[row].any()}
        for band in bands:
            key = f"{seg.station_id}.{band}"
            covered[key] = covered.get(key, 0.0) + seg.n_samples / seg.sampling_rate_hz
    out: dict[str, float] = {}
    for tr in stream:
        total = tr.stats.npts / float(tr.stats.sampling_rate)
        key = f"{tr.stats.network}.{tr.stats.station}.{tr.stats.location}.{tr.stats.channel[:2]}"
        out[tr.id] = max(0.0, total - covered.get(key, 0.0))
    return out
