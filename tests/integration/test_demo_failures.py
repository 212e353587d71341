"""`coldstream demo` around a stand-in service: exit status and clean-up when the pipeline fails or
the user interrupts (a real embedded Redis; no models, no replay socket)."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.loaders import ServiceError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


class _CappedEvent(threading.Event):
    """An event whose waits last at most a few seconds (the demo's start-up wait, shortened)."""

    def wait(self, timeout: float | None = None) -> bool:
        return super().wait(2.0 if timeout is None else min(timeout, 2.0))


class FakeService:
    """What ``demo.run`` touches of :class:`streamer.service.Service`. ``fail_at_start``: ``run_async``
    raises before it is ready (as a metrics port in use does); ``ignore_stop``: it never stops."""

    def __init__(self, fail_at_start: bool = False, ignore_stop: bool = False) -> None:
        self.fail_at_start = fail_at_start
        self.ignore_stop = ignore_stop
        self.ready = _CappedEvent()
        self.stopped = threading.Event()
        self.exit_code = 0
        self.worker = None
        self.output = None
        self.stops = 0

    def request_stop(self) -> None:
        self.stops += 1

    async def run_async(self, install_signals: bool = False) -> int:
        if self.fail_at_start:
            raise ServiceError("cannot serve metrics on 127.0.0.1:9100: address in use")
        self.ready.set()
        while self.stops == 0 or self.ignore_stop:
            await asyncio.sleep(0.02)
        if self.stops > 1:  # a cancelled drain, as the real service reports it
            await asyncio.sleep(0.3)
            self.exit_code = 1
        self.stopped.set()
        return self.exit_code


class FakeReplay:
    def __init__(self, *_a: Any, fail: bool = False, **_k: Any) -> None:
        self.fail = fail
        self.stopped = False

    def start(self) -> "FakeReplay":
        if self.fail:
            raise OSError("replay port in use")
        return self

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    from streamer import replay
    from streamer.commands import demo

    state: dict[str, Any] = {"redis": [], "replays": [], "service": FakeService(), "replay_fail": False}

    class TrackedRedis(demo.RedisServer):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            state["redis"].append(self)

    def make_replay(*a: Any, **k: Any) -> FakeReplay:
        r = FakeReplay(*a, fail=state["replay_fail"], **k)
        state["replays"].append(r)
        return r

    monkeypatch.setattr(demo, "RedisServer", TrackedRedis)
    monkeypatch.setattr(replay, "ReplayServerThread", make_replay)
    monkeypatch.setattr(demo, "_make_service", lambda *_a: state["service"])
    monkeypatch.setattr(demo, "plot_traces", lambda path, *_a: path)
    state["args"] = argparse.Namespace(speed=1000.0, out_dir=tmp_path / "out", config=None,
                                       overrides=["service.drain_timeout_s=0.5"], no_live=True, log_level=None)
    return state


def _redis_left_running(state: dict[str, Any]) -> bool:
    return any(r.running for r in state["redis"])


def test_demo_service_failing_at_start_is_not_exit_0(harness, monkeypatch, capsys):
    import threading

    from streamer.commands import demo

    uncaught: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    harness["service"] = FakeService(fail_at_start=True)
    t0 = time.monotonic()
    rc = demo.run(harness["args"])
    assert rc != 0
    assert time.monotonic() - t0 < 10.0  # no replay-length wait for a service that is gone
    assert not _redis_left_running(harness)
    # the cause is said in one line, not left to a stray thread traceback
    assert "the service did not start: cannot serve metrics on 127.0.0.1:9100" in capsys.readouterr().out
    assert uncaught == []


def test_demo_service_not_stopping_is_not_exit_0(harness):
    from streamer.commands import demo

    harness["service"] = FakeService(ignore_stop=True)
    rc = demo.run(harness["args"])
    assert rc != 0
    assert not _redis_left_running(harness)


def test_demo_exception_stops_redis(harness):
    from streamer.commands import demo

    harness["replay_fail"] = True
    with pytest.raises(OSError):
        demo.run(harness["args"])
    assert not _redis_left_running(harness)


def test_demo_ctrl_c_while_loading_stops_redis(harness, monkeypatch):
    from streamer.commands import demo

    def interrupted(*_a: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_make_service", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.run(harness["args"])
    assert not _redis_left_running(harness)


def test_demo_ctrl_c_during_run_waits_for_service_and_is_not_exit_0(harness, monkeypatch):
    from streamer.commands import demo

    service_done_at_redis_stop: list[bool] = []
    service = harness["service"]

    def interrupted(self: Any, *_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt

    real_stop = demo.RedisServer.stop

    def stop(self: Any) -> None:
        service_done_at_redis_stop.append(service.stopped.is_set())
        real_stop(self)

    monkeypatch.setattr(demo.LiveView, "run_until", interrupted)
    monkeypatch.setattr(demo.RedisServer, "stop", stop)
    rc = demo.run(harness["args"])
    assert rc != 0
    assert service_done_at_redis_stop and service_done_at_redis_stop[0]  # the service ended before its Redis did
    assert not _redis_left_running(harness)
