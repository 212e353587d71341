"""RedisPublisher against a real redis-server: schema round trip, idempotent replays, trimming, AUTH,
outages with an in-order backlog, and the backlog bound."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from pydantic import SecretStr

from streamer.config import RedisSettings
from streamer.metrics import Metrics
from streamer.picks import Pick, make_pick_id
from streamer.publish import RedisPublisher, connect, mask_url
from streamer.records import OutputItem
from streamer.schema import StreamKeys, decode_pick, decode_segment, segment_entry_id
from streamer.stitch import Segment, Stitcher
from tests.conftest import RedisProcess

pytestmark = pytest.mark.integration

RATE = 100.0
T0 = 176_400_000_000  # absolute 100 Hz sample index: 2025-11-24T16:00:00Z
STATION = "NC.ABC.00"


def _segment(k: int, n: int = 1000, station: str = STATION) -> Segment:
    rng = np.random.default_rng(k)
    data = rng.standard_normal((3, n)).astype(np.float32)
    mask = np.ones((3, n), bool)
    mask[2, 10:17] = False
    data[~mask] = 0
    return Segment(station, T0 + k * n, RATE, data, mask, steps_min=3, steps_max=4, channels=("HHE", "HHN", "HHZ"))


def _pick(k: int, phase: str = "P", emitted_ns: int = 1) -> Pick:
    t = (T0 + 1000 * k + 250) * 10_000_000
    return Pick(make_pick_id(STATION, phase, t), STATION, phase, t, 0.87, "denoised", "unet", "1.0", "PhaseNet/original", "1", 4, emitted_ns)


def _settings(url: str, prefix: str, **kw: object) -> RedisSettings:
    return RedisSettings(url=url, stream_prefix=prefix, **kw)  # type: ignore[arg-type]


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


def _wait(cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_segment_and_pick_round_trip(redis_url: str, redis_client: redis.Redis, redis_key_prefix: str, metrics: Metrics) -> None:
    pub = RedisPublisher(_settings(redis_url, redis_key_prefix), metrics)
    seg, pick = _segment(1), _pick(1)
    pub.publish([OutputItem.of_segment(seg, "unet", "1.0"), OutputItem.of_pick(pick)])
    assert pub.flush(5)
    keys = StreamKeys(redis_key_prefix)
    entries = redis_client.xrange(keys.denoised(STATION))
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert entry_id.decode() == segment_entry_id(seg.start_ns) == f"{seg.start_ns // 1_000_000}-0"
    assert fields[b"dtype"] == b"<f4" and fields[b"shape"] == b"3,1000" and fields[b"component_order"] == b"ENZ"
    assert fields[b"channels"] == b"HHE,HHN,HHZ" and fields[b"sampling_rate_hz"] == b"100.0"
    assert int(fields[b"start_ns"]) == seg.start_ns and int(fields[b"end_ns"]) == seg.end_ns
    assert fields[b"data"] == seg.data.astype("<f4").tobytes()  # raw little-endian float32
    np.testing.assert_array_equal(np.frombuffer(fields[b"data"], "<f4").reshape(3, -1), seg.data)
    back = decode_segment(fields)
    np.testing.assert_array_equal(back.segment.data, seg.data)
    np.testing.assert_array_equal(back.segment.mask, seg.mask)
    assert back.segment.start_sample == seg.start_sample and back.model == "unet" and back.segment.steps_min == 3
    assert int(redis_client.hget(keys.latest, STATION)) == seg.end_ns
    (pick_entry,) = redis_client.xrange(keys.picks)
    assert decode_pick(pick_entry[1]) == pick
    assert pick_entry[1][b"time_iso"] == b"2025-11-24T16:00:12.500000Z"
    assert _value(metrics, "coldstream_redis_published_total", kind="segment") == 1
    assert _value(metrics, "coldstream_picks_total", phase="P", source="denoised") == 1
    assert _value(metrics, "coldstream_redis_connected") == 1
    pub.close()


def test_replay_is_counted_as_duplicates_and_adds_nothing(
    redis_url: str, redis_client: redis.Redis, redis_key_prefix: str, metrics: Metrics
) -> None:
    acked: list[OutputItem] = []
    pub = RedisPublisher(_settings(redis_url, redis_key_prefix), metrics, acked.extend)
    items = [OutputItem.of_segment(_segment(k)) for k in range(5)] + [OutputItem.of_pick(_pick(k)) for k in range(3)]
    pub.publish(items)
    assert pub.flush(5)
    keys = StreamKeys(redis_key_prefix)
    before = (redis_client.xrange(keys.denoised(STATION)), redis_client.xrange(keys.picks))
    # a restart replays the same data: same segments, same picks found again later (new emitted_ns)
    pub.publish([OutputItem.of_segment(_segment(k)) for k in range(5)])
    pub.publish([OutputItem.of_pick(_pick(k, emitted_ns=99)) for k in range(3)])
    # an older segment arriving after newer ones is refused the same way
    pub.publish([OutputItem.of_segment(_segment(2))])
    assert pub.flush(5)
    after = (redis_client.xrange(keys.denoised(STATION)), redis_client.xrange(keys.picks))
    assert after == before
    assert _value(metrics, "coldstream_redis_duplicates_total", kind="segment") == 6
    assert _value(metrics, "coldstream_redis_duplicates_total", kind="pick") == 3
    assert _value(metrics, "coldstream_redis_published_total", kind="segment") == 5
    assert _value(metrics, "coldstream_picks_total", phase="P", source="denoised") == 3
    assert _value(metrics, "coldstream_redis_publish_errors_total") == 0
    assert len(acked) == 17  # duplicates are stored data too: acknowledged
    # denoised picks are kept by onset (the lifecycle keys), with the de-duplication TTL
    t0 = _pick(0).time_ns
    assert redis_client.ttl(keys.onset(STATION, "P", t0 // 500_000_000)) > 3600
    pub.close()


def test_sub_millisecond_starts_get_distinct_ordered_ids() -> None:
    ids = [segment_entry_id(1_764_000_000_000_000_000 + d) for d in (0, 1, 250_000, 999_999, 1_000_000)]
    assert ids == [
        "1764000000000-0", "1764000000000-1", "1764000000000-250000", "1764000000000-999999", "1764000000001-0",
    ]


def test_maxlen_trims_approximately(redis_url: str, redis_client: redis.Redis, redis_key_prefix: str, metrics: Metrics) -> None:
    pub = RedisPublisher(_settings(redis_url, redis_key_prefix, maxlen=50), metrics)
    pub.publish([OutputItem.of_segment(_segment(k, n=10)) for k in range(600)])
    pub.publish([OutputItem.of_pick(_pick(k)) for k in range(600)])
    assert pub.flush(10)
    keys = StreamKeys(redis_key_prefix)
    n_seg, n_pick = redis_client.xlen(keys.denoised(STATION)), redis_client.xlen(keys.picks)
    # "~" trims whole macro nodes (stream-node-max-entries, default 100)
    assert 50 <= n_seg <= 150 and 50 <= n_pick <= 150
    newest = redis_client.xrevrange(keys.denoised(STATION), count=1)[0][0]
    assert newest.decode() == segment_entry_id(_segment(599, n=10).start_ns)
    pub.close()


@pytest.fixture
def auth_redis(tmp_path: Path) -> RedisProcess:
    server = RedisProcess(tmp_path / "redis-auth", extra_args=["--requirepass", "s3cr3t-pw"])
    server.start()
    yield server
    server.stop()


def test_auth_with_password_and_password_file_never_logged(
    auth_redis: RedisProcess, tmp_path: Path, redis_key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pw_file = tmp_path / "redis.pw"
    pw_file.write_text("s3cr3t-pw\n")
    pw_file.chmod(0o600)
    for kw in ({"password": SecretStr("s3cr3t-pw")}, {"password_file": pw_file}):
        metrics = Metrics()
        pub = RedisPublisher(_settings(auth_redis.url, redis_key_prefix, **kw), metrics)
        pub.publish([OutputItem.of_pick(_pick(1))])
        assert pub.flush(5)
        assert _value(metrics, "coldstream_redis_published_total", kind="pick") + _value(
            metrics, "coldstream_redis_duplicates_total", kind="pick") == 1
        pub.close()
    # wrong password: nothing published, the item stays queued, the error is reported
    metrics = Metrics()
    url_with_secret = auth_redis.url.replace("redis://", "redis://:wrong-s3cr3t@")
    pub = RedisPublisher(_settings(url_with_secret, redis_key_prefix), metrics)
    pub.publish([OutputItem.of_pick(_pick(2))])
    assert not pub.flush(0.5)
    assert pub.backlog_size == 1 and _value(metrics, "coldstream_redis_connected") == 0
    assert _value(metrics, "coldstream_redis_publish_errors_total") >= 1
    pub.close()
    assert "s3cr3t" not in caplog.text and "***@127.0.0.1" in caplog.text


def test_url_masking_and_tls_settings() -> None:
    assert mask_url("rediss://user:pw@redis.example:6380/1") == "rediss://***@redis.example:6380/1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    client = connect(RedisSettings(url="rediss://redis.example:6380/0", tls_ca_file=Path("ca.pem")))
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_ca_certs"] == "ca.pem"
    client.close()


def _outage(private_redis: RedisProcess, prefix: str, outage_s: float, n_during: int) -> None:
    metrics = Metrics()
    acked: list[OutputItem] = []
    lock = threading.Lock()

    def on_acked(items: list[OutputItem]) -> None:
        with lock:
            acked.extend(items)

    settings = _settings(private_redis.url, prefix, retry_max_s=1.0)
    pub = RedisPublisher(settings, metrics, on_acked)
    pub.start()
    first = [OutputItem.of_segment(_segment(k), token=k) for k in range(3)]
    pub.publish(first)
    _wait(lambda: len(acked) == 3)
    private_redis.stop()
    # the daemon keeps producing while Redis is away
    during = []
    for k in range(3, 3 + n_during):
        item = OutputItem.of_segment(_segment(k), token=k)
        during.append(item)
        pub.publish([item, OutputItem.of_pick(_pick(k), token=f"pick{k}")])
        time.sleep(outage_s / n_during)
    _wait(lambda: _value(metrics, "coldstream_redis_connected") == 0)
    assert _value(metrics, "coldstream_redis_backlog_entries") == 2 * n_during
    assert _value(metrics, "coldstream_redis_publish_errors_total") >= 1
    assert len(acked) == 3  # nothing acknowledged while Redis is down: SeedLink state stays put
    private_redis.start()  # same port
    assert pub.flush(settings.retry_max_s + 10)
    assert _value(metrics, "coldstream_redis_connected") == 1
    assert _value(metrics, "coldstream_redis_backlog_entries") == 0
    assert _value(metrics, "coldstream_redis_backlog_dropped_total") == 0
    tokens = [item.token for item in acked]
    expected = [0, 1, 2]
    for k in range(3, 3 + n_during):
        expected += [k, f"pick{k}"]
    assert tokens == expected  # every item, acknowledged in order
    client = redis.Redis.from_url(private_redis.url)
    keys = StreamKeys(prefix)
    # the server restarted empty (no persistence in the test): exactly the backlog, in order
    ids = [e[0].decode() for e in client.xrange(keys.denoised(STATION))]
    assert ids == [segment_entry_id(i.segment.start_ns) for i in during if i.segment is not None]
    picks = [decode_pick(f).pick_id for _, f in client.xrange(keys.picks)]
    assert picks == [_pick(k).pick_id for k in range(3, 3 + n_during)]
    client.close()
    pub.close()


def test_outage_backlog_flushes_in_order(private_redis: RedisProcess, redis_key_prefix: str) -> None:
    _outage(private_redis, redis_key_prefix, outage_s=2.5, n_during=10)


@pytest.mark.slow
def test_outage_30_s(private_redis: RedisProcess, redis_key_prefix: str) -> None:
    _outage(private_redis, redis_key_prefix, outage_s=30.0, n_during=60)


def test_backlog_bound_drops_oldest_and_says_so(
    private_redis: RedisProcess, redis_key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    acked: list[OutputItem] = []
    private_redis.stop()
    pub = RedisPublisher(_settings(private_redis.url, redis_key_prefix, backlog_max_entries=5), metrics, acked.extend)
    items = [OutputItem.of_segment(_segment(k), token=k) for k in range(8)]
    with caplog.at_level(logging.ERROR):
        pub.publish(items)
    assert pub.backlog_size == 5
    assert _value(metrics, "coldstream_redis_backlog_dropped_total") == 3
    assert "dropped the 3 oldest" in caplog.text
    assert not pub.flush(0.3)
    private_redis.start()
    assert pub.flush(10)
    assert [i.token for i in acked] == [3, 4, 5, 6, 7]
    pub.close()


def test_marker_items_pass_through_in_order(redis_url: str, redis_key_prefix: str, metrics: Metrics) -> None:
    acked: list[object] = []
    pub = RedisPublisher(_settings(redis_url, redis_key_prefix), metrics, lambda items: acked.extend(i.token for i in items))
    pub.publish([OutputItem.of_segment(_segment(0), token="a"), OutputItem.marker("state-1"), OutputItem.of_pick(_pick(0), token="b")])
    assert pub.flush(5)
    assert acked == ["a", "state-1", "b"]
    pub.close()


def test_replayed_pick_shifted_within_tolerance_is_a_duplicate(
    redis_url: str, redis_client: redis.Redis, redis_key_prefix: str, metrics: Metrics
) -> None:
    """After a restart the stack around the resume point holds fewer windows, so the same arrival may
    peak a few samples away (a different pick_id): still the same pick."""
    pub = RedisPublisher(_settings(redis_url, redis_key_prefix), metrics, pick_tolerance_s=1.0)
    base = _pick(3)

    def moved(dt_ns: int, source: str = "denoised", phase: str = "P") -> Pick:
        t = base.time_ns + dt_ns
        return Pick(make_pick_id(STATION, phase, t, source), STATION, phase, t, 0.8, source, "", "", "PhaseNet", "1", 0, 5)

    pub.publish([OutputItem.of_pick(base)])
    assert pub.flush(5)
    pub.publish([OutputItem.of_pick(p) for p in (
        moved(30_000_000),  # same arrival, 30 ms later: duplicate
        moved(-990_000_000),  # 0.99 s earlier, other time bucket: duplicate
        moved(1_500_000_000),  # 1.5 s later: a new pick
        moved(0, source="raw"),  # the raw-data picker at the same time: its own pick
        moved(10_000_000, phase="S"),  # another phase: its own pick
    )])
    assert pub.flush(5)
    stored = [decode_pick(f) for _, f in redis_client.xrange(StreamKeys(redis_key_prefix).picks)]
    assert [(p.time_ns - base.time_ns, p.source, p.phase) for p in stored] == [
        (0, "denoised", "P"), (1_500_000_000, "denoised", "P"), (0, "raw", "P"), (10_000_000, "denoised", "S"),
    ]
    assert _value(metrics, "coldstream_redis_duplicates_total", kind="pick") == 2
    pub.close()


class _Pipeline:
    """The output side as the service runs it for one station: denoised and probability stitchers,
    the pick detector, and the publisher. The "model" is deterministic per window, as a real one is."""

    N, S = 3000, 1000

    def __init__(self, pub: RedisPublisher, wave: np.ndarray, probs: np.ndarray) -> None:
        from streamer.picks import PickDetector

        self.pub, self.wave, self.probs = pub, wave, probs
        self.den = Stitcher(self.N, self.S, station_id=STATION, channel_names=("HHE", "HHN", "HHZ"))
        self.prob = Stitcher(self.N, self.S, taper="boxcar", mask_rows="any", station_id=STATION)
        self.det = PickDetector(RATE, 0.3, 0.3)

    def window(self, k: int) -> None:
        s = k * self.S
        gain = np.float32(0.9 + 0.02 * (k % 5))  # overlapping windows disagree a little
        items = [OutputItem.of_segment(seg, "unet", "1") for seg in self.den.add(T0 + s, gain * self.wave[:, s:s + self.N], steps=3)]
        for seg in self.prob.add(T0 + s, self.probs[:, s:s + self.N] * gain, steps=3):
            items += [OutputItem.of_pick(p) for p in self.det.process(seg, now_ns=7)]
        self.pub.publish(items)

    def safe_sample(self) -> int:
        """Where a restart must resume: every output before it is final and was queued."""
        assert self.den.final_end_sample is not None and self.prob.final_end_sample is not None
        return min(self.den.final_end_sample, self.prob.final_end_sample - self.det.latency_samples)


def test_crash_and_replay_from_the_safe_point_gives_the_same_redis_content(
    redis_url: str, redis_client: redis.Redis, redis_key_prefix: str
) -> None:
    total = 40_000
    rng = np.random.default_rng(2)
    wave = rng.normal(0, 100, (3, total)).astype(np.float32)
    i = np.arange(total)
    p = sum(0.9 * np.exp(-0.5 * ((i - c) / 15) ** 2) for c in (8_450, 21_030, 21_905, 33_333))
    s = sum(0.7 * np.exp(-0.5 * ((i - c) / 30) ** 2) for c in (8_900, 21_500))
    probs = np.stack([p, s, 1 - p - s]).astype(np.float32)
    n_windows = (total - _Pipeline.N) // _Pipeline.S + 1

    clean_metrics, crash_metrics = Metrics(), Metrics()
    clean = _Pipeline(RedisPublisher(_settings(redis_url, redis_key_prefix + "a"), clean_metrics), wave, probs)
    for k in range(n_windows):
        clean.window(k)
    assert clean.pub.flush(10)

    crashed = _Pipeline(RedisPublisher(_settings(redis_url, redis_key_prefix + "b"), crash_metrics), wave, probs)
    for crash_after in (21, 22):  # two crashes: one right after a pick was found, one later
        start = 0 if crash_after == 21 else resume_k
        for k in range(start, crash_after):
            crashed.window(k)
        assert crashed.pub.flush(10)
        safe = crashed.safe_sample() - T0
        # restart with empty state, resuming with the first window that touches the safe point
        resume_k = max(0, -(-(safe - _Pipeline.N + 1) // _Pipeline.S))
        crashed = _Pipeline(crashed.pub, wave, probs)
    for k in range(resume_k, n_windows):
        crashed.window(k)
    assert crashed.pub.flush(10)

    a, b = StreamKeys(redis_key_prefix + "a"), StreamKeys(redis_key_prefix + "b")
    seg_a, seg_b = redis_client.xrange(a.denoised(STATION)), redis_client.xrange(b.denoised(STATION))
    assert [e[0] for e in seg_b] == [e[0] for e in seg_a]
    assert [e[1][b"data"] for e in seg_b] == [e[1][b"data"] for e in seg_a]  # bit-identical waveforms
    picks_a = [(f[b"pick_id"], f[b"phase"], f[b"time_ns"]) for _, f in redis_client.xrange(a.picks)]
    picks_b = [(f[b"pick_id"], f[b"phase"], f[b"time_ns"]) for _, f in redis_client.xrange(b.picks)]
    assert picks_b == picks_a and len(picks_a) == 6
    assert _value(crash_metrics, "coldstream_redis_duplicates_total", kind="segment") > 0
    clean.pub.close()
    crashed.pub.close()


def test_bad_items_are_counted_and_do_not_block_the_rest(
    redis_url: str, redis_client: redis.Redis, redis_key_prefix: str, metrics: Metrics
) -> None:
    keys = StreamKeys(redis_key_prefix)
    redis_client.set(keys.denoised("XX.BAD.00"), "not a stream")  # e.g. a key collision
    acked: list[object] = []
    pub = RedisPublisher(_settings(redis_url, redis_key_prefix), metrics, lambda items: acked.extend(i.token for i in items))
    epoch = Segment(STATION, 0, RATE, np.zeros((3, 10), np.float32), np.ones((3, 10), bool))  # start_ns 0: no valid ID
    pub.publish([
        OutputItem.of_segment(_segment(0, station="XX.BAD.00"), token="wrongtype"),
        OutputItem.of_segment(epoch, token="epoch"),
        OutputItem.of_segment(_segment(1), token="good"),
        OutputItem.of_pick(_pick(1), token="pick"),
    ])
    assert pub.flush(5)
    assert acked == ["wrongtype", "epoch", "good", "pick"]  # refused for good: not retried forever
    assert _value(metrics, "coldstream_redis_publish_errors_total") == 2
    assert _value(metrics, "coldstream_redis_published_total", kind="segment") == 1
    assert redis_client.xlen(keys.denoised(STATION)) == 1 and redis_client.xlen(keys.picks) == 1
    pub.close()


def test_flush_returns_after_on_acked_has_run(redis_url: str, redis_key_prefix: str, metrics: Metrics) -> None:
    done: list[float] = []

    def slow_ack(items: list[OutputItem]) -> None:
        time.sleep(0.3)
        done.append(time.monotonic())

    pub = RedisPublisher(_settings(redis_url, redis_key_prefix), metrics, slow_ack)
    pub.start()
    pub.publish([OutputItem.of_segment(_segment(0))])
    assert pub.flush(5)
    assert len(done) == 1  # the service saves SeedLink state right after flush(): acks must be in
    pub.close()


def test_idle_publisher_notices_an_outage_and_the_recovery(private_redis: RedisProcess, redis_key_prefix: str) -> None:
    metrics = Metrics()
    pub = RedisPublisher(_settings(private_redis.url, redis_key_prefix), metrics, idle_ping_s=0.2)
    pub.start()
    _wait(lambda: _value(metrics, "coldstream_redis_connected") == 1, 5)
    private_redis.stop()
    _wait(lambda: _value(metrics, "coldstream_redis_connected") == 0, 5)
    assert not pub.connected and _value(metrics, "coldstream_redis_publish_errors_total") == 0  # nothing failed to write
    private_redis.start()
    _wait(lambda: _value(metrics, "coldstream_redis_connected") == 1, 5)
    pub.close()
