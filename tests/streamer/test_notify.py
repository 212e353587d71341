"""sd_notify protocol tests: the test plays systemd's side of the datagram socket."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.notify import HealthMonitor, Notifier, WatchdogPinger


class FakeSystemd:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)
        self.env_value = env_value

    def environ(self, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.env_value}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        return env

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def pending(self) -> list[dict[str, str]]:
        """Every datagram waiting right now (non-blocking)."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(4096).decode()
                except BlockingIOError:
                    break
                out.append(dict(line.split("=", 1) for line in data.split("\n") if line))
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(2.0)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="csn-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        path = str(short_dir / "notify")
        fake = FakeSystemd(path, path)
    else:
        name = f"coldstream-test-{uuid.uuid4().hex}"
        fake = FakeSystemd("\0" + name, "@" + name)
    try:
        yield fake
    finally:
        fake.close()


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- Notifier ------------------------------------------------------------------------------------


def test_ready_status_stopping_reach_the_socket(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.environ())
    assert n.enabled
    assert n.ready(status="model loaded")
    assert systemd.receive() == {"READY": "1", "STATUS": "model loaded"}
    assert n.status("stations=3/3 queue=0")
    assert systemd.receive() == {"STATUS": "stations=3/3 queue=0"}
    assert n.stopping()
    assert systemd.receive() == {"STOPPING": "1"}
    assert n.extend_timeout(90)
    assert systemd.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}
    assert n.notify(reloading=1, monotonic_usec=5)
    assert systemd.receive() == {"RELOADING": "1", "MONOTONIC_USEC": "5"}
    n.close()


def test_newlines_in_status_cannot_inject_fields(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.environ())
    n.status("ok\nREADY=1")
    assert systemd.receive() == {"STATUS": "ok READY=1"}


def test_watchdog_interval_is_half_of_watchdog_usec(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.environ(watchdog_usec=60_000_000, watchdog_pid=os.getpid()))
    assert n.watchdog_enabled
    assert n.watchdog_timeout_s == pytest.approx(60.0)
    assert n.watchdog_interval_s == pytest.approx(30.0)
    assert n.watchdog()
    assert systemd.receive() == {"WATCHDOG": "1"}


def test_watchdog_pid_unset_means_this_process(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.environ(watchdog_usec=2_000_000))
    assert n.watchdog_interval_s == pytest.approx(1.0)


def test_watchdog_pid_mismatch_disables_the_watchdog(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.environ(watchdog_usec=60_000_000, watchdog_pid=os.getpid() + 1))
    assert not n.watchdog_enabled
    assert n.watchdog_interval_s is None
    assert not n.watchdog()
    assert systemd.pending() == []
    # READY etc. still go out; systemd itself drops them from non-main PIDs (NotifyAccess=main)
    assert n.ready()
    assert systemd.receive() == {"READY": "1"}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "60000000"},  # watchdog without a notify socket
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "vsock:2:1234"},  # not AF_UNIX: unsupported, disabled
    ],
)
def test_everything_is_a_noop_outside_systemd(env: dict[str, str]) -> None:
    n = Notifier(env)
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert not n.ready()
    assert not n.status("x")
    assert not n.watchdog()
    assert not n.stopping()
    assert not n.extend_timeout(10)
    assert repr(n) == "Notifier(disabled)"


@pytest.mark.parametrize("usec", ["0", "-5", "abc", ""])
def test_bad_watchdog_usec_disables_watchdog(systemd: FakeSystemd, usec: str) -> None:
    env = systemd.environ()
    env["WATCHDOG_USEC"] = usec
    n = Notifier(env)
    assert n.enabled and not n.watchdog_enabled


def test_send_errors_are_logged_once_and_never_raised(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(short_dir / "nobody-listens")})
    with caplog.at_level(logging.WARNING, logger="streamer.notify"):
        for _ in range(5):
            assert n.ready() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens" in warnings[0].getMessage()
    # once the socket appears, sending works again
    fake = FakeSystemd(str(short_dir / "nobody-listens"), str(short_dir / "nobody-listens"))
    try:
        assert n.ready()
        assert fake.receive() == {"READY": "1"}
    finally:
        fake.close()


def test_notifier_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch, systemd: FakeSystemd) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert n.watchdog_interval_s == pytest.approx(2.0)
    assert n.ready()
    assert systemd.receive() == {"READY": "1"}


# --- HealthMonitor -------------------------------------------------------------------------------


def test_health_monitor_names_stalled_stages_in_order() -> None:
    clock = FakeClock()
    mon = HealthMonitor(["ingest", "worker", "publisher"], stall_s=60, clock=clock)
    assert mon.healthy() == (True, [])
    clock.t += 30
    mon.progress("ingest")
    clock.t += 31  # worker and publisher: 61 s silent; ingest: 31 s
    assert mon.healthy() == (False, ["worker", "publisher"])
    mon.idle("worker")  # empty queue counts as healthy
    assert mon.is_idle("worker")
    assert mon.healthy() == (False, ["publisher"])
    mon.progress("publisher")
    assert mon.healthy() == (True, [])
    assert mon.age_s("ingest") == pytest.approx(31)
    assert mon.healthy(now=clock.t + 1000) == (False, ["ingest", "worker", "publisher"])


def test_idle_is_a_heartbeat_not_a_permanent_pass() -> None:
    clock = FakeClock()
    mon = HealthMonitor(["worker"], stall_s=10, clock=clock)
    mon.idle("worker")
    clock.t += 11  # a worker that said "idle" once and then hung is stalled
    assert mon.healthy() == (False, ["worker"])
    mon.progress("worker")
    assert not mon.is_idle("worker")


def test_reset_gives_every_stage_a_fresh_grace_period() -> None:
    clock = FakeClock()
    mon = HealthMonitor(["ingest", "worker"], stall_s=60, clock=clock)
    clock.t += 90  # e.g. a slow model load before READY
    assert mon.healthy() == (False, ["ingest", "worker"])
    mon.reset()
    assert mon.healthy() == (True, [])
    clock.t += 61
    assert mon.healthy() == (False, ["ingest", "worker"])


def test_health_monitor_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        HealthMonitor([], stall_s=1)
    with pytest.raises(ValueError):
        HealthMonitor(["a", "a"], stall_s=1)
    with pytest.raises(ValueError):
        HealthMonitor(["a"], stall_s=0)
    mon = HealthMonitor(["a"], stall_s=1)
    with pytest.raises(KeyError, match="unknown stage 'b'"):
        mon.progress("b")


def test_progress_sets_the_stage_timestamp_metric(metrics) -> None:
    mon = HealthMonitor(["ingest"], stall_s=5, clock=FakeClock(), metrics=metrics, wall_clock=lambda: 1.7e9)
    mon.progress("ingest")
    value = metrics.registry.get_sample_value("coldstream_stage_last_progress_timestamp_seconds", {"stage": "ingest"})
    assert value == 1.7e9


# --- WatchdogPinger ------------------------------------------------------------------------------


def pings(metrics) -> float:
    return metrics.registry.get_sample_value("coldstream_watchdog_pings_total") or 0.0


def test_pinger_pings_while_healthy_and_stops_when_a_stage_stalls(systemd: FakeSystemd, metrics, caplog) -> None:
    clock = FakeClock()
    n = Notifier(systemd.environ(watchdog_usec=20_000_000, watchdog_pid=os.getpid()))
    mon = HealthMonitor(["ingest", "worker", "publisher"], stall_s=15, clock=clock)
    pinger = WatchdogPinger(n, mon, metrics, status=lambda: "stations=2/2 queue=0")
    assert pinger.interval_s == pytest.approx(10.0)

    for _ in range(3):  # healthy: every stage reports each interval
        clock.t += 10
        for s in ("ingest", "worker", "publisher"):
            mon.progress(s)
        assert pinger.tick()
        assert systemd.receive() == {"WATCHDOG": "1", "STATUS": "stations=2/2 queue=0"}
    assert pings(metrics) == 3

    # the worker hangs (e.g. a CUDA call never returns) while ingest and publisher keep going
    with caplog.at_level(logging.WARNING, logger="streamer.notify"):
        for _ in range(4):
            clock.t += 16  # > stall_s since the worker's last progress
            mon.progress("ingest")
            mon.idle("publisher")
            assert not pinger.tick()
    msgs = systemd.pending()
    assert all("WATCHDOG" not in m for m in msgs)
    assert msgs == [{"STATUS": "stalled: worker"}]  # once per episode, not every tick
    assert pinger.stalled == ["worker"]
    assert pings(metrics) == 3
    assert sum("stalled stages: worker" in r.getMessage() for r in caplog.records) == 1

    # recovery resumes pings
    clock.t += 1
    mon.progress("worker")
    assert pinger.tick()
    assert systemd.receive()["WATCHDOG"] == "1"
    assert pings(metrics) == 4


def test_pinger_without_watchdog_only_refreshes_status(systemd: FakeSystemd, metrics) -> None:
    n = Notifier(systemd.environ())
    mon = HealthMonitor(["ingest"], stall_s=5, clock=FakeClock())
    pinger = WatchdogPinger(n, mon, metrics, status=lambda: "ok", status_interval_s=7)
    assert pinger.interval_s == 7
    assert not pinger.tick()
    assert systemd.receive() == {"STATUS": "ok"}
    assert pings(metrics) == 0


def test_pinger_outside_systemd_has_nothing_to_do(metrics) -> None:
    pinger = WatchdogPinger(Notifier({}), HealthMonitor(["a"], stall_s=5), metrics)
    assert pinger.interval_s is None
    pinger.run(threading.Event())  # returns at once
    assert not pinger.tick()


def test_broken_status_callback_does_not_stop_pings(systemd: FakeSystemd) -> None:
    def broken() -> str:
        raise RuntimeError("boom")

    n = Notifier(systemd.environ(watchdog_usec=1_000_000))
    pinger = WatchdogPinger(n, HealthMonitor(["a"], stall_s=5), status=broken)
    assert pinger.tick()
    assert systemd.receive() == {"WATCHDOG": "1"}


def test_run_thread_pings_until_stopped(systemd: FakeSystemd, metrics) -> None:
    n = Notifier(systemd.environ(watchdog_usec=40_000))  # ping every 20 ms
    mon = HealthMonitor(["a"], stall_s=60)
    pinger = WatchdogPinger(n, mon, metrics)
    stop = threading.Event()
    t = threading.Thread(target=pinger.run, args=(stop,))
    t.start()
    try:
        assert systemd.receive() == {"WATCHDOG": "1"}
        assert systemd.receive() == {"WATCHDOG": "1"}
    finally:
        stop.set()
        t.join(timeout=2)
    assert not t.is_alive()
    assert pings(metrics) >= 2


def test_run_async_pings_until_stopped(systemd: FakeSystemd, metrics) -> None:
    n = Notifier(systemd.environ(watchdog_usec=40_000))
    pinger = WatchdogPinger(n, HealthMonitor(["a"], stall_s=60), metrics)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pinger.run_async(stop))
        while pings(metrics) < 2:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=2)

    asyncio.run(main())
    assert systemd.receive() == {"WATCHDOG": "1"}
