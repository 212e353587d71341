"""Service pieces without sockets: the acknowledgement rule, the output stage, result encoding, signals."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from streamer.config import load_settings
from streamer.records import NS_PER_S, Window
from streamer.service import (
    AckBook,
    OutputStage,
    Service,
    decode_result,
    encode_result,
    station_key,
)
from streamer.worker import BatchResult

N, S = 3000, 1000
T0 = 1_700_000_000 * NS_PER_S  # on the 10 s grid


def window(k: int, station: str = "XX.STA.", value: float = 1.0) -> Window:
    data = np.full((3, N), value, np.float32)
    return Window(station, T0 + k * 10 * NS_PER_S, 100.0, data, np.ones((3, N), bool), T0 + (k * 10 + 30) * NS_PER_S,
                  ("HHE", "HHN", "HHZ"))


def result(windows: list[Window], probs: bool = True) -> BatchResult:
    den = np.stack([w.data * 0.5 for w in windows])
    p = None
    if probs:
        p = np.zeros_like(den)
        p[:, 2] = 1.0
    return BatchResult(windows, den, p, None, 2, 2, None, 1.0, 1.0, model="m", model_version="v1",
                       extra={"picker": "PhaseNet/original", "picker_version": "3"})


class Sink:
    def __init__(self) -> None:
        self.items: list = []

    def __call__(self, items: list) -> None:
        self.items.extend(items)

    @property
    def markers(self) -> list:
        return [i.token for i in self.items if i.kind == "marker"]

    @property
    def segments(self) -> list:
        return [i.segment for i in self.items if i.kind == "segment"]


@pytest.fixture
def settings():
    return load_settings(environ={})


# ---------------------------------------------------------------------------------------- AckBook
def test_station_key():
    assert station_key("NC.CMB.00") == "NC_CMB"
    assert station_key("XX.DEM01.") == "XX_DEM01"


def test_safe_time_is_start_of_oldest_unpublished_window():
    book = AckBook()
    ws = [window(k) for k in range(4)]
    book.add(ws)
    assert book.safe_ns("XX.STA.") == ws[0].start_ns
    # outputs before the end of window 1 published: windows 0 and 1 done
    book.published_through("XX.STA.", ws[1].end_ns)
    assert book.safe_ns("XX.STA.") == ws[2].start_ns
    # shed windows no longer hold the safe time back
    book.drop([ws[2]])
    assert book.safe_ns("XX.STA.") == ws[3].start_ns
    # a flush publishes everything of the windows before the given time
    book.published_through("XX.STA.", ws[3].start_ns + 10 * NS_PER_S, flushed=True)
    assert book.safe_ns("XX.STA.") == ws[3].start_ns + 10 * NS_PER_S
    assert book.safe_ns("XX.OTHER.") is None


def test_safe_by_key_takes_the_minimum_over_location_codes():
    book = AckBook()
    book.add([window(3, "XX.STA.00"), window(1, "XX.STA.10"), window(0, "XX.B.")])
    safe = book.safe_by_key(["XX.STA.00", "XX.STA.10", "XX.B.", "XX.NONE."])
    assert safe == {"XX_STA": window(1).start_ns, "XX_B": window(0).start_ns}


# ------------------------------------------------------------------------------------ OutputStage
def test_output_stage_stitches_queues_outputs_then_a_marker(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    out.handle(result([window(0)]))
    # after window 0 the first stride is final (overlap-add hold = one stride); picks stitcher too
    assert [s.start_ns for s in sink.segments] == [T0]
    assert sink.segments[0].n_samples == S
    np.testing.assert_allclose(sink.segments[0].data, 0.5, rtol=1e-6)
    assert sink.items[-1].kind == "marker"
    # probabilities need d more samples of right context before the detector is done with them
    d = out.detector.latency_samples
    assert sink.markers[-1]["safe"] == {"XX.STA.": T0 + (S - d) * NS_PER_S // 100}
    out.handle(result([window(1), window(2)]))
    assert [s.start_ns for s in sink.segments] == [T0 + k * 10 * NS_PER_S for k in range(3)]
    assert sink.markers[-1]["safe"]["XX.STA."] == T0 + (3 * S - d) * NS_PER_S // 100


def test_output_stage_without_probabilities_acks_at_the_stitched_end(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    out.handle(result([window(0), window(1)], probs=False), {"results": ["1-0", "2-0"]})
    assert sink.markers[-1] == {"safe": {"XX.STA.": T0 + 2 * S * NS_PER_S // 100}, "results": ["1-0", "2-0"]}


def test_flush_emits_the_held_tail_and_acknowledges_up_to_the_next_window(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    out.handle(result([window(0), window(1)]))
    out.flush_all()
    segs = sink.segments
    assert segs[-1].end_ns == window(1).end_ns  # the tail of the last window is out
    assert sum(s.n_samples for s in segs) == 4000
    assert sink.markers[-1] == {"safe": {"XX.STA.": window(2).start_ns}, "flushed": True}


def test_picks_from_stacked_probabilities_carry_provenance(settings, metrics):
    sink = Sink()
    picks = []
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0, on_pick=picks.append)
    ws = [window(k) for k in range(4)]
    res = result(ws)
    assert res.probs is not None
    res.probs[:, 0] = 0.0
    # a P peak at absolute second 25 + 15 = 40 s after T0, seen by every window that covers it
    for i, w in enumerate(ws):
        idx = 4000 - i * 1000
        if 0 <= idx < N:
            res.probs[i, 0, idx - 50 : idx + 51] = np.hanning(101) * 0.9
    out.handle(res)
    out.flush_all()
    got = [i.pick for i in sink.items if i.kind == "pick"]
    assert len(got) == 1 and got == picks
    p = got[0]
    assert (p.phase, p.time_ns, p.source) == ("P", T0 + 40 * NS_PER_S, "denoised")
    assert (p.denoiser, p.denoiser_version, p.picker) == ("m", "v1", "PhaseNet/original")


# ----------------------------------------------------------------------------------- scale-out codec
def test_result_encoding_round_trip():
    ws = [window(0, value=3.0), window(1, value=4.0)]
    res = result(ws)
    res.raw_probs = res.probs.copy() * 0.5 if res.probs is not None else None
    enc = encode_result(ws[1], res, 1)
    assert enc.data.shape == (9, N) and enc.meta["rows"] == ["denoised", "probs", "raw_probs"]
    back = decode_result(enc)
    assert back.windows[0].window_id == ws[1].window_id
    np.testing.assert_array_equal(back.denoised[0], res.denoised[1])
    assert back.probs is not None and back.raw_probs is not None
    np.testing.assert_array_equal(back.raw_probs[0], res.raw_probs[1])
    assert (back.steps, back.model, back.extra["picker"]) == (2, "m", "PhaseNet/original")


# ----------------------------------------------------------------------------------- acks -> SeedLink
class FakeTracker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def acknowledge(self, key: str, safe_ns: int) -> int:
        self.calls.append((key, safe_ns))
        return 1


def test_publisher_acks_advance_seedlink_state_only_behind_published_windows(settings, metrics):
    from streamer.publish import OutputItem

    svc = Service(settings, metrics, environ={})
    svc.tracker = FakeTracker()
    ws = [window(k) for k in range(3)]
    svc.acks.add(ws)
    svc._on_acked([OutputItem.marker({"safe": {"XX.STA.": ws[0].end_ns}})])
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


def test_a_station_that_goes_quiet_is_flushed_while_others_keep_flowing(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0, idle_flush_s=0.3)
    out.start()
    try:
        out.submit(result([window(0, "XX.QUIET."), window(0, "XX.BUSY.")]))
        deadline = time.monotonic() + 5
        k = 1
        while time.monotonic() < deadline:
            out.submit(result([window(k, "XX.BUSY.")]))
            k += 1
            time.sleep(0.1)
            if any(m.get("flushed") and "XX.QUIET." in m["safe"] for m in sink.markers):
                break
    finally:
        out.stop(timeout_s=5)
    quiet = [s for s in sink.segments if s.station_id == "XX.QUIET."]
    assert sum(s.n_samples for s in quiet) == N  # its held tail was emitted
    assert "XX.QUIET." not in out.stations and "XX.BUSY." in out.stations
