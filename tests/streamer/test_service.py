"""The service wiring without sockets: acknowledgements reach SeedLink state, signals, start-up errors."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
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


# ------------------------------------------------------------------------- reliability of the state
def _tracker_with(packets):
    from streamer.records import PacketRef
    from streamer.seedlink_state import StateTracker

    tracker = StateTracker()
    refs = []
    for seq, end_ns in packets:
        ref = PacketRef("127.0.0.1:18000", "XX_STA", seq)
        tracker.record(ref, end_ns - 10**9, end_ns)
        refs.append(ref)
    return tracker, refs


def test_a_rejected_packet_does_not_freeze_the_station_state():
    from streamer.records import NS_PER_S

    t = window(0).start_ns
    # packet 2 carries a header time far in the future: rejected by the buffers, never in a window
    tracker, refs = _tracker_with([(1, t + NS_PER_S), (2, t + 10**6 * NS_PER_S), (3, t + 2 * NS_PER_S)])
    assert tracker.acknowledge("XX_STA", t + 5 * NS_PER_S) == 1  # held at the bad packet
    tracker.handled(refs[1])
    assert tracker.acknowledge("XX_STA", t + 5 * NS_PER_S) == 2
    assert tracker.acked("127.0.0.1:18000", "XX_STA").seq == 3


def test_a_dropped_pick_holds_the_state_back(settings, metrics):
    from streamer.picks import Pick
    from streamer.records import OutputItem

    svc = Service(settings, metrics, environ={}, role="ingest")
    svc.build()
    ws = [window(k) for k in range(4)]
    svc.acks.add(ws)
    t = ws[1].start_ns + 5 * 10**9
    pick = Pick("id", "XX.STA.", "P", t, 0.9, "denoised", "m", "v", "p", "v", 1, 0)
    svc._on_dropped([OutputItem.of_pick(pick)])
    svc.acks.published_through("XX.STA.", ws[3].end_ns)
    assert svc.acks.safe_ns("XX.STA.") <= t - 30 * 10**9  # a restart recomputes the pick's windows


def test_publisher_hands_dropped_items_to_the_caller(metrics):
    from streamer.config import RedisSettings
    from streamer.publish import RedisPublisher
    from streamer.records import OutputItem

    dropped: list = []
    pub = RedisPublisher(RedisSettings(url="redis://127.0.0.1:1/0", backlog_max_entries=3), metrics,
                         on_dropped=dropped.extend)
    pub.publish([OutputItem.marker(AckMarker({"XX.STA.": k})) for k in range(5)])
    assert [i.token.safe_ns["XX.STA."] for i in dropped] == [0, 1]
    assert pub.backlog_size == 3


def test_unused_packets_are_acknowledged_by_the_poll(settings, metrics):
    """A NET_STA whose records are all rejected (state-of-health channels) never appears in a
    marker; the poll still moves its state over the handled packets."""
    svc = Service(settings, metrics, environ={}, role="ingest")
    svc.build()
    tracker, refs = _tracker_with([(1, 10**18), (2, 10**18 + 10**9)])
    svc.tracker = tracker
    for ref in refs:
        tracker.handled(ref)
    svc._acknowledge_every_key()
    assert tracker.pending_count(station_key="XX_STA") == 0
    assert metrics.registry.get_sample_value("coldstream_seedlink_pending_packets", {"station": "XX_STA"}) == 0


def test_a_batch_of_markers_alone_does_not_claim_redis_is_back(metrics, caplog):
    import logging

    from streamer.config import RedisSettings
    from streamer.publish import RedisPublisher
    from streamer.records import OutputItem

    caplog.set_level(logging.INFO, logger="streamer.publish")
    pub = RedisPublisher(RedisSettings(url="redis://127.0.0.1:1/0", retry_max_s=0.1), metrics)
    pub._on_failure(ConnectionError("refused"))  # Redis has been unreachable
    pub.publish([OutputItem.marker(AckMarker({"XX.STA.": 1}))])
    assert pub.write_pending()
    assert not pub.connected
    assert "available again" not in caplog.text
