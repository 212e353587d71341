"""The scale-out work queue on a real Redis: exact encoding, producer de-duplication, consumer groups, XAUTOCLAIM
take-over of a crashed consumer's windows, dead-lettering."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import redis

from streamer.scaleout.codec import decode_window, encode_window
from streamer.scaleout.queue import WorkQueue, window_queue
from streamer.records import Window

pytestmark = pytest.mark.integration

START_NS = 1_764_000_000_000_000_000
STATIONS = ["NC.AAA.00", "NC.BBB.00", "BK.CCC."]


def _window(station: str, k: int, n: int = 3000) -> Window:
    rng = np.random.default_rng(hash((station, k)) % 2**32)
    data = (rng.standard_normal((3, n)) * 1e4).astype(np.float32)
    mask = rng.uniform(size=(3, n)) > 0.01
    return Window(
        station, START_NS + k * 10 * 10**9, 100.0, data, mask, newest_arrival_ns=START_NS + k * 10**10 + 30 * 10**9,
        channels=("HHE", "", "HHZ"), meta={"gap_fraction": 0.01, "k": k},
    )


def _queue(client: redis.Redis, prefix: str, consumer: str, **kw: object) -> WorkQueue[Window, Window]:
    return window_queue(client, prefix, "workers", consumer, **kw)  # type: ignore[arg-type]


def test_encode_decode_round_trip_is_exact() -> None:
    w = _window("NC.AAA.00", 3)
    w.data[0, 5] = np.float32(1.17549435e-38)  # a denormal-edge value survives bit for bit
    back = decode_window(encode_window(w))
    assert back.data.dtype == np.float32 and back.data.tobytes() == w.data.tobytes()
    np.testing.assert_array_equal(back.mask, w.mask)
    assert (back.station_id, back.start_ns, back.sampling_rate_hz, back.newest_arrival_ns) == (
        w.station_id, w.start_ns, w.sampling_rate_hz, w.newest_arrival_ns)
    assert back.channels == w.channels and back.meta == w.meta and back.window_id == w.window_id
    back.data[0, 0] = 1.0  # decoded arrays are writable


def test_push_deduplicates_by_window_id(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    q = _queue(redis_client, redis_key_prefix, "ingest")
    assert q.push(_window("NC.AAA.00", 0)) is not None
    assert q.push(_window("NC.AAA.00", 0)) is None  # a restarted ingest cuts the same window again
    assert q.push(_window("NC.AAA.00", 1)) is not None
    assert redis_client.xlen(q.key) == 2


def _process(window: Window) -> Window:
    """The work a worker does, reduced to something checkable: a gain of 2."""
    return Window(window.station_id, window.start_ns, window.sampling_rate_hz, window.data * 2, window.mask,
                  window.newest_arrival_ns, window.channels, {"worker_input": window.window_id})


def test_crashed_consumer_windows_are_reclaimed_and_processed_exactly_once(
    redis_client: redis.Redis, redis_key_prefix: str
) -> None:
    producer = _queue(redis_client, redis_key_prefix, "ingest")
    pushed = [_window(s, k) for k in range(8) for s in STATIONS]
    for w in pushed:
        producer.push(w)
    worker_a = _queue(redis_client, redis_key_prefix, "gpu-a")
    worker_b = _queue(redis_client, redis_key_prefix, "gpu-b")
    results_a = _queue(redis_client, redis_key_prefix, "gpu-a", stream="results")
    results_b = _queue(redis_client, redis_key_prefix, "gpu-b", stream="results")

    # A takes 6 windows, publishes results for 2 of them, then dies before acknowledging anything
    got_a = worker_a.read(count=6, block_ms=None)
    assert len(got_a) == 6
    for _, w in got_a[:2]:
        results_a.push(_process(w))

    # B works through everything else
    done_b = 0
    while batch := worker_b.read(count=5, block_ms=50):
        for _, w in batch:
            results_b.push(_process(w))
        worker_b.ack([entry_id for entry_id, _ in batch])
        done_b += len(batch)
    assert done_b == len(pushed) - 6
    assert worker_b.pending_count() == 6  # A's, still pending

    time.sleep(0.15)
    assert worker_b.reclaim(min_idle_ms=60_000) == []  # not idle long enough
    reclaimed = worker_b.reclaim(min_idle_ms=100)
    assert sorted(e for e, _ in reclaimed) == sorted(e for e, _ in got_a)
    for _, w in reclaimed:
        results_b.push(_process(w))  # the two A finished are absorbed by the de-duplication
    worker_b.ack([e for e, _ in reclaimed])
    assert worker_b.pending_count() == 0

    outputs = [decode_window(f) for _, f in redis_client.xrange(results_b.key)]
    counts = Counter(str(o.meta["worker_input"]) for o in outputs)
    assert set(counts) == {w.window_id for w in pushed}
    assert set(counts.values()) == {1}  # every window exactly once in the output
    by_id = {w.window_id: w for w in pushed}
    for o in outputs:
        np.testing.assert_array_equal(o.data, by_id[o.window_id].data * 2)


def test_restarted_consumer_reads_its_own_pending_first(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    producer = _queue(redis_client, redis_key_prefix, "ingest")
    for k in range(6):
        producer.push(_window("NC.AAA.00", k))
    first = _queue(redis_client, redis_key_prefix, "gpu-a").read(count=3, block_ms=None)
    restarted = _queue(redis_client, redis_key_prefix, "gpu-a")  # same consumer name after a restart
    again = restarted.read(count=2, block_ms=None) + restarted.read(count=2, block_ms=None)  # acks come later
    assert [e for e, _ in again] == [e for e, _ in first]  # each pending entry once, then new ones
    restarted.ack([e for e, _ in again])
    rest = restarted.read(count=10, block_ms=None)
    assert [w.start_ns for _, w in rest] == [_window("NC.AAA.00", k).start_ns for k in range(3, 6)]


def test_poison_window_goes_to_dead_letter(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    producer = _queue(redis_client, redis_key_prefix, "ingest")
    producer.push(_window("NC.AAA.00", 0))
    redis_client.xadd(producer.key, {b"station": b"broken"})  # does not follow the schema
    reasons: list[str] = []
    a = _queue(redis_client, redis_key_prefix, "a", max_deliveries=2, on_dead_lettered=reasons.append)
    b = _queue(redis_client, redis_key_prefix, "b", max_deliveries=2, on_dead_lettered=reasons.append)
    first = a.read(count=10, block_ms=None)
    assert len(first) == 1  # the broken entry went to the dead-letter stream at once
    # a window that crashes every worker that takes it: delivered 1 (a), 2 (b), 3 (a) -> dead
    time.sleep(0.02)
    assert len(b.reclaim(min_idle_ms=10)) == 1
    time.sleep(0.02)
    assert a.reclaim(min_idle_ms=10) == []
    dead = redis_client.xrange(a.dead_key)
    assert [f[b"reason"].startswith(r) for (_, f), r in zip(dead, (b"bad window", b"delivered 3"))] == [True, True]
    assert reasons == ["undecodable", "deliveries"]  # each dead-lettered entry reported once, by cause
    assert a.pending_count() == 0



def test_a_window_of_a_newer_release_is_dead_lettered_with_its_version(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    """Mid-upgrade, a producer of another layout: the worker reads on and the entry lands in the dead-letter
    stream with both versions in its reason, instead of decoding into wrong data."""
    from streamer.scaleout.codec import encode_window

    producer = _queue(redis_client, redis_key_prefix, "ingest")
    newer = encode_window(_window("NC.AAA.00", 1))
    newer["schema"] = "2"
    redis_client.xadd(producer.key, newer)  # type: ignore[arg-type]
    producer.push(_window("NC.AAA.00", 2))
    reasons: list[str] = []
    worker = _queue(redis_client, redis_key_prefix, "a", on_dead_lettered=reasons.append)
    got = worker.read(count=10, block_ms=None)
    assert [w.start_ns for _, w in got] == [_window("NC.AAA.00", 2).start_ns]
    (_, dead), = redis_client.xrange(worker.dead_key)
    assert b"schema '2', this release reads '1'" in dead[b"reason"]
    assert reasons == ["undecodable"]


def test_finished_entries_are_deleted_and_trimmed_work_is_counted(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    trimmed: list[int] = []
    producer = _queue(redis_client, redis_key_prefix, "ingest", maxlen=100)
    for k in range(5):
        producer.push(_window("NC.AAA.00", k))
    worker = _queue(redis_client, redis_key_prefix, "gpu-a", on_trimmed=trimmed.append)
    got = worker.read(count=5, block_ms=None)
    worker.ack([e for e, _ in got[:3]])
    assert redis_client.xlen(producer.key) == 2  # only unfinished work stays
    # the two pending entries are trimmed away (an outage longer than the bound): lost, and counted
    redis_client.xtrim(producer.key, maxlen=0)
    restarted = _queue(redis_client, redis_key_prefix, "gpu-a", on_trimmed=trimmed.append)
    assert restarted.read(count=5, block_ms=None) == []
    assert trimmed == [1, 1] and restarted.pending_count() == 0


def test_a_released_item_may_be_queued_again(redis_client: redis.Redis, redis_key_prefix: str) -> None:
    q = _queue(redis_client, redis_key_prefix, "ingest")
    w = _window("NC.AAA.00", 0)
    assert q.push(w) is not None and q.push(w) is None  # in flight: refused
    q.release([w.window_id])  # its outputs were published
    assert q.push(w) is not None  # a replay after a restart computes it again instead of waiting


def test_reclaimed_entries_are_dead_lettered_when_the_claimer_holds_other_pending_entries_between_them(
    redis_client: redis.Redis, redis_key_prefix: str
) -> None:
    """The delivery counts are looked up per claimed entry, not as a COUNT-limited range of the
    claimer's pending list: an entry the claimer still holds between two claimed ones must not push
    the later claimed entry out of the lookup (which read it as delivered once and kept it alive)."""
    producer = _queue(redis_client, redis_key_prefix, "ingest")
    windows = [_window("NC.AAA.00", k) for k in range(4)]
    for w in windows:
        producer.push(w)
    a = _queue(redis_client, redis_key_prefix, "a", max_deliveries=1)
    b = _queue(redis_client, redis_key_prefix, "b", max_deliveries=1)
    assert len(a.read(count=1, block_ms=None)) == 1  # window 0 on a
    assert len(b.read(count=2, block_ms=None)) == 2  # windows 1 and 2 on b
    assert len(a.read(count=1, block_ms=None)) == 1  # window 3 on a
    time.sleep(0.06)
    # b restarts and re-reads its own two (delivered twice, under its max_deliveries; no longer idle)
    assert _queue(redis_client, redis_key_prefix, "b", max_deliveries=3).read(count=2, block_ms=None) != []
    # a crashed: b takes windows 0 and 3 over (delivered twice > max_deliveries 1); windows 1 and 2,
    # pending on b between them, are not idle long enough to be claimed
    assert b.reclaim(min_idle_ms=50, count=10) == []
    dead = redis_client.xrange(b.dead_key)
    assert [int(f[b"start_ns"]) for _, f in dead] == [windows[0].start_ns, windows[3].start_ns]
    assert all(f[b"reason"] == b"delivered 2 times" for _, f in dead)
