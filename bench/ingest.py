"""Ingest benchmark: decode + buffer + window cost of a simulated network.

Simulates ``--stations`` three-component stations (HHE/HHN/HHZ, 100 Hz) streaming 512-byte
Steim2 miniSEED 2 records (band-limited noise, about 465 samples per record, i.e. ~4.7 s of data,
as real broadband data), interleaved in arrival order with 0.5-3 s of random latency and random
record phases. Every record goes through ``Ingestor.add_payload`` exactly as the service feeds
SeedLink payloads; ``poll`` runs every simulated second and ``update_gauges`` every 5 s.

CPU time is ``time.process_time`` around the ingest loop only (record generation excluded).
"% of one core" = CPU seconds / simulated seconds * 100: the share of one core a live network of
that size needs for ingest + buffering + windowing.

    .venv/bin/python bench/ingest.py                 # 1000 stations, 240 s, stride 10 s
    .venv/bin/python bench/ingest.py --stations 100 --duration-s 60 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from pymseed import DataEncoding, MS3Record
from scipy.signal import lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import BufferSettings, WindowSettings  # noqa: E402
from streamer.ingest import Ingestor  # noqa: E402
from streamer.metrics import Metrics  # noqa: E402
from streamer.mseed import decode_payload  # noqa: E402

NS = 1_000_000_000
T0_NS = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z


def make_records(n_stations: int, duration_s: float, rate_hz: float = 100.0, seed: int = 0) -> list[tuple[int, bytes]]:
    """``(arrival_ns, payload)`` of every record of the network, sorted by arrival."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * rate_hz)
    out: list[tuple[int, bytes]] = []
    msr = MS3Record()
    msr.samprate = rate_hz
    msr.reclen = 512
    msr.encoding = DataEncoding.STEIM2
    msr.formatversion = 2
    for i in range(n_stations):
        # stations start at different offsets so records end (and arrive) spread in time
        start_ns = T0_NS + int(rng.integers(0, int(5 * rate_hz))) * (NS // int(rate_hz))
        for comp in "ENZ":
            x = np.round(lfilter([1.0], [1.0, -0.9], rng.normal(size=n)) * 20.0).astype(np.int32)
            msr.sourceid = f"FDSN:XB_S{i:04d}_00_H_H_{comp}"
            msr.starttime = start_ns
            offset = 0
            for rec in msr.generate(x, "i"):
                parsed = MS3Record.parse(rec)
                count = parsed.samplecnt
                end_ns = start_ns + (offset + count) * NS // int(rate_hz)
                offset += count
                out.append((end_ns + int(rng.uniform(0.5, 3.0) * NS), rec))
    out.sort(key=lambda r: r[0])
    return out


def run_bench(n_stations: int, duration_s: float, stride_s: float, seed: int = 0) -> dict[str, float]:
    gen0 = time.perf_counter()
    records = make_records(n_stations, duration_s, seed=seed)
    gen_s = time.perf_counter() - gen0
    n_bytes = sum(len(r) for _, r in records)

    # decode alone
    c0 = time.process_time()
    for arrival, rec in records:
        decode_payload(rec, arrival)
    decode_cpu = time.process_time() - c0

    clock = [records[0][0]]
    ingestor = Ingestor(
        buffer_settings=BufferSettings(),
        window_settings=WindowSettings(stride_s=stride_s),
        metrics=Metrics(CollectorRegistry()),
        now_ns=lambda: clock[0],
    )
    windows = 0
    next_poll = records[0][0] + NS
    next_gauges = records[0][0] + 5 * NS
    c0 = time.process_time()
    w0 = time.perf_counter()
    for arrival, rec in records:
        clock[0] = arrival
        windows += len(ingestor.add_payload(rec, arrival))
        if arrival >= next_poll:
            windows += len(ingestor.poll(arrival))
            next_poll += NS
        if arrival >= next_gauges:
            ingestor.update_gauges(arrival)
            next_gauges += 5 * NS
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    simulated_s = (records[-1][0] - records[0][0]) / NS
    return {
        "stations": n_stations,
        "channels": 3 * n_stations,
        "simulated_s": simulated_s,
        "records": len(records),
        "bytes": n_bytes,
        "samples_per_record": 3 * n_stations * duration_s * 100.0 / len(records),
        "windows": windows,
        "cpu_s": cpu,
        "wall_s": wall,
        "records_per_cpu_s": len(records) / cpu,
        "windows_per_cpu_s": windows / cpu,
        "decode_only_records_per_cpu_s": len(records) / decode_cpu,
        "core_percent": 100.0 * cpu / simulated_s,
        "us_per_record": 1e6 * cpu / len(records),
        "generation_s": gen_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=240.0, help="simulated data length")
    parser.add_argument("--stride-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    res = run_bench(args.stations, args.duration_s, args.stride_s, args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"network: {res['stations']} stations x 3 channels, 100 Hz, {res['simulated_s']:.0f} s simulated")
    print(f"records: {res['records']} x 512 B Steim2, {res['samples_per_record']:.0f} samples/record")
    print(f"windows emitted: {res['windows']} (stride {args.stride_s:g} s)")
    print(f"CPU: {res['cpu_s']:.2f} s ({res['us_per_record']:.1f} us/record)")
    print(f"decoded records per CPU-second (decode only): {res['decode_only_records_per_cpu_s']:,.0f}")
    print(f"records per CPU-second (decode+buffer+window): {res['records_per_cpu_s']:,.0f}")
    print(f"windows per CPU-second: {res['windows_per_cpu_s']:,.0f}")
    print(f"share of one core for the live network: {res['core_percent']:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
