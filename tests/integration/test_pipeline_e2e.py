"""Replay server -> Service (SeedLink, ingest, worker, stitch, PhaseNet, publisher) -> real Redis -> consumer."""

from __future__ import annotations

import urllib.request

import pytest

from pipeline_helpers import (
    wait_for,
    assert_continuous,
    make_settings,
    read_picks,
    read_segments,
    shipped_weights_present,
    weights_path,
)
from streamer.commands.demo import write_resume_state
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.replay import ReplayServerThread
from streamer.service import Service, run_in_thread
from streamer.seedlink_state import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

P_TOLERANCE_S = 0.5






def test_replay_to_redis_picks_and_continuous_stream(tmp_path, redis_client, redis_url, redis_key_prefix, metrics, picker_cache_or_none):
    catalogue = load_catalogue()
    weights = weights_path(tmp_path)
    with ReplayServerThread([recording_path()], speed=0) as replay:
        settings = make_settings(tmp_path, redis_url, redis_key_prefix, replay.port, weights, picker_cache_or_none,
                                 metrics={"enabled": True, "port": 0})
        keys = [s.replace(".", "_").rstrip("_") for s in catalogue["stations"]]
        write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{replay.port}", keys, catalogue["start_ns"])
        service = Service(settings, metrics)
        service.load_models()
        thread = run_in_thread(service)
        assert service.ready.wait(60), "service not ready"
        n_windows = 6 * 22  # 6 stations, 240 s, 30 s windows every 10 s
        wait_for(lambda: service.worker is not None and service.worker.windows_done >= n_windows, 90, "all windows")
        wait_for(lambda: metrics.registry.get_sample_value("coldstream_end_to_end_latency_seconds_count"), 30, "latency")
        port = service.metrics_server.server_port
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        service.request_stop()
        thread.join(60)
    for name in ("coldstream_windows_processed_total 132.0", "coldstream_ready 1.0", "coldstream_sampler_steps_bucket",
                 "coldstream_end_to_end_latency_seconds_bucket", "coldstream_model_load_seconds"):
        assert name in scrape
    assert service.exit_code == 0
    assert service.worker is not None and service.worker.windows_done == n_windows
    assert metrics.registry.get_sample_value("coldstream_windows_shed_total", {"reason": "age"}) is None

    # every station: one continuous, complete denoised stream over the replayed span
    start = catalogue["start_ns"] // 10_000_000
    end = start + int(catalogue["duration_s"] * 100)
    for station in catalogue["stations"]:
        assert_continuous(read_segments(redis_client, redis_key_prefix, station), start, end)

    # SeedLink state written, acknowledged up to the start of the next window (220 s): the packets
    # ending there, within one record (about 3 s) of it
    states = StateStore(settings.seedlink.state_file).load()
    (server_states,) = states.values()
    assert set(server_states) == {s.replace(".", "_").rstrip("_") for s in catalogue["stations"]}
    assert all(216 * 10**9 <= st.end_ns - catalogue["start_ns"] <= 220 * 10**9 for st in server_states.values())

    if picker_cache_or_none is None:
        pytest.skip("picks not checked: no SeisBench weights (COLDSTREAM_SHARED_DIR unset)")
    if not shipped_weights_present():
        pytest.skip("picks not checked: the shipped denoiser weights are not in models/weights yet")
    picks = read_picks(redis_client, redis_key_prefix)
    assert len({p.pick_id for p in picks}) == len(picks), "duplicate pick ids"
    expected = [
        p for p in catalogue["picks"] if p["phase"] == "P" and p["snr"] >= 10
    ]
    for want in expected:
        got = [
            p for p in picks
            if p.station_id == want["station_id"] and p.phase == "P" and p.source == "denoised"
            and abs(p.time_ns - want["time_ns"]) <= P_TOLERANCE_S * 1e9
        ]
        assert got, f"no P pick within {P_TOLERANCE_S} s of {want}"
        assert got[0].steps >= 1
