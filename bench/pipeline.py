"""Pipeline benchmark: how many 100 Hz three-component stations one process sustains in real time.

For each station count N on a ladder, N stations are fed in real time through the real ingest path
(``Ingestor.add_block``: ring buffers and grid windows; the miniSEED decoding and the sockets are left
out, ``bench ingest`` measures them), using the bundled demo recording's data cycled over the
stations. The real :class:`~streamer.worker.Worker` thread (shipped denoiser, step choice within the
latency budget, shedding) and PhaseNet run on the windows; the real :class:`~streamer.output.OutputStage`
stitches and picks; outputs go to an in-process sink instead of Redis. End-to-end latency: newest
sample arrival of a window -> its outputs handed to the publisher (the service measures up to Redis
accepting them; the Redis write runs on its own thread).

A rung is *sustained* when, after the warm-up strides, no window was shed, every window was processed,
and the p99 end-to-end latency is under 2 x stride. The ladder stops at the first rung that is not.

    .venv/bin/python bench/pipeline.py                          # ladder 25, 50, 100, 150, 200, 300, ...
    .venv/bin/python bench/pipeline.py --stations 100 --duration-s 60
    .venv/bin/python bench/pipeline.py --write-docs             # replace the "## Pipeline" section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer.config import Settings, load_settings
from streamer.ingest import Ingestor
from streamer.loaders import unconfirmed_p_threshold
from streamer.metrics import Metrics
from streamer.records import NS_PER_S, SampleBlock
from streamer.output import OutputStage
from streamer.worker import Worker

log = logging.getLogger("bench.pipeline")

LADDER = (25, 50, 100, 150, 200, 300, 400, 600, 800)
CHUNK_S = 1.0  # one block per channel per second (a 512-byte Steim-2 record holds 2-4 s at 100 Hz)


def demo_traces() -> list[np.ndarray]:
    """The demo recording as ``(3, n)`` float32 arrays (ENZ), one per demo station."""
    import obspy

    from streamer.demo_data.build import recording_path

    st = obspy.read(str(recording_path()))
    out = []
    for sta in sorted({tr.stats.station for tr in st}):
        out.append(np.stack([st.select(station=sta, component=c)[0].data.astype(np.float32) for c in "ENZ"]))
    return out


@dataclass
class RungResult:
    stations: int
    duration_s: float
    windows_expected: int
    windows_processed: int
    windows_shed: int
    latencies_s: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    degradations: dict[str, float] = field(default_factory=dict)
    picks: int = 0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

    def sustained(self, stride_s: float) -> bool:
        return (
            self.windows_shed == 0
            and self.windows_processed >= self.windows_expected
            and self.pct(99) < 2 * stride_s
        )

    def steps_text(self) -> str:
        if not self.steps:
            return "-"
        vals, counts = np.unique(self.steps, return_counts=True)
        return ", ".join(f"{v}: {c}" for v, c in zip(vals, counts))


class LatencySink:
    """Stands in for the publisher: records end-to-end latency of every segment handed over."""

    def __init__(self, measure_from_ns: int) -> None:
        self.measure_from_ns = measure_from_ns
        self.latencies_s: list[float] = []
        self._lock = threading.Lock()

    def publish(self, items: list[Any]) -> None:
        now = time.time_ns()
        with self._lock:
            for item in items:
                seg = item.segment
                if seg is not None and seg.newest_arrival_ns >= self.measure_from_ns:
                    self.latencies_s.append((now - seg.newest_arrival_ns) / NS_PER_S)


def run_rung(
    n_stations: int,
    settings: Settings,
    denoiser: Any,
    picker: Any,
    traces: list[np.ndarray],
    duration_s: float,
    warmup_strides: int = 1,
) -> RungResult:
    """Feed ``n_stations`` in real time for ``duration_s`` after a backfill; returns the measurements."""
    stride_s = settings.windows.stride_s
    metrics = Metrics()
    ingestor = Ingestor(denoiser.spec, settings.buffers, settings.windows, metrics)
    rate = denoiser.spec.sampling_rate_hz
    window_s = denoiser.spec.window_samples / rate
    chunk = int(CHUNK_S * rate)
    # data time 0 of the feed sits on the window grid; backfill window_s - stride_s at once
    t0_ns = (time.time_ns() // int(stride_s * NS_PER_S)) * int(stride_s * NS_PER_S) - int(3600 * NS_PER_S)
    backfill_chunks = int((window_s - stride_s) / CHUNK_S)
    # the backfill leaves each station one stride short of its first window: the first burst of N
    # windows completes one stride into the real-time feed; the first ``warmup_strides`` bursts are
    # not measured
    measure_from = time.time_ns() + int((warmup_strides + 0.5) * stride_s * NS_PER_S)
    sink = LatencySink(measure_from)
    output = OutputStage(settings, metrics, sink.publish, window_samples=denoiser.spec.window_samples,
                         sampling_rate_hz=rate, picker=picker, idle_flush_s=1e9)
    worker = Worker.from_settings(
        denoiser, metrics, output.submit, settings.worker, stride_s, picker=picker,
        p_threshold=settings.picker.p_threshold, unconfirmed_p_threshold=unconfirmed_p_threshold(settings, denoiser),
    )
    steps: list[int] = []
    sizes: list[int] = []
    on_batch_lock = threading.Lock()

    def on_batch(result: Any) -> None:
        with on_batch_lock:
            if result.finished_ns >= measure_from:
                steps.append(result.steps)
                sizes.append(len(result.windows))

    output.on_batch = on_batch
    worker.controller.seed(worker.batch_size, float(denoiser.step_cost_ms(worker.batch_size)))
    output.start()
    worker.start()
    n_chunks_total = backfill_chunks + int(duration_s / CHUNK_S)
    ids = [f"BN.S{i:04d}." for i in range(n_stations)]
    start_mono = time.monotonic()
    for k in range(n_chunks_total):
        if k >= backfill_chunks:  # real time from here on
            due = start_mono + (k - backfill_chunks) * CHUNK_S
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        arrival = time.time_ns()
        for i, sid in enumerate(ids):
            src = traces[i % len(traces)]
            off = (k * chunk + 997 * i) % (src.shape[1] - chunk)
            for c, cha in enumerate(("HHE", "HHN", "HHZ")):
                block = SampleBlock(f"{sid}{cha}", t0_ns + k * chunk * NS_PER_S // int(rate), rate,
                                    src[c, off : off + chunk], arrival)
                windows = ingestor.add_block(block)
                if windows:
                    worker.submit(windows)
    fed_end = time.monotonic()
    # let the last stride's windows finish (bounded)
    while not worker.idle and time.monotonic() - fed_end < 3 * stride_s:
        time.sleep(0.05)
    worker.stop(drain=False, timeout_s=10)
    output.stop(timeout_s=10)
    shed = sum(
        metrics.registry.get_sample_value("coldstream_windows_shed_total", {"reason": r}) or 0.0
        for r in ("age", "overload", "queue_full", "error")
    )
    degr = {
        r: metrics.registry.get_sample_value("coldstream_sampler_degradations_total", {"reason": r}) or 0.0
        for r in ("budget", "overload")
    }
    n_windows_per_station = int((backfill_chunks + duration_s / CHUNK_S - window_s) // stride_s) + 1
    return RungResult(
        n_stations,
        duration_s,
        n_windows_per_station * n_stations,
        worker.windows_done,
        int(shed),
        sink.latencies_s,
        steps,
        sizes,
        degr,
        output.picks,
    )


def machine_text(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def format_table(results: list[RungResult], stride_s: float) -> str:
    lines = [
        "| stations | windows processed / expected | shed | p50 latency s | p99 latency s | steps per batch (steps: batches) | mean batch | degraded batches | sustained |",
        "|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in results:
        mean_batch = f"{np.mean(r.batch_sizes):.1f}" if r.batch_sizes else "-"
        degr = ", ".join(f"{k} {v:.0f}" for k, v in r.degradations.items() if v) or "0"
        lines.append(
            f"| {r.stations} | {r.windows_processed} / {r.windows_expected} | {r.windows_shed} | {r.pct(50):.2f} | "
            f"{r.pct(99):.2f} | {r.steps_text()} | {mean_batch} | {degr} | {'yes' if r.sustained(stride_s) else 'no'} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, body: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("## Pipeline\n")
    if not sep:
        raise SystemExit(f"{path} has no '## Pipeline' section")
    nxt = rest.find("\n## ")
    tail = rest[nxt:] if nxt >= 0 else "\n"
    path.write_text(head + sep + "\n" + body.strip() + "\n" + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, nargs="*", default=None, help="station counts (default: the ladder)")
    parser.add_argument("--duration-s", type=float, default=50.0, help="real-time feed per rung after the backfill")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--weights", type=Path, default=None, help="denoiser weights (default: shipped)")
    parser.add_argument("--no-picker", action="store_true")
    parser.add_argument("--seisbench-cache", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    import torch

    from models.denoiser import Denoiser
    from models.picker import Picker

    torch.set_num_threads(args.threads)
    overrides = [f"worker.device={args.device!r}".replace("'", '"'), f"worker.torch_threads={args.threads}",
                 *args.overrides]
    settings = load_settings(overrides=overrides, environ={})
    denoiser = Denoiser.load(args.weights, device=args.device, mixed_precision=settings.worker.mixed_precision)
    picker = None
    if not args.no_picker:
        cache = args.seisbench_cache
        if cache is None and os.environ.get("COLDSTREAM_SHARED_DIR"):
            cache = Path(os.environ["COLDSTREAM_SHARED_DIR"]) / "data" / "seisbench-weights"
        picker = Picker(cache_root=cache, device=denoiser.device)
    traces = demo_traces()
    stride_s = settings.windows.stride_s
    results: list[RungResult] = []
    for n in args.stations or LADDER:
        log.info("rung: %d stations for %.0f s", n, args.duration_s)
        r = run_rung(n, settings, denoiser, picker, traces, args.duration_s)
        results.append(r)
        log.info("%d stations: processed %d/%d, shed %d, p50 %.2f s, p99 %.2f s, steps %s -> %s",
                 n, r.windows_processed, r.windows_expected, r.windows_shed, r.pct(50), r.pct(99), r.steps_text(),
                 "sustained" if r.sustained(stride_s) else "NOT sustained")
        if not r.sustained(stride_s) and args.stations is None:
            break
    table = format_table(results, stride_s)
    unconfirmed = unconfirmed_p_threshold(settings, denoiser)
    picker_text = "off" if picker is None else "PhaseNet" + (
        "" if unconfirmed is None else f" on the denoised and the raw windows (unconfirmed P >= {unconfirmed:g})")
    best = max((r.stations for r in results if r.sustained(stride_s)), default=0)
    cmd = ".venv/bin/python bench/pipeline.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    body = (
        f"Largest station count sustained in real time: **{best}** (100 Hz, 3 components, stride {stride_s:g} s, "
        f"batch {settings.worker.batch_size}, budget {settings.worker.budget_ms:g} ms per batch, "
        f"steps {settings.worker.min_steps}-{Worker.resolve_max_steps(settings.worker, denoiser)}, "
        f"denoiser {denoiser.name} ({denoiser.version}) on {denoiser.device}, picker {picker_text}).\n\n"
        f"Machine: {machine_text(denoiser.device)}.\n\nCommand: `{cmd.strip()}`\n\n{table}\n"
    )
    print(body)
    if args.write_docs:
        write_docs(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
