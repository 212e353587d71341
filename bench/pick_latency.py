"""Pick latency of the early-warning fast path and of the final path, through the real service.

    .venv/bin/python bench/pick_latency.py --stations 50 100 200 400 --seisbench-cache <cache> --json out.json
    .venv/bin/python bench/pick_latency.py --stations 200 --record-s 1 --seisbench-cache <cache>

For each station count: a network of that many three-component 100 Hz stations, each a copy of one of
the six demo stations (``streamer/demo_data``: the rjob-2009 event, P at 50-54 s, SNR 1.5-20, and
the noise before and after it; the first ``--span-s`` seconds), so every station has a catalogued P
onset and all of them shake within four seconds: the worst case for the fast path. A
``coldstream replay-server`` subprocess serves it over SeedLink in real time (``--record-s`` re-packs
into shorter records); this process runs the real :class:`streamer.service.Service` (SeedLink, ingest
with the STA/LTA trigger, worker with the fast and the final path, output stage, publisher) against a
private ``redis-server`` subprocess, with the demo's inventory copied to every station (coordinates
and sensitivity, so the amplitudes are computed as in production).

Reported per station count, from what a consumer reads in Redis:

- provisional and final P pick latency: the report's ``published_ns`` minus the arrival of the onset
  sample at the service (``onset_arrival_ns``, stamped when the record holding it was received);
  p50, p95, p99 (final latency from the final reports linked to a provisional one, which carry the
  onset's arrival);
- the share of catalogued P onsets picked provisionally (a first provisional report within 0.5 s),
  confirmed (the same ``pick_id`` reached ``final``), retracted, missed; provisional reports not
  near a catalogued P (S picks and noise, most of them retracted later);
- provisional time error against the final pick (median and p95 of the absolute difference);
- fast windows run and shed (by reason), final-path windows shed and the segments' end-to-end
  latency p95 (the final path keeps its bound when this stays well under the stride);
- CPU seconds per station per second of data, of the service process (replay server and Redis run
  in their own processes).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NS = 1_000_000_000
MATCH_S = 0.5


def write_network(path: Path, stations: int, span_s: float) -> list[dict[str, Any]]:
    """The network's miniSEED file; returns the catalogued P onsets ``[{station_id, time_ns, snr}]``."""
    import obspy

    from streamer.demo_data.build import load_catalogue, recording_path

    cat = load_catalogue()
    src = obspy.read(str(recording_path()))
    t0 = obspy.UTCDateTime(ns=cat["start_ns"])
    src.trim(t0, t0 + span_s)
    demo = cat["stations"]
    out = obspy.Stream()
    onsets = []
    for i in range(stations):
        sid = demo[i % len(demo)]
        sta = sid.split(".")[1]
        code = f"B{i:04d}"
        for tr in src.select(station=sta):
            c = tr.copy()
            c.stats.station = code
            out.append(c)
        for p in cat["picks"]:
            if p["station_id"] == sid and p["phase"] == "P" and p["time_ns"] < cat["start_ns"] + span_s * NS - 10 * NS:
                onsets.append({"station_id": f"XX.{code}.", "time_ns": p["time_ns"], "snr": p["snr"]})
    out.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return onsets


def write_inventory(path: Path, stations: int) -> None:
    from streamer.demo_data.build import load_catalogue, write_stationxml

    cat = dict(load_catalogue())
    cat["stations"] = [f"XX.B{i:04d}." for i in range(stations)]
    write_stationxml(path, cat)


def start_replay(path: Path, workdir: Path, record_s: float | None) -> tuple[subprocess.Popen[bytes], int]:
    sys.path.insert(0, str(REPO / "bench"))
    from soak import start_replay as start

    return start([path], workdir, extra=("--record-s", str(record_s)) if record_s else (), timeout_s=180.0)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summarise(entries: list[tuple[Any, int]], onsets: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency, shares and time errors from the pick reports ``[(Pick, published_ns)]``."""
    by_id: dict[str, list[tuple[Any, int]]] = {}
    for p, t in entries:
        by_id.setdefault(p.pick_id, []).append((p, t))
    prov_lat, final_lat, errors = [], [], []
    picked = confirmed = retracted = 0
    matched_ids = set()
    for o in onsets:
        firsts = [(p, t) for p, t in entries if p.station_id == o["station_id"] and p.phase == "P"
                  and p.status == "provisional" and p.update == 0 and abs(p.time_ns - o["time_ns"]) <= MATCH_S * NS]
        if not firsts:
            continue
        p, t = min(firsts, key=lambda e: abs(e[0].time_ns - o["time_ns"]))
        matched_ids.add(p.pick_id)
        picked += 1
        if p.details is not None and p.details.onset_arrival_ns:
            prov_lat.append((t - p.details.onset_arrival_ns) / NS)
        story = by_id[p.pick_id]
        final = [(q, tq) for q, tq in story if q.status == "final"]
        if final:
            confirmed += 1
            q, tq = final[-1]
            errors.append(abs(q.time_ns - p.time_ns) / NS)
            if p.details is not None and p.details.onset_arrival_ns:
                final_lat.append((tq - p.details.onset_arrival_ns) / NS)
        elif any(q.status == "retracted" for q, _ in story):
            retracted += 1
    other_prov = [p for p, _ in entries if p.status == "provisional" and p.update == 0 and p.pick_id not in matched_ids]
    other_retracted = sum(1 for p in other_prov if any(q.status == "retracted" for q, _ in by_id[p.pick_id]))
    n = len(onsets)
    return {
        "catalogued_p": n,
        "provisional_p_latency_s": {"p50": pct(prov_lat, 50), "p95": pct(prov_lat, 95), "p99": pct(prov_lat, 99)},
        "final_p_latency_s": {"p50": pct(final_lat, 50), "p95": pct(final_lat, 95), "p99": pct(final_lat, 99),
                              "n": len(final_lat)},
        "share_picked_provisionally": round(picked / n, 3) if n else None,
        "share_of_provisional_confirmed": round(confirmed / picked, 3) if picked else None,
        "share_of_provisional_retracted": round(retracted / picked, 3) if picked else None,
        "share_missed": round((n - picked) / n, 3) if n else None,
        "other_provisional_reports": len(other_prov),
        "other_provisional_retracted": other_retracted,
        "provisional_vs_final_abs_error_s": {"median": pct(errors, 50), "p95": pct(errors, 95)},
    }


def run_one(args: argparse.Namespace, stations: int) -> dict[str, Any]:
    import redis as redis_lib

    from streamer.commands.demo import write_resume_state
    from streamer.config import load_settings
    from streamer.demo_data.build import load_catalogue
    from streamer.metrics import Metrics
    from streamer.redis_server import RedisServer
    from streamer.schema import StreamKeys, decode_pick, published_ns_of
    from streamer.service import Service, run_in_thread

    cat = load_catalogue()
    with tempfile.TemporaryDirectory(prefix="coldstream-picklat-") as tmp:
        workdir = Path(tmp)
        net = workdir / "net.mseed"
        onsets = write_network(net, stations, args.span_s)
        write_inventory(workdir / "net.xml", stations)
        redis = RedisServer(workdir / "redis")
        redis.start()
        replay, port = start_replay(net, workdir, args.record_s)
        service = None
        thread = None
        try:
            overrides: dict[str, Any] = {
                "seedlink": {"servers": [{"host": "127.0.0.1", "port": port, "streams": ["XX_*"]}],
                             "state_file": str(workdir / "seedlink.state")},
                "redis": {"url": redis.url, "stream_prefix": "lat", "maxlen": 200_000},
                "metrics": {"enabled": False},
                "worker": {"device": args.device, "batch_size": args.batch_size},
                "picker": {"enabled": True, "seisbench_cache": str(args.seisbench_cache)},
                "inventory": {"stationxml": str(workdir / "net.xml")},
            }
            if args.torch_threads:
                overrides["worker"]["torch_threads"] = args.torch_threads
            settings = load_settings(overrides=overrides, environ={})
            keys = [f"XX_B{i:04d}" for i in range(stations)]
            write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{port}", keys, cat["start_ns"])
            metrics = Metrics()
            service = Service(settings, metrics, environ={})
            service.load_models()
            thread = run_in_thread(service)
            if not service.ready.wait(120):
                raise RuntimeError("service not ready")
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.monotonic()
            time.sleep(args.span_s + args.settle_s)
            wall = time.monotonic() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            sys.path.insert(0, str(REPO / "bench"))
            from soak import histogram_counts, quantile

            e2e = histogram_counts(metrics, "coldstream_end_to_end_latency_seconds")  # before the drain's flush
            service.request_stop()
            thread.join(120)
            client = redis_lib.Redis.from_url(redis.url)
            raw_entries: Any = client.xrange(StreamKeys("lat").picks) or []
            entries = [(decode_pick(f), published_ns_of(f)) for _i, f in raw_entries]
            out = summarise(entries, onsets)
            reg = metrics.registry

            def val(name: str, labels: dict[str, str] | None = None) -> float:
                return float(reg.get_sample_value(name, labels) or 0.0)

            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            out.update({
                "stations": stations,
                "record_s": args.record_s,
                "fast_windows": val("coldstream_eew_windows_total"),
                "fast_windows_shed": {r: val("coldstream_eew_windows_shed_total", {"reason": r})
                                      for r in ("age", "superseded", "queue_full", "error")},
                "final_windows_processed": val("coldstream_windows_processed_total"),
                "final_windows_shed": {r: val("coldstream_windows_shed_total", {"reason": r})
                                       for r in ("age", "overload", "queue_full", "error")},
                "segments_e2e_latency_p95_s": round(quantile(e2e, 0.95) or float("nan"), 2),
                "cpu_s_per_station_per_data_s": round(cpu / stations / wall, 4),
                "cpu_cores_used": round(cpu / wall, 2),
            })
            return out
        finally:
            sys.path.insert(0, str(REPO / "bench"))
            from soak import stop_all

            stop_all(service, thread, replay, redis)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Provisional and final pick latency through the real service.")
    p.add_argument("--stations", type=int, nargs="+", default=[50, 100, 200, 400])
    p.add_argument("--span-s", type=float, default=90.0, help="seconds of the demo recording served (event at 50 s)")
    p.add_argument("--settle-s", type=float, default=45.0, help="seconds after the span for the final path")
    p.add_argument("--record-s", type=float, default=None, help="re-pack into records of at most this many seconds")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--seisbench-cache", type=Path, required=True, help="SeisBench cache with PhaseNet weights")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = []
    for n in args.stations:
        r = run_one(args, n)
        results.append(r)
        print(json.dumps(r), flush=True)
    cols = ("stations", "prov p50/p95/p99 s", "final p50/p95 s", "picked", "confirmed", "retracted", "missed",
            "err med/p95 s", "fast shed", "final shed", "seg p95 s", "CPU s/sta/s")
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        pl, fl, er = r["provisional_p_latency_s"], r["final_p_latency_s"], r["provisional_vs_final_abs_error_s"]
        print(f"| {r['stations']} | {pl['p50']}/{pl['p95']}/{pl['p99']} | {fl['p50']}/{fl['p95']} | "
              f"{r['share_picked_provisionally']} | {r['share_of_provisional_confirmed']} | "
              f"{r['share_of_provisional_retracted']} | {r['share_missed']} | {er['median']}/{er['p95']} | "
              f"{sum(r['fast_windows_shed'].values()):.0f} | {sum(r['final_windows_shed'].values()):.0f} | "
              f"{r['segments_e2e_latency_p95_s']} | {r['cpu_s_per_station_per_data_s']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
