"""The pick lifecycle through the output stage: once the final path decided an onset, a later
trailing window of the same onset reports nothing (no second identity, no retraction of a
confirmed pick)."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config import load_settings
from streamer.output import OutputStage
from streamer.records import NS_PER_S, Window

from service_helpers import N, T0, Sink, result, window

RATE = 100.0


@pytest.fixture
def settings():  # type: ignore[no-untyped-def]
    return load_settings(environ={})


def _with_p_peak(r, windows: list[Window], peak_ns: int):  # type: ignore[no-untyped-def]
    """``r`` with a P maximum at ``peak_ns`` in every window that holds it."""
    r.probs[:] = 0.0
    idx = np.arange(N)
    for k, w in enumerate(windows):
        i = round((peak_ns - w.start_ns) * RATE / NS_PER_S)
        r.probs[k, 0] = 0.9 * np.exp(-0.5 * ((idx - i) / 8.0) ** 2)
    return r


def _fast(station: str, end_ns: int, peak_ns: int, trigger_ns: int):  # type: ignore[no-untyped-def]
    start = end_ns - 30 * NS_PER_S
    w = Window(station, start, RATE, np.ones((3, N), np.float32), np.ones((3, N), bool), end_ns, ("HHE", "HHN", "HHZ"))
    w.meta.update(fast=True, triggers_ns=[trigger_ns])
    return _with_p_peak(result([w]), [w], peak_ns)


def _grid(k: int, peak_ns: int):  # type: ignore[no-untyped-def]
    w = window(k)
    return _with_p_peak(result([w]), [w], peak_ns)


def test_a_trailing_window_after_the_final_pick_reopens_nothing(settings, metrics) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=RATE)
    onset = T0 + 18_800_000_000  # 0.2 s before the sample the final path judges up to after window 1
    out.handle_fast(_fast("XX.STA.", onset + NS_PER_S, onset, onset))
    out.handle(_grid(0, onset))
    out.handle(_grid(1, onset))
    picks = [i.pick for i in sink.items if i.kind == "pick"]
    assert [(p.status, p.update) for p in picks] == [("provisional", 0), ("final", 1)]
    pick_id = picks[0].pick_id
    assert picks[1].pick_id == pick_id
    # a trailing window of the station still holds the onset (a second trigger re-armed it): the final
    # path has decided it, so nothing is reported, and nothing is retracted later
    out.handle_fast(_fast("XX.STA.", onset + 3 * NS_PER_S, onset, onset))
    for k in range(2, 6):
        out.handle(_grid(k, onset))
    picks = [i.pick for i in sink.items if i.kind == "pick"]
    assert [(p.pick_id, p.status) for p in picks] == [(pick_id, "provisional"), (pick_id, "final")]
    count = metrics.registry.get_sample_value
    assert count("coldstream_eew_picks_total", {"phase": "P", "status": "retracted"}) is None
    assert out.lifecycle is not None and out.lifecycle.open_onsets() == []


def test_an_onset_in_windows_the_final_path_never_saw_is_not_retracted_as_judged(settings, metrics) -> None:  # type: ignore[no-untyped-def]
    # grid windows 2-5 were shed under overload: the final path never judged [T0 + 20 s, T0 + 60 s)
    sink = Sink()
    out = OutputStage(settings, metrics, sink, window_samples=N, sampling_rate_hz=RATE)
    onset = T0 + 45 * NS_PER_S
    out.handle(_grid(0, onset))
    out.handle(_grid(1, onset))
    out.handle_fast(_fast("XX.STA.", onset + NS_PER_S, onset, onset))
    for k in range(6, 12):
        out.handle(result([window(k)]))
    picks = [i.pick for i in sink.items if i.kind == "pick"]
    assert [(p.status, p.reason) for p in picks if p.status == "retracted"] == []
    # no decision: the onset stays open (eew.retract_after_s retracts it), also when the run ends
    out._flush_all()
    assert out.lifecycle is not None and [p.time_ns for p in out.lifecycle.open_onsets()] == [onset]
