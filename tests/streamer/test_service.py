"""The service wiring without sockets: acknowledgements reach SeedLink state, signals, start-up errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streamer.ack import AckMarker
from streamer.config import load_settings
from streamer.service import Service

from service_helpers import window

@pytest.fixture
def settings():
    return load_settings(environ={})


# ----------------------------------------------------------------------------------- acks -> SeedLink
class FakeTracker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def acknowledge(self, key: str, safe_ns: int) -> int:
        self.calls.append((key, safe_ns))
        return 1


def test_publisher_acks_advance_seedlink_state_only_behind_published_windows(settings, metrics):
    from streamer.records import OutputItem

    svc = Service(settings, metrics, environ={})
    svc.tracker = FakeTracker()
    ws = [window(k) for k in range(3)]
    svc.acks.add(ws)
    svc._on_acked([OutputItem.marker(AckMarker({"XX.STA.": ws[0].end_ns}))])
    assert svc.tracker.calls == [("XX_STA", ws[1].start_ns)]


def test_second_stop_request_cancels(settings, metrics):
    svc = Service(settings, metrics, environ={})

    async def main() -> tuple[bool, bool]:
        svc._loop = asyncio.get_running_loop()
        svc._stop, svc._cancel = asyncio.Event(), asyncio.Event()
        t = threading.Thread(target=svc.request_stop)
        t.start()
        t.join()
        await asyncio.sleep(0.05)
        first = (svc._stop.is_set(), svc._cancel.is_set())
        svc.request_stop()
        await asyncio.sleep(0)
        return first + (svc._cancel.is_set(),)  # type: ignore[return-value]

    assert asyncio.run(main()) == (True, False, True)


# ------------------------------------------------------------------------------------- coldstream run
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["worker.batch_sizes=4"], "worker.batch_sizes: unknown key"),
        (["model.weights=\"missing/denoiser.pt\""], "cannot load the denoiser"),
    ],
)
def test_run_fails_fast_with_a_clear_message(overrides, message, capsys, monkeypatch):
    import argparse

    from streamer.commands import run as run_cmd

    monkeypatch.delenv("COLDSTREAM_SHARED_DIR", raising=False)
    args = argparse.Namespace(config=None, overrides=overrides, log_level="INFO")
    assert run_cmd.run(args) == 2
    assert message in capsys.readouterr().err
