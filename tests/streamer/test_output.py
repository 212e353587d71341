"""The output stage: stitching, picks, markers, idle flush (no sockets)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamer.ack import AckMarker
from streamer.config import load_settings
from streamer.output import OutputStage
from streamer.records import NS_PER_S

from service_helpers import N, S, T0, Sink, result, window

@pytest.fixture
def settings():
    return load_settings(environ={})


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
    assert sink.markers[-1].safe_ns == {"XX.STA.": T0 + (S - d) * NS_PER_S // 100}
    out.handle(result([window(1), window(2)]))
    assert [s.start_ns for s in sink.segments] == [T0 + k * 10 * NS_PER_S for k in range(3)]
    assert sink.markers[-1].safe_ns["XX.STA."] == T0 + (3 * S - d) * NS_PER_S // 100


def test_output_stage_without_probabilities_acks_at_the_stitched_end(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    out.handle(result([window(0), window(1)], probs=False), result_ids=("1-0", "2-0"))
    assert sink.markers[-1] == AckMarker({"XX.STA.": T0 + 2 * S * NS_PER_S // 100}, result_ids=("1-0", "2-0"))


def test_flush_emits_the_held_tail_and_acknowledges_up_to_the_next_window(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    out.handle(result([window(0), window(1)]))
    out.flush_all()
    segs = sink.segments
    assert segs[-1].end_ns == window(1).end_ns  # the tail of the last window is out
    assert sum(s.n_samples for s in segs) == 4000
    assert sink.markers[-1] == AckMarker({"XX.STA.": window(2).start_ns}, flushed=True)


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
            if any(m.flushed and "XX.QUIET." in m.safe_ns for m in sink.markers):
                break
    finally:
        out.stop(timeout_s=5)
    quiet = [s for s in sink.segments if s.station_id == "XX.QUIET."]
    assert sum(s.n_samples for s in quiet) == N  # its held tail was emitted
    assert "XX.QUIET." not in out.stations and "XX.BUSY." in out.stations


def test_the_output_thread_reports_progress_and_its_queue_is_bounded(settings, metrics):
    sink = Sink()
    beats: list[float] = []
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0,
                      on_progress=lambda: beats.append(time.monotonic()), queue_max_batches=2)
    assert not out.alive and out.idle
    out.submit(result([window(0)]))
    out.submit(result([window(1)]))
    assert out._events.full()  # a third submit would wait for the output thread
    out.start()
    try:
        deadline = time.monotonic() + 5
        while len(beats) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(beats) >= 2 and out.alive
    finally:
        out.stop(timeout_s=5)
    assert not out.alive


def test_a_failing_idle_flush_does_not_kill_the_output_thread(settings, metrics, monkeypatch):
    out = OutputStage(settings, metrics, Sink(), window_samples=N, sampling_rate_hz=100.0)
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(out, "flush_idle", broken)
    out.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 2 and out.alive  # it failed twice and kept running
    finally:
        out.stop(timeout_s=5)


def _covered(segments) -> list[int]:
    """Absolute sample indices of the segments, in publication order."""
    return [i for s in segments for i in range(s.start_sample, s.end_sample)]


def test_a_flushed_tail_is_never_published_twice(settings, metrics):
    """A flush (drain, SeedLink outage) publishes the held tail; when windows resume (or a restart
    replays them) the samples already out are not published again in another version."""
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    out.handle(result([window(0), window(1)]))
    out.flush_all()
    end = sink.segments[-1].end_sample
    out.handle(result([window(2), window(3), window(4)]))  # the next run starts inside the flushed tail
    out.flush_all()
    idx = _covered(sink.segments)
    assert len(idx) == len(set(idx)), "a sample was published twice"
    assert idx == sorted(idx) and idx[-1] + 1 == window(4).end_ns * 100 // NS_PER_S
    assert metrics.registry.get_sample_value("coldstream_segments_trimmed_samples_total") == end - window(2).start_ns * 100 // NS_PER_S

    # after a restart: the published end comes from Redis ({prefix}:latest)
    sink2 = Sink()
    again = OutputStage(settings, metrics, sink2, window_samples=N, sampling_rate_hz=100.0)
    again.seed_published_ends({"XX.STA.": window(4).end_ns})
    again.handle(result([window(3), window(4), window(5)]))
    assert all(s.start_sample >= window(4).end_ns * 100 // NS_PER_S for s in sink2.segments)


def test_a_window_a_clock_jump_back_behind_ends_the_run_and_finishes_its_windows(settings, metrics):
    """A station whose clock jumped back two days sends windows far behind its run: they are not
    dropped as late while the old run's tail waits for ever; the old run ends (its tail published, a
    flushed marker of the old time base, so its windows are done for acknowledgement), and the new
    run's samples, already published by the old time base, are not published again."""
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    old = [window(k) for k in range(3)]
    out.handle(result(old))
    assert sink.markers[-1].safe_ns["XX.STA."] < old[-1].end_ns  # the tail is held
    back = -2 * 86_400 // 10
    new = [window(back + k) for k in range(3)]
    out.handle(result(new))
    flushed = [m for m in sink.markers if m.flushed]
    assert flushed == [AckMarker({"XX.STA.": old[-1].start_ns + 10 * NS_PER_S}, flushed=True)]
    assert max(s.end_ns for s in sink.segments) == old[-1].end_ns  # the old tail is out
    assert sink.markers[-1].safe_ns["XX.STA."] < old[0].start_ns  # the new run's time
    assert metrics.registry.get_sample_value("coldstream_stitch_late_windows_total") in (None, 0.0)
    assert min(s.start_ns for s in sink.segments) == old[0].start_ns  # the new run's samples: trimmed
    assert metrics.registry.get_sample_value("coldstream_segments_trimmed_samples_total") > 0


def test_an_instrument_change_starts_a_new_run_with_its_own_labels(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    hh = [window(k) for k in range(3)]
    hn = [window(k, value=7.0) for k in range(3, 6)]
    for w in hn:
        w.channels = ("HNE", "HNN", "HNZ")
    out.handle(result(hh))
    out.handle(result(hn))
    out.flush_all()
    segs = sink.segments
    idx = _covered(segs)
    assert len(idx) == len(set(idx))
    for s in segs:
        labels = {c[:2] for c in s.channels}
        assert len(labels) == 1
        values = set(np.unique(np.round(s.data, 3)))
        # no blend of the two instruments: HH windows are 0.5 (value 1 x 0.5), HN 3.5
        assert values <= {0.5} if labels == {"HH"} else values <= {3.5}
    assert {c[:2] for s in segs for c in s.channels} == {"HH", "HN"}


def test_flush_and_stop_never_hang_on_a_dead_output_thread(settings, metrics):
    out = OutputStage(settings, metrics, Sink(), window_samples=N, sampling_rate_hz=100.0, queue_max_batches=1)
    out.start()
    out.stop(timeout_s=5)
    assert not out.alive
    t0 = time.monotonic()
    assert out.flush_all(timeout_s=1.0) is False
    out.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 3


# --------------------------------------------------------------------------- early-warning lifecycle
def _fast_result(station: str, end_ns: int, peak_at_ns: int | None, trigger_ns: int):
    """A fast-path batch: one trailing window ending at ``end_ns`` with a P maximum at ``peak_at_ns``."""
    from streamer.records import Window

    start = end_ns - 30 * NS_PER_S
    w = Window(station, start, 100.0, np.ones((3, N), np.float32), np.ones((3, N), bool), end_ns, ("HHE", "HHN", "HHZ"))
    w.meta.update(fast=True, triggers_ns=[trigger_ns])
    r = result([w])
    r.probs[:] = 0.0
    if peak_at_ns is not None:
        i = round((peak_at_ns - start) * 100 / NS_PER_S)
        idx = np.arange(N)
        r.probs[0, 0] = 0.9 * np.exp(-0.5 * ((idx - i) / 8.0) ** 2)
    r.steps = 1
    return r


def test_a_provisional_pick_the_final_path_does_not_confirm_is_retracted(settings, metrics):
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=100.0)
    onset = T0 + 45 * NS_PER_S
    out.handle_fast(_fast_result("XX.STA.", onset + NS_PER_S, onset, onset))
    (prov,) = [i.pick for i in sink.items if i.kind == "pick"]
    assert (prov.status, prov.update, prov.time_ns) == ("provisional", 0, onset)
    assert prov.details is not None and prov.details.newest_sample_ns == onset + NS_PER_S - NS_PER_S // 100
    # the final path sees no pick there (its probability is flat): once it has judged past the onset
    # plus the tolerance, the provisional pick is retracted, once, with the same pick_id
    for k in range(8):
        out.handle(result([window(k)]))
    picks = [i.pick for i in sink.items if i.kind == "pick"]
    assert [(p.pick_id, p.status, p.update, p.reason) for p in picks] == [
        (prov.pick_id, "provisional", 0, ""), (prov.pick_id, "retracted", 1, "not_confirmed"),
    ]
    # a later fast window on samples the final path has judged reports nothing
    out.handle_fast(_fast_result("XX.STA.", onset + 2 * NS_PER_S, onset, onset))
    assert len([i for i in sink.items if i.kind == "pick"]) == 2
    assert metrics.registry.get_sample_value("coldstream_eew_picks_total", {"phase": "P", "status": "retracted"}) == 1
