"""End-to-end fuzzing of the running service: hostile input beside healthy stations.

The healthy stations (the bundled six-station recording) arrive over real SeedLink from the replay
server; hostile payloads go into the same running :class:`Service` through its packet entry point
on the event loop: random bytes, truncated and corrupted records, absurd sampling rates, far-future
and far-past timestamps (also on a healthy station's id), NaN/Inf blocks, a flood of one station
and a flood of distinct station codes. The healthy stations' denoised streams in Redis must still be
continuous and complete, every kind of fault must be counted in the metrics, station labels stay
bounded, and the service drains and exits 0.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipeline_helpers import assert_continuous, make_settings, read_segments, weights_path, wait_for
from streamer.commands.demo import write_resume_state
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.metrics import Metrics
from streamer.records import PacketRef
from streamer.replay import ReplayServerThread
from streamer.service import Service, run_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORD = 512
MAX_LABELS = 30


def records(network: str, station: str, channel: str, start_s: float, data: np.ndarray, rate_hz: float,
            encoding: str = "STEIM2") -> list[bytes]:
    """miniSEED 2 records (512 bytes each) of one channel, written with ObsPy."""
    from obspy import Trace, UTCDateTime

    tr = Trace(data=data, header={"network": network, "station": station, "location": "", "channel": channel,
                                  "sampling_rate": rate_hz, "starttime": UTCDateTime(start_s)})
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", encoding=encoding, reclen=RECORD)
    raw = buf.getvalue()
    return [raw[i:i + RECORD] for i in range(0, len(raw), RECORD)]


def hostile_payloads(rng: np.random.Generator, healthy_net: str, healthy_sta: str, data_start_s: float) -> dict[str, list[bytes]]:
    noise = lambda n: rng.normal(0, 500, n).astype(np.int32)  # noqa: E731
    valid = records("ZZ", "GOOD", "HHZ", data_start_s, noise(3000), 100.0)
    out: dict[str, list[bytes]] = {}
    out["random"] = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(0, 2000, 40)]
    out["random"] += [b"", b"\x00" * RECORD, b"\xff" * RECORD, b"SL000001" + b"\x00" * 504]
    out["truncated"] = [r[: int(k)] for r in valid[:10] for k in rng.integers(1, RECORD - 1, 3)]
    corrupted = []
    for r in valid[:20]:
        b = bytearray(r)
        for pos in rng.integers(0, 64, 6):  # the fixed header and blockettes
            b[int(pos)] = int(rng.integers(0, 256))
        corrupted.append(bytes(b))
    out["corrupted"] = corrupted
    out["rate"] = records("ZZ", "FAST", "HHZ", data_start_s, noise(20000), 20000.0)[:5]
    out["rate"] += records("ZZ", "SLOW", "HHZ", data_start_s, noise(200), 0.5)
    # far future and far past, on a hostile station and on a healthy station's id
    out["future"] = records("ZZ", "FUT", "HHZ", 4102444800.0, noise(500), 100.0)  # 2100-01-01
    out["future"] += records(healthy_net, healthy_sta, "HHZ", 4102444800.0, noise(500), 100.0)
    out["past"] = records(healthy_net, healthy_sta, "HHZ", 157766400.0, noise(500), 100.0)  # 1975-01-01
    nan = rng.normal(0, 500, 3000).astype(np.float32)
    nan[::7] = np.nan
    nan[::11] = np.inf
    nan[::13] = -np.inf
    out["nonfinite"] = [r for ch in ("HHE", "HHN", "HHZ") for r in records("ZZ", "NAN", ch, data_start_s, nan, 100.0, "FLOAT32")]
    flood = rng.normal(0, 500, 100 * 1200).astype(np.int32)
    out["flood"] = records("ZZ", "FLOOD", "HHZ", data_start_s, flood, 100.0)
    out["labels"] = [records("ZZ", f"X{i:03d}", "HHZ", data_start_s, noise(300), 100.0)[0] for i in range(2 * MAX_LABELS)]
    return out




def value(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    s = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                s += sample.value
    return s


def test_hostile_input_does_not_disturb_healthy_stations(tmp_path: Path, redis_client, redis_url, redis_key_prefix) -> None:
    catalogue = load_catalogue()
    stations = list(catalogue["stations"])
    healthy_net, healthy_sta = stations[0].split(".")[:2]
    data_start_s = catalogue["start_ns"] / 1e9
    rng = np.random.default_rng(20261125)
    payloads = hostile_payloads(rng, healthy_net, healthy_sta, data_start_s)
    metrics = Metrics(CollectorRegistry(), max_station_labels=MAX_LABELS)

    with ReplayServerThread([recording_path()], speed=0) as replay:
        settings = make_settings(tmp_path, redis_url, redis_key_prefix, replay.port, weights_path(tmp_path), None)
        keys = [s.replace(".", "_").rstrip("_") for s in stations]
        write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{replay.port}", keys, catalogue["start_ns"])
        service = Service(settings, metrics)
        service.load_models()
        thread = run_in_thread(service)
        assert service.ready.wait(60), "service not ready"
        loop = service._loop
        assert loop is not None

        # hostile data aimed at a healthy station only once that station has data of its own
        wait_for(lambda: value(metrics, "coldstream_records_received_total", station=stations[0]) > 0, 30, "healthy data")
        seq = 0
        for kind, items in payloads.items():
            for payload in items:
                seq += 1
                ref = PacketRef(server="fuzz:0", station_key=f"FUZZ_{kind}", sequence=seq)
                loop.call_soon_threadsafe(service.on_packet, payload, ref, time.time_ns())
        n_windows = len(stations) * 22  # 240 s per station: 22 windows of 30 s every 10 s
        done = lambda: all(  # noqa: E731
            value(metrics, "coldstream_windows_emitted_total", station=s) >= 22 for s in stations
        )
        wait_for(done, 90, "healthy windows")
        wait_for(lambda: service.worker is not None and service.worker.windows_done >= n_windows, 120, "denoising")
        assert thread.is_alive(), "the service died"
        service.request_stop()
        thread.join(90)
    assert service.exit_code == 0

    # healthy stations: continuous, complete denoised streams over the whole recording
    start = catalogue["start_ns"] // 10_000_000
    end = start + int(catalogue["duration_s"] * 100)
    for station in stations:
        assert value(metrics, "coldstream_windows_emitted_total", station=station) == 22, station
        assert_continuous(read_segments(redis_client, redis_key_prefix, station), start, end)
    assert value(metrics, "coldstream_windows_shed_total") == 0

    # every kind of fault was seen and counted
    assert value(metrics, "coldstream_decode_errors_total") >= len(payloads["random"]) // 2
    assert value(metrics, "coldstream_records_rejected_total", reason="rate") >= 1
    assert value(metrics, "coldstream_records_rejected_total", reason="future") >= 2
    assert value(metrics, "coldstream_records_rejected_total", reason="future", station=stations[0]) >= 1
    assert value(metrics, "coldstream_records_rejected_total", reason="expired", station=stations[0]) >= 1
    assert value(metrics, "coldstream_clock_jumps_total", station=stations[0]) == 0
    assert value(metrics, "coldstream_nonfinite_samples_total") > 0
    assert value(metrics, "coldstream_records_received_total", station="ZZ.FLOOD.") >= len(payloads["flood"]) - 1
    # station labels stay bounded: the flood of codes ends up as "other"
    labels = {s.labels.get("station") for f in metrics.registry.collect() for s in f.samples if "station" in s.labels}
    assert len(labels - {"other"}) <= MAX_LABELS
    assert "other" in labels
