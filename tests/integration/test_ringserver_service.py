"""`coldstream run` against EarthScope's ringserver fed in (scaled) real time, through one fault
after another: kill -9 of ringserver (its ring is discarded: the resume falls back to time), SIGTERM
and restart of ringserver, kill -9 of the service, SIGTERM of the service, Redis stopped and started.
Afterwards every sample of every station and location code is in Redis exactly once (holes and
overlaps counted from the segments), and the reconnect times are printed.

Run one: ``pytest tests/integration/test_ringserver_service.py -s -k demo`` (``-s`` shows the
measured reconnect times and sample counts).
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pipeline_helpers import read_segments
from ringserver import RingServer, ScanFeeder, mseed_records
from test_shutdown import start_run, wait_for, write_config

from streamer.commands.demo import write_resume_state
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*SeedLink (\S+) connected", re.M)


@dataclass
class Faults:
    """The run's bookkeeping: the log files of each service process and what was measured."""

    tmp_path: Path
    logs: list[Path] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)

    def start(self, cfg: Path) -> subprocess.Popen:
        log = self.tmp_path / f"run{len(self.logs) + 1}.log"
        self.logs.append(log)
        return start_run(cfg, log)

    def connected_after(self, t_wall: float) -> float:
        """Seconds from ``t_wall`` (Unix time) to the first "SeedLink ... connected" line after it."""
        times = []
        for log in self.logs:
            for stamp, _server in LOG_TIME.findall(log.read_text(errors="replace")):
                t = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if t >= t_wall - 0.001:
                    times.append(t)
        if not times:
            raise AssertionError("no SeedLink connection after the fault")
        return min(times) - t_wall


def count_segments(client, prefix: str, stations: list[str]) -> int:  # noqa: ANN001
    return sum(client.xlen(f"{prefix}:denoised:{s}") for s in stations)


def hole_list(client, prefix: str, station: str) -> list[tuple[int, int]]:  # noqa: ANN001
    """``[(first missing sample, end)]`` between a station's first and last segment."""
    segs = sorted(read_segments(client, prefix, station), key=lambda s: s.start_sample)
    return [(a.end_sample, b.start_sample) for a, b in zip(segs, segs[1:]) if b.start_sample > a.end_sample]


def holes_and_overlaps(client, prefix: str, station: str) -> tuple[int, int, int, int, int]:  # noqa: ANN001
    """(holes, overlapping samples, first sample, end sample, samples) of a station's segments."""
    segs = sorted(read_segments(client, prefix, station), key=lambda s: s.start_sample)
    assert segs, f"no segments for {station}"
    holes = sum(1 for a, b in zip(segs, segs[1:]) if b.start_sample > a.end_sample)
    overlap = sum(max(0, a.end_sample - b.start_sample) for a, b in zip(segs, segs[1:]))
    samples = sum(s.end_sample - s.start_sample for s in segs)
    return holes, overlap, segs[0].start_sample, segs[-1].end_sample, samples


def run_faults(
    tmp_path: Path,
    ringserver: RingServer,
    records: list[tuple[int, str, bytes]],
    stations: list[str],
    begin_ns: int,
    speed: float,
) -> tuple[Faults, RedisServer, str]:
    """Feed ``records`` into ringserver at ``speed`` and run the fault sequence against `coldstream
    run`; returns after a final SIGTERM drain, with Redis still running."""
    # Redis with an append-only file, so a stop and start keeps what was published
    redis = RedisServer(tmp_path / "redis", extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    redis.start()
    prefix = "rs"
    cfg = write_config(tmp_path, redis.url, prefix, ringserver.port)
    # the default back-off (1 s doubling to 60 s), as deployed
    cfg.write_text(cfg.read_text().replace("reconnect_min_s = 0.2\nreconnect_max_s = 1.0", "reconnect_min_s = 1.0\nreconnect_max_s = 60.0"))
    keys = sorted({"_".join(s.split(".")[:2]) for s in stations})
    streams = ", ".join(f'"{k}"' for k in keys)
    cfg.write_text(cfg.read_text().replace('streams = ["XX_*"]', f"streams = [{streams}]"))
    write_resume_state(tmp_path / "seedlink.state", ringserver.address, keys, begin_ns)
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis.url)
    faults = Faults(tmp_path)
    feeder = ScanFeeder(records, ringserver.scan_dir, speed=speed)
    proc = faults.start(cfg)
    t0 = time.time()
    # a live start: connected first, then the data come (a backlog at the first connection is
    # test_first_connection_to_a_per_channel_backlog_keeps_every_sample)
    wait_for(lambda: _safe_connected(faults, t0 - 60) >= 0, 90, "the first connection", proc, faults.logs[-1])
    feeder.start()
    total = len(records)

    def fed_s() -> str:
        n = feeder.written
        return f"data fed to {(feeder.records[n - 1][0] - begin_ns) / 1e9:.0f} s" if n else "nothing fed"

    def progress(fraction: float) -> None:
        wait_for(lambda: feeder.written >= fraction * total and count_segments(client, prefix, stations) > 0,
                 120, f"{fraction:.0%} fed and segments published", proc, faults.logs[-1])

    try:
        progress(0.1)
        # 1. kill -9 of ringserver: it discards its ring and rescans the scan directory
        ringserver.kill()
        time.sleep(2.0)
        # taken before the start: the service may connect while start() still polls for the listening socket
        t = time.time()
        ringserver.start()
        wait_for(lambda: _safe_connected(faults, t) >= 0, 30, "reconnect after kill -9 of ringserver", proc, faults.logs[-1])
        faults.measured.append(f"[{fed_s()}] ringserver kill -9, down 2 s: reconnected {_safe_connected(faults, t):.2f} s after its start")
        progress(0.25)
        # 2. SIGTERM of ringserver (ring and scan state saved), back after 3 s
        ringserver.stop()
        time.sleep(3.0)
        t = time.time()
        ringserver.start()
        wait_for(lambda: _safe_connected(faults, t) >= 0, 30, "reconnect after SIGTERM of ringserver", proc, faults.logs[-1])
        faults.measured.append(f"[{fed_s()}] ringserver SIGTERM, down 3 s: reconnected {_safe_connected(faults, t):.2f} s after its start")
        progress(0.4)
        # 3. kill -9 of the service, restart on its state file
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t = time.time()
        proc = faults.start(cfg)
        wait_for(lambda: _safe_connected(faults, t) >= 0, 90, "the restarted service connected", proc, faults.logs[-1])
        faults.measured.append(f"[{fed_s()}] service kill -9: restarted process connected {_safe_connected(faults, t):.2f} s after its start")
        progress(0.55)
        # 4. SIGTERM of the service (drain, state written), restart
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, faults.logs[-1].read_text()[-3000:]
        t = time.time()
        proc = faults.start(cfg)
        wait_for(lambda: _safe_connected(faults, t) >= 0, 90, "the restarted service connected", proc, faults.logs[-1])
        faults.measured.append(f"[{fed_s()}] service SIGTERM: restarted process connected {_safe_connected(faults, t):.2f} s after its start")
        progress(0.8)
        # 5. Redis stopped for 5 s
        redis.stop()
        time.sleep(5.0)
        redis.start()
        t = time.time()
        wait_for(lambda: "available again" in faults.logs[-1].read_text() or feeder.done, 60, "Redis back", proc,
                 faults.logs[-1])
        faults.measured.append(f"[{fed_s()}] Redis stopped 5 s: {_redis_back_after(faults.logs[-1], t)}")
        # the rest of the data, then a final drain
        assert feeder.wait(300), "feeder did not finish"
        time.sleep(3.0)  # ringserver scans about once a second; the last records reach the service
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, faults.logs[-1].read_text()[-3000:]
    finally:
        feeder.stop()
        if proc.poll() is None:
            proc.kill()
    return faults, redis, prefix


def _safe_connected(faults: Faults, t: float) -> float:
    try:
        return faults.connected_after(t)
    except AssertionError:
        return -1.0


def _redis_back_after(log: Path, t_wall: float) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if "available again" in line:
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return f"publishing again {stamp - t_wall:.2f} s after it answered"
    return "no outage seen by the publisher (nothing to write while it was down)"


def check_exactly_once(client, prefix: str, stations: list[str], expect: dict[str, tuple[int, int]] | None,
                       faults: Faults, min_samples: int) -> None:  # noqa: ANN001
    rows = []
    bad = []
    for station in stations:
        holes, overlap, first, end, samples = holes_and_overlaps(client, prefix, station)
        rows.append(f"{station}: {samples} samples [{first}, {end}), holes {holes} "
                    f"{[(a - first, b - first) for a, b in hole_list(client, prefix, station)]}, overlapping samples {overlap}")
        if holes or overlap or samples < min_samples:
            bad.append(rows[-1])
        if expect is not None and (first, end) != expect[station]:
            bad.append(f"{station}: published [{first}, {end}), expected {expect[station]}")
    print("\n".join(["", *faults.measured, *rows]))
    assert not bad, "\n".join(bad)


@pytest.mark.timeout(420)
def test_demo_through_ringserver_faults_every_sample_once(ringserver: RingServer, tmp_path: Path) -> None:
    """The demo recording (6 stations, 240 s) at 5x real time through the five faults."""
    cat = load_catalogue()
    records = mseed_records([recording_path()])
    faults, redis, prefix = run_faults(tmp_path, ringserver, records, cat["stations"], cat["start_ns"], speed=5.0)
    import redis as redis_lib

    try:
        client = redis_lib.Redis.from_url(redis.url)
        start = cat["start_ns"] // 10_000_000
        expect = {s: (start, start + 24_000) for s in cat["stations"]}
        check_exactly_once(client, prefix, cat["stations"], expect, faults, 24_000)
    finally:
        redis.stop()


@pytest.mark.timeout(420)
def test_real_data_through_ringserver_faults_every_sample_once(ringserver: RingServer, tmp_path: Path,
                                                               shared_dir: Path) -> None:
    """Three minutes of real broadband data (CX.PB01, CX.PB02) at 3x real time through the five faults."""
    files = sorted((shared_dir / "data" / "cx-continuous-1h").glob("20140301.CX.*.mseed"))
    if not files:
        pytest.skip("no cx-continuous-1h data in the shared folder")
    first = min(r[0] for r in mseed_records(files[:1]))  # the end of the first record
    begin_ns = (first // 10**10 + 2) * 10**10  # a 10 s grid point after the start of the data
    records = mseed_records(files, begin_ns, begin_ns + 180 * 10**9)
    stations = sorted({".".join(name.split(".")[:3]) for _, name, _ in records})  # NET.STA.LOC
    faults, redis, prefix = run_faults(tmp_path, ringserver, records, stations, begin_ns, speed=3.0)
    import redis as redis_lib

    try:
        client = redis_lib.Redis.from_url(redis.url)
        check_exactly_once(client, prefix, stations, None, faults, 150 * 100)
    finally:
        redis.stop()


@pytest.mark.timeout(300)
def test_first_connection_to_a_per_channel_backlog_keeps_every_sample(ringserver: RingServer, tmp_path: Path) -> None:
    """The first connection finds 60 s of the demo in the ring, each channel's records in one run
    (ringserver scans file by file: XX.DEM01..HHE, then ..HHN, ...): every station from its start."""
    cat = load_catalogue()
    end_ns = cat["start_ns"] + 60 * 10**9
    records = mseed_records([recording_path()], cat["start_ns"], end_ns)
    # The ring's earliest packet is another station's: ringserver skips the earliest packet when a
    # time request lands on it (test_ringserver_moves_the_whole_connection_to_a_checked_packet).
    other = [(t, name.replace("DEM01", "OTH01"), rec.replace(b"DEM01", b"OTH01")) for t, name, rec in records[:1]]
    assert ScanFeeder(other, ringserver.scan_dir, speed=0).start().wait(30)
    time.sleep(2.5)  # scanned first
    assert ScanFeeder(records, ringserver.scan_dir, speed=0).start().wait(30)  # in the ring before we connect
    time.sleep(2.0)  # scanned
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        cfg = write_config(tmp_path, redis.url, "rs", ringserver.port)
        keys = sorted({"_".join(s.split(".")[:2]) for s in cat["stations"]})
        write_resume_state(tmp_path / "seedlink.state", ringserver.address, keys, cat["start_ns"])
        faults = Faults(tmp_path)
        proc = faults.start(cfg)
        import redis as redis_lib

        client = redis_lib.Redis.from_url(redis.url)
        try:
            wait_for(lambda: count_segments(client, "rs", cat["stations"]) >= 6, 90, "segments", proc, faults.logs[-1])
            time.sleep(3.0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        start = cat["start_ns"] // 10_000_000
        firsts = {s: holes_and_overlaps(client, "rs", s)[2] for s in cat["stations"]}
        print(f"first published sample per station (data start {start}): {firsts}")
        assert all(first == start for first in firsts.values()), firsts
    finally:
        redis.stop()
