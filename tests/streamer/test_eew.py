"""The early-warning fast path's pure pieces: trigger, candidates (no edge picks), amplitudes from a
known response (against ObsPy's own processing and the analytic values), the lifecycle, the worker's
scheduling of fast windows, and the pick schema's lifecycle fields."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from streamer.config import EewSettings
from streamer.eew import Lifecycle, StaLta, fast_candidates, first_motion, onset_amplitudes, snr_db
from streamer.picks import Pick, PickDetails
from streamer.records import Window
from streamer.schema import decode_pick, encode_pick

RATE = 100.0
NS = 1_000_000_000


def _pick(t_ns: int, status: str = "provisional", amps: int = 0, station: str = "XX.STA.", phase: str = "P") -> Pick:
    details = PickDetails(amplitudes=tuple((k, 1e-6 * k, 1e-5, 1e-4, 0.5) for k in range(1, amps + 1)))
    return Pick("id-%d" % t_ns, station, phase, t_ns, 0.8, "denoised", "d", "1", "PhaseNet", "1", 1,
                time.time_ns(), status=status, details=details)


# ------------------------------------------------------------------------------------- trigger
def test_sta_lta_triggers_on_an_onset_and_not_on_noise() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 100, int(60 * RATE))
    trig = StaLta(RATE, sta_s=0.5, lta_s=10.0, ratio=4.0, detrigger=1.5)
    assert trig.feed(0, noise) == []  # stationary noise: the ratio stays near 1

    x = rng.normal(0, 100, int(40 * RATE))
    onset = int(30 * RATE)
    t = np.arange(x.size - onset) / RATE
    x[onset:] += 3000 * np.sin(2 * np.pi * 5 * t) * np.exp(-t / 3)
    trig = StaLta(RATE, sta_s=0.5, lta_s=10.0, ratio=4.0, detrigger=1.5)
    # fed in records of 3 s, as a SeedLink client gets them
    found = []
    for i in range(0, x.size, 300):
        found += trig.feed(round(i * NS / RATE), x[i:i + 300])
    assert len(found) == 1
    assert 0 <= found[0] - 30 * NS < 0.3 * NS


def test_sta_lta_restarts_after_a_gap() -> None:
    rng = np.random.default_rng(2)
    trig = StaLta(RATE, lta_s=10.0)
    trig.feed(0, rng.normal(0, 1, 1500))
    # 100 s later (a gap): the warm-up starts again, so a burst at once cannot trigger
    burst = rng.normal(0, 50, 300)
    assert trig.feed(100 * NS, burst) == []


# ---------------------------------------------------------------------------------- candidates
def _probs(peak_index: int, n: int = 3000) -> np.ndarray:
    i = np.arange(n)
    p = np.zeros((3, n), np.float32)
    p[0] = 0.9 * np.exp(-0.5 * ((i - peak_index) / 8.0) ** 2)
    return p


def test_candidates_need_data_after_the_maximum() -> None:
    s = EewSettings()
    mask = np.ones((3, 3000), bool)
    start = 1000 * NS
    trigger = [start + round(2950 * NS / RATE)]
    # a maximum 0.3 s before the right edge: shaped by the edge, not a pick
    assert fast_candidates(_probs(2970), mask, s, RATE, trigger, start) == []
    # 0.5 s of data after it: a provisional pick
    (c,) = fast_candidates(_probs(2949), mask, s, RATE, trigger, start)
    assert (c.phase, c.index) == ("P", 2949) and c.probability == pytest.approx(0.9)
    assert 0.05 < c.uncertainty_s < 0.2  # half the width at half height of a sigma-8-sample peak


def test_p_candidates_need_a_trigger_near_them() -> None:
    s = EewSettings()
    mask = np.ones((3, 3000), bool)
    start = 0
    far = [round(2000 * NS / RATE)]  # 9.5 s before the maximum
    assert fast_candidates(_probs(2950), mask, s, RATE, far, start) == []
    assert fast_candidates(_probs(2950), mask, s, RATE, [], start) == []
    # masked samples count as 0: no maximum where there is no data
    masked = mask.copy()
    masked[:, 2900:] = False
    assert fast_candidates(_probs(2950), masked, s, RATE, [round(2950 * NS / RATE)], start) == []


# ---------------------------------------------------------------------------------- amplitudes
def _onset_counts(kind: str, amplitude: float, f_hz: float, sensitivity: float, onset: int, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(n - onset) / RATE
    x = np.zeros(n)
    x[onset:] = amplitude * np.sin(2 * np.pi * f_hz * t) * (1 - np.exp(-t / 0.05))
    x += rng.normal(0, amplitude * 1e-3, n)  # a little noise, far below the signal
    return x * sensitivity + 1234.0  # counts with an offset, as digitisers send


def _obspy_expected(counts: np.ndarray, onset: int, sensitivity: float, units: str) -> list[tuple[float, float, float, float]]:
    """Pd, Pv, Pa, tau_c over 1, 2, 3 s, computed with ObsPy's trace processing (an independent
    implementation of the same recipe: remove the sensitivity, causal 2-pole 0.075 Hz high-pass,
    integrate or differentiate)."""
    from obspy import Trace

    tr = Trace(counts.astype(np.float64).copy(), header={"sampling_rate": RATE})
    tr.data = tr.data - tr.data[onset - 500:onset].mean()
    tr.data = tr.data / sensitivity
    tr.filter("highpass", freq=0.075, corners=2, zerophase=False)
    if units == "M/S":
        v = tr.copy()
        a = tr.copy().differentiate()
    else:
        a = tr.copy()
        v = tr.copy().integrate().filter("highpass", freq=0.075, corners=2, zerophase=False)
    d = v.copy().integrate().filter("highpass", freq=0.075, corners=2, zerophase=False)
    out = []
    for sec in (1, 2, 3):
        sl = slice(onset, onset + int(sec * RATE))
        dd, vv, aa = d.data[sl], v.data[sl], a.data[sl]
        tau_c = 2 * math.pi * math.sqrt(np.sum(dd ** 2) / np.sum(vv ** 2))
        out.append((np.abs(dd).max(), np.abs(vv).max(), np.abs(aa).max(), tau_c))
    return out


@pytest.mark.parametrize("units", ["M/S", "M/S**2"])
def test_amplitudes_from_a_known_response_match_obspy_and_the_analytic_values(units: str) -> None:
    sensitivity = 6.0e8 if units == "M/S" else 4.0e5
    amplitude, f_hz, onset = 2e-5, 2.0, 2500
    counts = _onset_counts(units, amplitude, f_hz, sensitivity, onset)
    valid = np.ones(counts.size, bool)
    got = onset_amplitudes(counts, valid, onset, RATE, sensitivity, units)
    assert [a.seconds for a in got] == [1, 2, 3]
    want = _obspy_expected(counts, onset, sensitivity, units)
    for a, (pd, pv, pa, tc) in zip(got, want):
        assert a.pd_m == pytest.approx(pd, rel=0.03)
        assert a.pv_m_s == pytest.approx(pv, rel=0.03)
        assert a.pa_m_s2 == pytest.approx(pa, rel=0.03)
        assert a.tau_c_s == pytest.approx(tc, rel=0.05)
    w = 2 * math.pi * f_hz
    three = got[-1]
    if units == "M/S":  # the analytic values of a sine of velocity
        assert three.pv_m_s == pytest.approx(amplitude, rel=0.05)
        assert three.pa_m_s2 == pytest.approx(amplitude * w, rel=0.08)
    else:
        assert three.pa_m_s2 == pytest.approx(amplitude, rel=0.05)
        # velocity A/w (1 - cos wt): between the oscillation's A/w and 2A/w (the high-pass takes part
        # of the offset away)
        assert amplitude / w < three.pv_m_s < 2 * amplitude / w


def test_amplitudes_only_for_seconds_that_arrived_and_known_units() -> None:
    counts = _onset_counts("M/S", 1e-5, 3.0, 6e8, 2500)
    valid = np.ones(counts.size, bool)
    got = onset_amplitudes(counts[:2500 + 150], valid[:2650], 2500, RATE, 6e8, "M/S")
    assert [a.seconds for a in got] == [1]  # 1.5 s after the onset: only the first second
    assert onset_amplitudes(counts, valid, 2500, RATE, 6e8, "COUNTS") == []
    assert onset_amplitudes(counts, valid, 2500, RATE, 0.0, "M/S") == []
    hole = valid.copy()
    hole[2550] = False
    assert [a.seconds for a in onset_amplitudes(counts, hole, 2500, RATE, 6e8, "M/S")] == []


def test_first_motion_and_snr() -> None:
    counts = _onset_counts("M/S", 1e-5, 3.0, 6e8, 2500)
    valid = np.ones(counts.size, bool)
    assert first_motion(counts, valid, 2500, RATE) == "U"
    assert first_motion(-counts, valid, 2500, RATE) == "D"
    assert snr_db(counts, valid, 2500, RATE) > 40
    flat = np.random.default_rng(0).normal(0, 1, 3000)
    assert first_motion(flat, valid, 2500, RATE) in ("", "U", "D")
    assert snr_db(flat, valid, 2500, RATE) == pytest.approx(0, abs=2)


# ----------------------------------------------------------------------------------- lifecycle
def test_lifecycle_provisional_updates_then_final_with_one_identity() -> None:
    life = Lifecycle(EewSettings(match_tolerance_s=0.5))
    first = life.provisional(_pick(100 * NS))
    assert first is not None and (first.status, first.update) == ("provisional", 0)
    assert life.provisional(_pick(100 * NS + 20_000_000)) is None  # the same onset, nothing new
    upd = life.provisional(_pick(100 * NS + 10_000_000, amps=1))
    assert upd is not None and (upd.pick_id, upd.update, upd.time_ns) == (first.pick_id, 1, 100 * NS)
    final = life.final(_pick(100 * NS + 30_000_000, status="final"))
    assert (final.pick_id, final.status, final.update) == (first.pick_id, "final", 2)
    assert final.time_ns == 100 * NS + 30_000_000  # the final path refines the time
    assert final.details is not None and len(final.details.amplitudes) == 1  # amplitudes carried over
    other = life.final(_pick(200 * NS, status="final"))
    assert (other.status, other.update) == ("final", 0)  # no provisional report: a pick of its own
    assert life.open_onsets() == []


def test_lifecycle_retracts_what_the_final_path_judged_without_a_pick() -> None:
    life = Lifecycle(EewSettings(match_tolerance_s=0.5, retract_after_s=60))
    p = life.provisional(_pick(100 * NS))
    s = life.provisional(_pick(104 * NS, phase="S"))
    assert p is not None and s is not None
    assert life.judged("XX.STA.", 100 * NS) == []  # not past the onset (plus the tolerance) yet
    (r,) = life.judged("XX.STA.", 101 * NS)
    assert (r.pick_id, r.status, r.update, r.reason) == (p.pick_id, "retracted", 1, "not_confirmed")
    assert life.judged("XX.STA.", 101 * NS) == []  # once
    # no final decision within retract_after_s (the station went quiet): retracted on the monotonic clock
    assert life.expire(time.monotonic()) == []
    (t,) = life.expire(time.monotonic() + 61)
    assert (t.pick_id, t.reason) == (s.pick_id, "timeout")


# --------------------------------------------------------------------------------------- worker
def test_worker_serves_fast_windows_first_but_never_starves_the_final_path(metrics) -> None:
    from test_worker import FakeDenoiser, FakePicker, make_window

    from streamer.worker import Worker

    fast_results, final_results = [], []
    w = Worker(FakeDenoiser(), metrics, final_results.append, batch_size=2, max_wait_ms=0, picker=FakePicker(),
               on_fast_result=fast_results.append, fast_steps=1, fast_max_age_s=1e6)
    now = time.time_ns()
    w.submit([make_window(i, arrival_ns=now) for i in range(4)])
    fasts = []
    for i in range(4):
        fw = make_window(100 + i, arrival_ns=now, station=f"XX.F{i}.")
        fw.meta["fast"] = True
        fasts.append(fw)
    w.submit_fast(fasts)
    kinds = []
    for _ in range(4):
        r = w.process_once(0.1)
        assert r is not None
        kinds.append("fast" if r.extra.get("fast") else "final")
    assert kinds == ["fast", "final", "fast", "final"]
    assert all(r.steps == 1 for r in fast_results)
    assert metrics.registry.get_sample_value("coldstream_eew_windows_total") == 4


def test_worker_sheds_superseded_and_stale_fast_windows_with_a_count(metrics) -> None:
    from test_worker import FakeDenoiser, FakePicker, make_window

    from streamer.worker import Worker

    got = []
    w = Worker(FakeDenoiser(), metrics, lambda r: None, batch_size=8, max_wait_ms=0, picker=FakePicker(),
               on_fast_result=got.append, fast_max_age_s=2.0)
    now = time.time_ns()

    def fast(i: int, station: str, arrival: int) -> Window:
        fw = make_window(i, arrival_ns=arrival, station=station)
        fw.meta["fast"] = True
        return fw

    w.submit_fast([fast(1, "XX.A.", now), fast(2, "XX.A.", now)])  # the newer replaces the older
    w.submit_fast([fast(3, "XX.B.", now - 10 * NS)])  # 10 s old: too late to help
    r = w.process_once(0.1)
    assert r is not None and [x.station_id for x in r.windows] == ["XX.A."]
    shed = metrics.registry.get_sample_value
    assert shed("coldstream_eew_windows_shed_total", {"reason": "superseded"}) == 1
    assert shed("coldstream_eew_windows_shed_total", {"reason": "age"}) == 1


# --------------------------------------------------------------------------------------- schema
def test_pick_schema_round_trips_the_lifecycle_and_early_warning_fields() -> None:
    d = PickDetails(latitude_deg=47.1, longitude_deg=11.2, elevation_m=520.0, time_uncertainty_s=0.05,
                    polarity="U", snr_db=23.4, amplitudes=((1, 1e-6, 2e-5, 3e-4, 0.4), (2, 2e-6, 3e-5, 4e-4, 0.5)),
                    newest_sample_ns=5 * NS, newest_arrival_ns=6 * NS, onset_arrival_ns=4 * NS, inference_ns=7 * NS)
    p = Pick("abc", "XX.STA.", "P", 3 * NS, 0.8, "denoised", "d", "1", "PhaseNet", "1", 1, 8 * NS,
             status="provisional", update=2, details=d)
    fields = encode_pick(p, published_ns=9 * NS)
    assert fields["pd_2s_m"] and "pd_3s_m" not in fields and fields["amplitude_seconds"] == "2"
    back = decode_pick({k.encode(): v.encode() for k, v in fields.items()})
    assert (back.status, back.update, back.details.polarity) == ("provisional", 2, "U")
    assert back.details.latitude_deg == pytest.approx(47.1)
    assert back.details.amplitudes[1][1] == pytest.approx(2e-6)
    assert back.details.onset_arrival_ns == 4 * NS
    # without an inventory the coordinates are empty strings
    bare = encode_pick(Pick("x", "XX.STA.", "P", NS, 0.5, "raw", "", "", "p", "1", 0, NS))
    assert bare["latitude_deg"] == "" and bare["status"] == "final"
    # an entry written before the lifecycle fields existed reads as a final pick, update 0
    old = {k: v for k, v in bare.items() if k not in ("status", "update", "reason", "latitude_deg")}
    assert (decode_pick(old).status, decode_pick(old).update) == ("final", 0)


def test_worker_serves_stations_without_a_first_report_first(metrics) -> None:
    from test_worker import FakeDenoiser, FakePicker, make_window

    from streamer.worker import Worker

    reported = {"XX.R0.", "XX.R1.", "XX.R2."}
    got = []
    w = Worker(FakeDenoiser(), metrics, lambda r: None, batch_size=2, max_wait_ms=0, picker=FakePicker(),
               on_fast_result=got.append, fast_max_age_s=1e6, fast_reported=lambda x: x.station_id in reported)
    now = time.time_ns()
    windows = []
    for name in ("XX.R0.", "XX.R1.", "XX.N0.", "XX.R2.", "XX.N1."):
        fw = make_window(1, arrival_ns=now, station=name)
        fw.meta["fast"] = True
        windows.append(fw)
    w.submit_fast(windows)
    r = w.process_once(0.1)
    assert r is not None and [x.station_id for x in r.windows] == ["XX.N0.", "XX.N1."]
