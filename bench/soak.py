"""Soak test: many simulated stations through the real pipeline for a long time (not run in CI).

    .venv/bin/python bench/soak.py --stations 200 --minutes 30
    .venv/bin/python bench/soak.py --stations 200 --minutes 5 --torch-threads 1 --json soak.json

What runs: a ``coldstream replay-server`` subprocess serves a synthetic network (``--stations``
three-component 100 Hz stations, Steim-2 miniSEED, looped in real time with times near now) over
SeedLink; this process runs the real :class:`streamer.service.Service` (SeedLink client, ingest,
worker with the denoiser, output stage, Redis publisher) against a private ``redis-server``
subprocess. Every ``--sample-s`` seconds it prints the service process's resident memory, the
end-to-end latency percentiles over the interval (from ``coldstream_end_to_end_latency_seconds``),
data latency, throughput, sampler steps and shed windows; at the end a summary with the RSS growth
rate over the second half (a leak shows as steady growth) and the overall latency percentiles.

The denoiser is the configured one (``--weights``; default: the shipped weights), or, when no
weights are shipped, a randomly initialised network of the production architecture written with the
real checkpoint code: its cost per step is the real one, its output is not meaningful. The picker
runs only with ``--seisbench-cache`` (PhaseNet weights).

Replay server and Redis run as separate processes, so the RSS reported is the service's own.

``--source cx`` soaks on real data instead: the continuous broadband recordings of CX.PB01 and
CX.PB02 (``cx-continuous-1h`` in the shared data folder, one hour per station and day) are written
record by record into the scan directory of EarthScope's ringserver (built from the vendored
tarball, as the integration tests do) at ``--speed`` x real time, and the service reads them from
ringserver over SeedLink. At the end every station's Redis segments are checked against the data fed:
holes, overlapping samples and samples missing at either end are reported, and the run fails if any
sample is not published exactly once::

    .venv/bin/python bench/soak.py --source cx --cx-day 20140301 --sample-s 60 \
        --seisbench-cache <SeisBench cache with PhaseNet original> --json soak-cx.json
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamer.config import Settings, load_settings  # noqa: E402
from streamer.metrics import LATENCY_BUCKETS_S, Metrics  # noqa: E402

log = logging.getLogger("soak")

SAMPLING_RATE_HZ = 100.0


# ------------------------------------------------------------------------------------------- input
def write_network(directory: Path, stations: int, period_s: int, start_s: int, seed: int = 0) -> list[Path]:
    """One miniSEED file per station (HHE/HHN/HHZ, int32 counts, Steim-2, 512-byte records).

    Coloured noise plus a few local-event-like bursts per station, so the data look like data to the
    decoder, buffers and (when enabled) the picker.
    """
    from obspy import Stream, Trace, UTCDateTime

    rng = np.random.default_rng(seed)
    n = int(period_s * SAMPLING_RATE_HZ)
    t = np.arange(n) / SAMPLING_RATE_HZ
    paths = []
    for i in range(stations):
        traces = []
        onsets = rng.uniform(20, period_s - 40, size=max(1, period_s // 300))
        for comp in "ENZ":
            white = rng.normal(0, 200, n)
            x = np.convolve(white, np.ones(5) / 5, mode="same")  # a little low-pass colour
            for onset in onsets:
                amp = rng.uniform(2e3, 2e4)
                f0 = rng.uniform(3, 12)
                env = np.where(t >= onset, np.exp(-(t - onset) / 4.0), 0.0)
                x += amp * env * np.sin(2 * np.pi * f0 * (t - onset))
            data = np.round(x).astype(np.int32)
            tr = Trace(data=data, header={"network": "XX", "station": f"S{i:03d}", "location": "",
                                          "channel": f"HH{comp}", "sampling_rate": SAMPLING_RATE_HZ,
                                          "starttime": UTCDateTime(start_s)})
            traces.append(tr)
        path = directory / f"XX.S{i:03d}.mseed"
        Stream(traces).write(str(path), format="MSEED", encoding="STEIM2", reclen=512)
        paths.append(path)
    return paths


def random_init_weights(directory: Path) -> Path:
    """A checkpoint of the production architecture with random weights (real cost, no skill)."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.spec import DEFAULT_SPEC
    from models.unet import UNet1D

    torch.manual_seed(0)
    path = directory / "soak-random-init.pt"
    spec = {"sampling_rate_hz": DEFAULT_SPEC.sampling_rate_hz, "window_samples": DEFAULT_SPEC.window_samples,
            "component_order": DEFAULT_SPEC.component_order}
    save_checkpoint(path, UNet1D(), schedule_kind="linear", n_train_steps=50, spec=spec)
    return path


def shipped_weights_present() -> bool:
    import importlib.resources

    return any(p.name.endswith(".pt") for p in importlib.resources.files("models.weights").iterdir())


# ------------------------------------------------------------------------------------ measurements
def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def histogram_counts(metrics: Metrics, name: str) -> list[float]:
    """Cumulative bucket counts (le order, +Inf last) of an unlabelled histogram."""
    reg = metrics.registry
    out = []
    for le in [*LATENCY_BUCKETS_S, math.inf]:
        key = "+Inf" if math.isinf(le) else repr(float(le))
        out.append(reg.get_sample_value(f"{name}_bucket", {"le": key}) or 0.0)
    return out


def quantile(cumulative: list[float], q: float) -> float | None:
    """Prometheus-style histogram_quantile over cumulative bucket counts (linear within a bucket)."""
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    bounds = [*LATENCY_BUCKETS_S, math.inf]
    i = bisect.bisect_left(cumulative, rank)
    if i >= len(bounds) - 1:
        return float(LATENCY_BUCKETS_S[-1])
    lo = 0.0 if i == 0 else float(bounds[i - 1])
    below = 0.0 if i == 0 else cumulative[i - 1]
    in_bucket = cumulative[i] - below
    hi = float(bounds[i])
    return lo + (hi - lo) * ((rank - below) / in_bucket if in_bucket else 1.0)


def total(metrics: Metrics, name: str) -> float:
    """Sum of every labelled series of a counter or gauge family."""
    s = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                s += sample.value
    return s


def by_label(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    """Sum of a labelled family per value of one label."""
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def gauge_values(metrics: Metrics, name: str) -> list[float]:
    return [s.value for f in metrics.registry.collect() for s in f.samples if s.name == name]


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    e2e_p99_s: float | None
    data_latency_median_s: float | None
    data_latency_max_s: float | None
    windows_emitted: float
    windows_processed: float
    windows_shed: float
    queue_depth: float
    mean_steps: float | None
    redis_backlog: float
    stations_reporting: float


@dataclass
class Soak:
    args: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def take_sample(metrics: Metrics, t0: float, prev: dict[str, Any]) -> Sample:
    hist = histogram_counts(metrics, "coldstream_end_to_end_latency_seconds")
    delta = [a - b for a, b in zip(hist, prev.get("hist", [0.0] * len(hist)))]
    steps_sum = total(metrics, "coldstream_sampler_steps_sum")
    steps_n = total(metrics, "coldstream_sampler_steps_count")
    d_steps = steps_n - prev.get("steps_n", 0.0)
    mean_steps = (steps_sum - prev.get("steps_sum", 0.0)) / d_steps if d_steps else None
    prev.update(hist=hist, steps_sum=steps_sum, steps_n=steps_n)
    lat = [v for v in gauge_values(metrics, "coldstream_data_latency_seconds")]
    return Sample(
        t_s=round(time.monotonic() - t0, 1),
        rss_mb=round(rss_bytes() / 2**20, 1),
        e2e_p50_s=quantile(delta, 0.5),
        e2e_p95_s=quantile(delta, 0.95),
        e2e_p99_s=quantile(delta, 0.99),
        data_latency_median_s=float(np.median(lat)) if lat else None,
        data_latency_max_s=max(lat) if lat else None,
        windows_emitted=total(metrics, "coldstream_windows_emitted_total"),
        windows_processed=total(metrics, "coldstream_windows_processed_total"),
        windows_shed=total(metrics, "coldstream_windows_shed_total"),
        queue_depth=total(metrics, "coldstream_window_queue_depth"),
        mean_steps=mean_steps,
        redis_backlog=total(metrics, "coldstream_redis_backlog_entries"),
        stations_reporting=total(metrics, "coldstream_stations_reporting"),
    )


def rounded(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_sample(s: Sample) -> None:
    print(
        f"t={s.t_s:7.0f}s rss={s.rss_mb:7.1f}MB e2e p50/p95/p99={fmt(s.e2e_p50_s)}/{fmt(s.e2e_p95_s)}/{fmt(s.e2e_p99_s)}s "
        f"data_lat med/max={fmt(s.data_latency_median_s, 1)}/{fmt(s.data_latency_max_s, 1)}s "
        f"windows emitted/processed/shed={s.windows_emitted:.0f}/{s.windows_processed:.0f}/{s.windows_shed:.0f} "
        f"queue={s.queue_depth:.0f} steps={fmt(s.mean_steps, 1)} backlog={s.redis_backlog:.0f} "
        f"stations={s.stations_reporting:.0f}",
        flush=True,
    )


def summarise(soak: Soak, metrics: Metrics, exit_code: int, wall_s: float) -> dict[str, Any]:
    samples = soak.samples
    rss = [s.rss_mb for s in samples]
    half = samples[len(samples) // 2:]
    growth = None
    if len(half) >= 3:
        t = np.array([s.t_s for s in half]) / 3600.0
        growth = float(np.polyfit(t, [s.rss_mb for s in half], 1)[0])
    hist = histogram_counts(metrics, "coldstream_end_to_end_latency_seconds")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    emitted = total(metrics, "coldstream_windows_emitted_total")
    processed = total(metrics, "coldstream_windows_processed_total")
    return {
        "wall_s": round(wall_s, 1),
        "exit_code": exit_code,
        "rss_mb_first": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_growth_mb_per_hour_second_half": None if growth is None else round(growth, 1),
        "e2e_latency_p50_s": rounded(quantile(hist, 0.5)),
        "e2e_latency_p95_s": rounded(quantile(hist, 0.95)),
        "e2e_latency_p99_s": rounded(quantile(hist, 0.99)),
        "outputs_with_latency": hist[-1],
        "windows_emitted": emitted,
        "windows_processed": processed,
        "windows_shed": total(metrics, "coldstream_windows_shed_total"),
        "sampler_degradations": total(metrics, "coldstream_sampler_degradations_total"),
        "mean_steps": rounded(total(metrics, "coldstream_sampler_steps_sum") / total(metrics, "coldstream_sampler_steps_count"))
        if total(metrics, "coldstream_sampler_steps_count") else None,
        "records_received": total(metrics, "coldstream_records_received_total"),
        "redis_published": total(metrics, "coldstream_redis_published_total"),
        "redis_publish_errors": total(metrics, "coldstream_redis_publish_errors_total"),
        "picks": total(metrics, "coldstream_picks_total"),
        "cpu_user_s": round(usage.ru_utime, 1),
        "cpu_system_s": round(usage.ru_stime, 1),
        "cpu_cores_used": round((usage.ru_utime + usage.ru_stime) / wall_s, 2) if wall_s else None,
    }


# --------------------------------------------------------------------------------------------- run
def soak_settings(args: argparse.Namespace, workdir: Path, redis_url: str, port: int, weights: Path | None,
                  streams: list[str] | None = None, maxlen: int = 2000) -> Settings:
    overrides: dict[str, Any] = {
        "seedlink": {"servers": [{"host": "127.0.0.1", "port": port, "streams": streams or ["XX_*"]}],
                     "state_file": str(workdir / "seedlink.state")},
        "redis": {"url": redis_url, "stream_prefix": "soak", "maxlen": maxlen},
        "metrics": {"enabled": False},
        "windows": {"stride_s": args.stride_s},
        "worker": {"device": args.device, "batch_size": args.batch_size},
        "picker": {"enabled": args.seisbench_cache is not None},
    }
    if args.torch_threads:
        overrides["worker"]["torch_threads"] = args.torch_threads
    if args.max_steps:
        overrides["worker"]["max_steps"] = args.max_steps
    if weights is not None:
        overrides["model"] = {"weights": str(weights)}
    if args.seisbench_cache is not None:
        overrides["picker"]["seisbench_cache"] = str(args.seisbench_cache)
    return load_settings(overrides=overrides, environ={})


def start_replay(paths: list[Path], workdir: Path, extra: tuple[str, ...] = ("--loop",),
                 timeout_s: float = 120.0) -> tuple[subprocess.Popen[bytes], int]:
    """A ``coldstream replay-server`` subprocess in real time on a free port (``extra``: more options)."""
    from streamer.redis_server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "streamer.cli", "replay-server", "--port", str(port), "--speed", "1", *extra,
           *map(str, paths)]
    log_file = open(workdir / "replay.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replay server exited: see {workdir / 'replay.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("replay server did not start")


def cx_files(args: argparse.Namespace) -> list[Path]:
    import os

    folder = args.cx_dir
    if folder is None:
        shared = os.environ.get("COLDSTREAM_SHARED_DIR")
        if not shared:
            raise SystemExit("--source cx needs --cx-dir or COLDSTREAM_SHARED_DIR (the shared data folder)")
        folder = Path(shared) / "data" / "cx-continuous-1h"
    files = sorted(Path(folder).glob(f"{args.cx_day}.CX.*.mseed"))
    if not files:
        raise SystemExit(f"no {args.cx_day}.CX.*.mseed files in {folder}")
    return files


def exactly_once(client: Any, prefix: str, station: str, first_sample: int, end_sample: int) -> dict[str, Any]:
    """Holes, overlaps and missing ends of a station's published segments against the data fed
    (model-grid samples ``[first_sample, end_sample)``: the first full window to the last)."""
    from streamer.schema import StreamKeys, decode_segment

    segs = []
    for _id, fields in client.xrange(StreamKeys(prefix).denoised(station)):
        segs.append(decode_segment(fields).segment)
    segs.sort(key=lambda g: g.start_sample)
    if not segs:
        return {"station": station, "segments": 0, "ok": False}
    holes = sum(1 for a, b in zip(segs, segs[1:]) if b.start_sample > a.end_sample)
    hole_samples = sum(max(0, b.start_sample - a.end_sample) for a, b in zip(segs, segs[1:]))
    overlap = sum(max(0, a.end_sample - b.start_sample) for a, b in zip(segs, segs[1:]))
    missing_start = max(0, segs[0].start_sample - first_sample)
    missing_end = max(0, end_sample - segs[-1].end_sample)
    return {
        "station": station, "segments": len(segs), "holes": holes, "hole_samples": hole_samples,
        "overlap_samples": overlap, "missing_start_samples": missing_start, "missing_end_samples": missing_end,
        "published_samples": sum(g.n_samples for g in segs),
        "holes_at_s": [round((a.end_sample - first_sample) / 100.0, 2) for a, b in zip(segs, segs[1:])
                       if b.start_sample > a.end_sample][:20],
        "ok": holes == 0 and overlap == 0 and missing_start == 0 and missing_end == 0,
    }


def stop_all(service: Any, thread: Any, replay: subprocess.Popen[bytes] | None, redis: Any) -> None:
    """Tear a run down whatever state it is in: the service (cancelled if still running), the replay
    server subprocess, Redis."""
    if service is not None and thread is not None and thread.is_alive():
        service.request_stop()
        service.request_stop()
        thread.join(30)
    if replay is not None:
        replay.terminate()
        try:
            replay.wait(10)
        except subprocess.TimeoutExpired:
            replay.kill()
    redis.stop()


def run_cx(args: argparse.Namespace) -> Soak:
    """Real data through ringserver (see the module docstring)."""
    import redis as redis_lib

    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from ringserver import RingServer, ScanFeeder, mseed_records, ringserver_binary  # the tests' helper

    from streamer.commands.demo import write_resume_state
    from streamer.redis_server import RedisServer
    from streamer.service import Service, run_in_thread
    from streamer.stitch import sample_index

    soak = Soak(args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    files = cx_files(args)
    records = mseed_records(files)
    first_end = min(r[0] for r in records)
    stride_ns = round(args.stride_s * 1e9)
    begin_ns = (first_end // stride_ns + 1) * stride_ns  # a grid point after the first record
    records = [r for r in records if r[0] > begin_ns]
    stations = sorted({".".join(name.split(".")[:3]) for _, name, _ in records})
    last_end_ns = max(r[0] for r in records)
    data_s = (last_end_ns - begin_ns) / 1e9
    print(f"{len(records)} records of {', '.join(stations)}, {data_s / 60:.1f} min of data at {args.speed:g}x", flush=True)
    with tempfile.TemporaryDirectory(prefix="coldstream-soak-cx-") as tmp:
        workdir = Path(tmp)
        ring = RingServer(ringserver_binary(), workdir / "ring")
        ring.start()
        redis = RedisServer(workdir / "redis")
        redis.start()
        metrics = Metrics()
        service: Any = None
        thread = None
        try:
            keys = sorted({"_".join(s.split(".")[:2]) for s in stations})
            settings = soak_settings(args, workdir, redis.url, ring.port, None, streams=keys, maxlen=100_000)
            write_resume_state(workdir / "seedlink.state", ring.address, keys, begin_ns)
            service = Service(settings, metrics, environ={})
            service.load_models()
            thread = run_in_thread(service)
            if not service.ready.wait(120):
                raise RuntimeError("service not ready in 120 s")
            feeder = ScanFeeder(records, ring.scan_dir, speed=args.speed).start()
            t0 = time.monotonic()
            prev: dict[str, Any] = {}
            cap = t0 + args.minutes * 60
            while time.monotonic() < cap and not feeder.done:
                time.sleep(min(args.sample_s, max(cap - time.monotonic(), 0.0)))
                s = take_sample(metrics, t0, prev)
                soak.samples.append(s)
                print_sample(s)
            time.sleep(3 * args.stride_s)  # the last windows decided by the poll and published
            wall = time.monotonic() - t0
            service.request_stop()
            thread.join(120)
            soak.summary = summarise(soak, metrics, service.exit_code, wall)
            soak.summary["records_fed"] = feeder.written
            soak.summary["windows_skipped"] = by_label(metrics, "coldstream_windows_skipped_total", "reason")
            soak.summary["records_rejected"] = total(metrics, "coldstream_records_rejected_total")
            soak.summary["gaps"] = total(metrics, "coldstream_gaps_total")
            soak.summary["stitch_late_windows"] = total(metrics, "coldstream_stitch_late_windows_total")
            soak.summary["segments_trimmed_samples"] = total(metrics, "coldstream_segments_trimmed_samples_total")
            soak.summary["data_minutes"] = round(data_s / 60, 1)
            client = redis_lib.Redis.from_url(redis.url)
            rate = 100.0
            first = sample_index(begin_ns, rate)
            # the drain publishes every window the data cover: up to the last stride-grid window end
            end = sample_index(((last_end_ns - round(30e9)) // stride_ns) * stride_ns + round(30e9), rate)
            checks = [exactly_once(client, "soak", st, first, end) for st in stations]
            soak.summary["exactly_once"] = checks
            soak.summary["every_sample_once"] = all(c["ok"] for c in checks)
            soak.summary["picks_in_redis"] = client.xlen("soak:picks")
        finally:
            if service is not None and thread is not None and thread.is_alive():
                service.request_stop()
                service.request_stop()
                thread.join(30)
            redis.stop()
            ring.stop()
    return soak


def run(args: argparse.Namespace) -> Soak:
    if args.source == "cx":
        return run_cx(args)
    from streamer.redis_server import RedisServer
    from streamer.service import Service, run_in_thread

    soak = Soak(args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    with tempfile.TemporaryDirectory(prefix="coldstream-soak-") as tmp:
        workdir = Path(tmp)
        period_s = args.period_s
        start_s = int(time.time())
        t_gen = time.monotonic()
        (workdir / "net").mkdir()
        paths = write_network(workdir / "net", args.stations, period_s, start_s)
        print(f"wrote {args.stations} stations x {period_s} s in {time.monotonic() - t_gen:.0f} s", flush=True)
        weights = args.weights
        if weights is None and not shipped_weights_present():
            weights = random_init_weights(workdir)
            print("no shipped denoiser weights: random-init network of the production architecture", flush=True)
        redis = RedisServer(workdir / "redis")
        redis.start()
        replay, port = start_replay(paths, workdir)
        metrics = Metrics()
        service: Any = None
        thread = None
        try:
            settings = soak_settings(args, workdir, redis.url, port, weights)
            service = Service(settings, metrics, environ={})
            service.load_models()
            thread = run_in_thread(service)
            if not service.ready.wait(120):
                raise RuntimeError("service not ready in 120 s")
            t0 = time.monotonic()
            prev: dict[str, Any] = {}
            end = t0 + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(args.sample_s, max(end - time.monotonic(), 0.0)))
                s = take_sample(metrics, t0, prev)
                soak.samples.append(s)
                print_sample(s)
            wall = time.monotonic() - t0
            service.request_stop()
            thread.join(120)
            soak.summary = summarise(soak, metrics, service.exit_code, wall)
        finally:
            stop_all(service, thread, replay, redis)
    return soak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Soak test: simulated stations through the real pipeline.")
    p.add_argument("--stations", type=int, default=200)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--period-s", type=int, default=600, help="length of the looped synthetic recording")
    p.add_argument("--stride-s", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--weights", type=Path, default=None, help="denoiser weights (default: shipped, else random init)")
    p.add_argument("--seisbench-cache", type=Path, default=None, help="PhaseNet weights; without it the picker is off")
    p.add_argument("--json", type=Path, default=None, help="write samples and summary here")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--source", choices=["synthetic", "cx"], default="synthetic",
                   help="synthetic: --stations simulated stations from the replay server; cx: the real CX "
                        "recordings through ringserver")
    p.add_argument("--cx-dir", type=Path, default=None, help="cx-continuous-1h folder (default: in the shared folder)")
    p.add_argument("--cx-day", default="20140301", help="which day's files (20140301 or 20140401)")
    p.add_argument("--speed", type=float, default=1.0, help="--source cx: feed speed, x real time")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soak = run(args)
    print("\nsummary:", flush=True)
    for k, v in soak.summary.items():
        print(f"  {k:40s} {v}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": soak.args, "samples": [asdict(s) for s in soak.samples],
                                         "summary": soak.summary}, indent=2))
    ok = soak.summary.get("exit_code") == 0 and soak.summary.get("every_sample_once", True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
