"""Scale-out: windows on a Redis stream, two worker processes, one killed mid-stream, exactly-once output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from pipeline_helpers import assert_continuous, read_segments, weights_path, wait_for
from streamer.config import load_settings
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.ingest import Ingestor
from streamer.replay import load_records
from streamer.ack import AckBook, AckMarker
from streamer.output import OutputStage
from streamer.publish import RedisPublisher
from streamer.scaleout.codec import decode_result, decode_window
from streamer.scaleout.collector import ResultCollector
from streamer.scaleout.queue import RESULTS_STREAM, WINDOWS_STREAM, result_queue, window_queue
from streamer.schema import StreamKeys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SPAN_S = 100  # first 100 s of the demo recording: 8 windows per station


def demo_windows(span_s: float) -> list:
    """Windows of the demo recording's first ``span_s`` seconds, through the real ingest path, with the
    records in the order a SeedLink server releases them (by end time)."""
    cat = load_catalogue()
    ing = Ingestor()
    out = []
    end_ns = cat["start_ns"] + int(span_s * 1e9)
    for rec in sorted(load_records([recording_path()]), key=lambda r: (r.end_ns, r.station_key)):
        out.extend(w for w in ing.add_payload(rec.payload, time.time_ns()) if w.end_ns <= end_ns)
    return out


def write_config(path: Path, redis_url: str, prefix: str, weights: Path | None) -> Path:
    lines = [
        "[redis]", f'url = "{redis_url}"', f'stream_prefix = "{prefix}"',
        "[metrics]", "enabled = false",
        "[worker]", "batch_size = 2", "max_steps = 1", "reclaim_idle_s = 2.0", 'device = "cpu"', "torch_threads = 1",
        "[picker]", "enabled = false",
    ]
    if weights is not None:
        lines += ["[model]", f'weights = "{weights}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def start_worker(cfg: Path, name: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("COLDSTREAM_SHARED_DIR", None)  # config.load_settings treats it as a setting (unknown key)
    return subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "worker", "--config", str(cfg), "--consumer", name],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )




def consumers(client, key: str, group: str) -> dict[str, int]:
    try:
        return {c["name"].decode(): int(c["pending"]) for c in client.xinfo_consumers(key, group)}
    except redis.ResponseError:
        return {}


def test_two_workers_one_killed_every_window_exactly_once(tmp_path, redis_url, redis_client, redis_key_prefix, metrics):
    prefix = redis_key_prefix
    keys = StreamKeys(prefix)
    cfg = write_config(tmp_path / "worker.toml", redis_url, prefix, weights_path(tmp_path))
    queue = window_queue(redis_client, prefix, "workers", "ingest")
    queue.ensure_group()
    windows = demo_windows(SPAN_S)
    assert len(windows) == 6 * 8
    workers = {name: start_worker(cfg, name) for name in ("w1", "w2")}
    try:
        def both_reading() -> bool:
            for name, p in workers.items():
                if p.poll() is not None:
                    raise AssertionError(f"worker {name} exited: {p.stderr.read().decode()[-3000:]}")
            return set(consumers(redis_client, keys.windows(WINDOWS_STREAM), "workers")) >= {"w1", "w2"}

        wait_for(both_reading, 90, "both workers reading")
        for w in windows:
            assert queue.push(w) is not None
        assert queue.push(windows[0]) is None  # a re-pushed window is refused
        # kill w1 while it holds windows it has not acknowledged
        wait_for(lambda: consumers(redis_client, keys.windows(WINDOWS_STREAM), "workers").get("w1", 0) > 0,
                 30, "w1 to hold pending windows")
        held = [r["message_id"] for r in redis_client.xpending_range(keys.windows(WINDOWS_STREAM), "workers", "-", "+", 100, "w1")]
        held_fields = {i: f for i, f in redis_client.xrange(keys.windows(WINDOWS_STREAM))}
        workers["w1"].send_signal(signal.SIGKILL)
        workers["w1"].wait(10)
        assert held
        wait_for(lambda: redis_client.xlen(keys.windows(RESULTS_STREAM)) >= len(windows), 90, "all results")
        wait_for(lambda: queue.pending_count() == 0, 30, "no pending windows")
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.terminate()
                p.wait(20)
    assert workers["w2"].returncode == 0, workers["w2"].stderr.read().decode()[-2000:] if workers["w2"].stderr else ""

    results = [decode_result(f) for _i, f in redis_client.xrange(keys.windows(RESULTS_STREAM))]
    ids = [r.windows[0].window_id for r in results]
    assert len(ids) == len(set(ids)) == len(windows), "a window was lost or processed twice in the output"
    assert set(ids) == {w.window_id for w in windows}
    by_worker = {r.windows[0].window_id: r.extra.get("worker") for r in results}
    assert "w2" in set(by_worker.values())
    # w1 died holding unacknowledged windows; nothing is pending any more, so w2 claimed them
    # (XAUTOCLAIM) and acknowledged them after their results were pushed (or found already pushed)
    held_ids = {decode_window(held_fields[i]).window_id for i in held if i in held_fields}
    assert held_ids and held_ids <= set(ids)
    # finished work is deleted from the work stream: nothing unfinished is left in it
    assert redis_client.xlen(keys.windows(WINDOWS_STREAM)) == 0

    # the collector side of `coldstream ingest`: results -> stitchers -> Redis, each sample exactly once
    settings = load_settings(overrides={"redis": {"url": redis_url, "stream_prefix": prefix}}, environ={})
    acks = AckBook()
    acks.add(windows)
    results_q = result_queue(redis_client, prefix, "collector", "ingest")

    def on_acked(items):
        for item in items:
            if item.kind == "marker" and isinstance(item.token, AckMarker):
                results_q.ack(item.token.result_ids)
                acks.apply(item.token)

    publisher = RedisPublisher(settings.redis, metrics, on_acked)
    output = OutputStage(settings, metrics, publisher.publish, window_samples=3000, sampling_rate_hz=100.0,
                         max_out_of_order=settings.worker.scaleout_max_out_of_order)
    collector = ResultCollector(output, results_q, metrics)
    collector.expect(windows)
    while collector.run_once(block_ms=100):
        pass
    output.flush_all()
    assert publisher.flush(10)
    assert collector.collected == len(windows) and collector.given_up == 0 and collector.holding == 0
    assert results_q.pending_count() == 0 and redis_client.xlen(keys.windows(RESULTS_STREAM)) == 0
    cat = load_catalogue()
    start = cat["start_ns"] // 10_000_000
    for station in cat["stations"]:
        segs = read_segments(redis_client, prefix, station)
        assert_continuous(segs, start, start + SPAN_S * 100)
        assert np.abs(np.concatenate([s.data for s in segs], axis=1)).max() > 0
    publisher.close()


def test_ingest_role_service_with_an_in_process_worker(tmp_path, redis_url, redis_client, redis_key_prefix, metrics):
    """`coldstream ingest` wiring: replay -> Service(role="ingest") -> windows stream -> worker ->
    results stream -> collector -> stitched outputs, result entries acknowledged, SeedLink state saved."""
    import threading

    from pipeline_helpers import make_settings
    from streamer.commands.demo import write_resume_state
    from streamer.metrics import Metrics
    from streamer.replay import ReplayServerThread
    from streamer.loaders import load_denoiser
    from streamer.scaleout.sink import RedisSink
    from streamer.scaleout.worker import ScaleOutWorker
    from streamer.service import Service, run_in_thread
    from streamer.seedlink_state import StateStore

    cat = load_catalogue()
    with ReplayServerThread([recording_path()], speed=0) as replay:
        settings = make_settings(tmp_path, redis_url, redis_key_prefix, replay.port, weights_path(tmp_path), None)
        keys = sorted({s.replace(".", "_").rstrip("_") for s in cat["stations"]})
        write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{replay.port}", keys, cat["start_ns"])
        service = Service(settings, metrics, role="ingest", environ={})
        thread = run_in_thread(service)
        assert service.ready.wait(30)
        worker = ScaleOutWorker(settings, Metrics(), load_denoiser(settings), None, redis_client, "w-local")
        stop = threading.Event()
        wt = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        wt.start()
        n_windows = 6 * 22
        sink = service.sink
        assert isinstance(sink, RedisSink)
        wait_for(lambda: sink.collector is not None and sink.collector.collected >= n_windows, 90, "results")
        wait_for(lambda: sink.result_queue is not None and sink.result_queue.pending_count() == 0, 30,
                 "results acknowledged")
        stop.set()
        wt.join(30)
        service.request_stop()
        thread.join(60)
    assert service.exit_code == 0
    assert sink.windows_pushed == n_windows and worker.processed == n_windows
    start = cat["start_ns"] // 10_000_000
    for station in cat["stations"]:
        segs = read_segments(redis_client, redis_key_prefix, station)
        # the ingest role holds each station's last N - S samples until they are replayed or flushed
        assert_continuous(segs, start, start + 22_000)
    (acked,) = StateStore(settings.seedlink.state_file).load().values()
    assert set(acked) == set(keys) and all(st.seq != 0xFFFFFF for st in acked.values())
