"""Edges of the pick policy (the raw P that ``Worker.process_batch`` hands on, judged by the pick detector with
``models.peaks.cap_unconfirmed_p``): which raw samples confirm a denoised P pick, and what the rule gives on the
overlap-add stack of windows that disagree."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config import load_settings
from streamer.records import Window
from test_pick_confirmation import policy_p
from test_worker import FakeDenoiser, make_worker

N = 3000
T_ABS = 4500  # absolute sample of the onset in the stacking test (covered by the windows at 2000, 3000, 4000)


# ------------------------------------------------------------------------------- valid: padding, missing components
class _ZRampPicker:
    """Reads window id and raw/denoised from the Z row (``id * 10000 + sample index``; halved on the denoised
    output). Denoised: P 0.4 at 1130 in every window. Raw: window 0 and 2 P 0.4 at 1100 (data), window 1 P 0.9 at
    1090 (inside its zero-filled gap)."""

    name, version = "zramp", "0"

    def predict(self, x):
        p = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        for b in range(x.shape[0]):
            z = x[b, 2]
            slope = float(z[2001] - z[2000])
            wid = round((float(z[2000]) / slope - 2000) / 10000)
            if slope < 0.75:
                p[b, 0, 1130] = 0.4
            elif wid == 1:
                p[b, 0, 1090] = 0.9
            else:
                p[b, 0, 1100] = 0.4
        return p


def test_valid_follows_each_window_in_a_padded_batch_and_a_z_only_window_confirms(metrics):
    windows = []
    for wid in range(3):
        data = np.zeros((3, N), np.float32)
        data[:] = wid * 10000 + np.arange(N, dtype=np.float32)
        mask = np.ones((3, N), bool)
        if wid == 1:
            mask[:, 1000:1100] = False  # a short gap on every component, zero-filled
        if wid == 2:
            mask[:2] = False  # a Z-only station: E and N missing, zero-filled
        data[~mask] = 0.0
        windows.append(Window(f"XX.S{wid}.", 0, 100.0, data, mask, 0))
    den = FakeDenoiser()
    w, _, _ = make_worker(metrics, den, batch_size=4, pad_batch_multiple=4, picker=_ZRampPicker(),
                          clock_ns=lambda: 0, p_threshold=0.3, unconfirmed_p_threshold=0.45)
    w.submit(windows)
    r = w.process_once()
    assert r is not None and r.probs is not None and r.probs.shape == (3, 3, N)
    assert den.calls[0][0] == 4  # the batch ran padded to 4; the padding's outputs are dropped
    assert r.confirm_p is not None and r.confirm_p.shape == (3, N)
    assert policy_p(r, 0)[1130] == np.float32(0.4)  # confirmed by raw data
    assert policy_p(r, 1)[1130] < 0.3  # its raw P lies in the gap: not confirmed, capped
    assert r.confirm_p[1, 1090] == 0.0  # PhaseNet's 0.9 on the zero fill is not handed on
    assert policy_p(r, 2)[1130] == np.float32(0.4)  # Z-only: the Z data confirm (missing components do not count)


# ------------------------------------------------------------------------------- zero fill next to valid samples
class _GapEdgePicker:
    """Raw: P at ``at`` (``value``), where PhaseNet answers a zero-filled gap (measured with PhaseNet 'original' on
    159 quiet cx-continuous windows with a 1 s gap at 15-16 s: 0.38 two samples after a gap on all components,
    0.66 on the last sample of a Z-only gap). Denoised (halved, slope 0.5 on E at 2000): P 0.4 at 1130."""

    name, version = "gapedge", "0"

    def __init__(self, at: int, value: float) -> None:
        self.at, self.value = at, value

    def predict(self, x):
        p = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        for b in range(x.shape[0]):
            if float(x[b, 0, 2001] - x[b, 0, 2000]) > 0.75:
                p[b, 0, self.at] = self.value
            else:
                p[b, 0, 1130] = 0.4
        return p


@pytest.mark.parametrize(("rows", "at", "value"), [
    # PhaseNet's answer on the first samples after a gap on every component has data under it: within 0.5 s of
    # the gap, it does not confirm (measured on real noise: 2-3 of 159 windows)
    (slice(0, 3), 1102, 0.38),
    (slice(2, 3), 1099, 0.66),  # gap on Z only (E, N have data): PhaseNet answers inside the Z gap
    (slice(0, 3), 1050, 0.9),  # inside a gap on every component: no data, no confirmation
])
def test_phasenet_answers_to_zero_fill_do_not_confirm_a_denoised_pick(metrics, rows, at, value):
    data = np.tile(np.arange(N, dtype=np.float32), (3, 1))
    mask = np.ones((3, N), bool)
    mask[rows, 1000:1100] = False
    data[~mask] = 0.0
    w, _, _ = make_worker(metrics, FakeDenoiser(), batch_size=1, picker=_GapEdgePicker(at, value),
                          clock_ns=lambda: 0, p_threshold=0.3, unconfirmed_p_threshold=0.45)
    w.submit([Window("XX.STA.", 0, 100.0, data, mask, 0)])
    r = w.process_once()
    assert r is not None and r.probs is not None
    # the raw "pick" is the zero fill's, not an arrival: the denoised 0.4 should need 0.45
    assert policy_p(r)[1130] < 0.3


# ------------------------------------------------------------------------------- stacking, windows disagreeing
class _ByWindowPicker:
    """E row: a ramp of the absolute sample index (halved on the denoised output), so the window's start is known.
    P at T_ABS: raw ``raw[start]``, denoised ``den[start]`` (else ``den_other``): PhaseNet's P moves with the
    window's position."""

    name, version = "bywindow", "0"

    def __init__(self, raw: dict[int, float], den: dict[int, float], den_other: float) -> None:
        self.raw, self.den, self.den_other = raw, den, den_other

    def predict(self, x):
        p = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        for b in range(x.shape[0]):
            slope = float(x[b, 0, 101] - x[b, 0, 100])
            start = round(float(x[b, 0, 100]) / slope) - 100
            i = T_ABS - start
            if 0 <= i < x.shape[-1]:
                p[b, 0, i] = self.raw.get(start, 0.0) if slope > 0.75 else self.den.get(start, self.den_other)
        return p


def _picks_at_t_abs(picker: _ByWindowPicker, unconfirmed: float | None) -> dict[str, object]:
    """``coldstream denoise``'s path over 90 s (windows at 2000, 3000, 4000 cover T_ABS): picks there by source."""
    import obspy

    from streamer.offline import denoise_stream

    rng = np.random.default_rng(1)
    st = obspy.Stream([obspy.Trace(np.arange(9000, dtype=np.float32) if c == "E"
                                   else rng.standard_normal(9000).astype(np.float32),
                                   header={"network": "XX", "station": "AAA", "channel": f"HH{c}",
                                           "sampling_rate": 100.0, "starttime": obspy.UTCDateTime(2024, 1, 1)})
                       for c in "ENZ"])
    den = FakeDenoiser()
    den.spec = None  # type: ignore[attr-defined]
    den.unconfirmed_p_threshold = unconfirmed  # type: ignore[attr-defined]
    settings = load_settings(overrides=["eew.enabled=false", "picker.raw_comparison=true"], environ={})
    res = denoise_stream(st, den, settings, picker=picker, steps=1)
    t0 = round(obspy.UTCDateTime(2024, 1, 1).timestamp * 1e9)
    return {p.source: p for p in res.picks
            if p.phase == "P" and abs(p.time_ns - (t0 + T_ABS * 10_000_000)) <= 10_000_000}


@pytest.mark.parametrize(("raw", "raw_picked", "published"), [
    # raw P 0.35 in the two edge windows, 0.29 in the centre one: the raw stack (hann weights 0.25, 1, 0.25) is
    # 0.31, a raw pick, and it confirms the stacked 0.36 of the output although the centre window alone does not
    ({2000: 0.35, 3000: 0.29, 4000: 0.35}, True, True),
    # raw P 0.35 in one edge window only: the raw stack is 0.27, no raw pick, and so no confirmation (deciding per
    # window, before the stack, had let this onset through at a stacked P of 0.36)
    ({2000: 0.35, 3000: 0.25, 4000: 0.25}, False, False),
])
def test_the_stacked_raw_p_confirms_the_stacked_output(raw, raw_picked, published):
    at_t = _picks_at_t_abs(_ByWindowPicker(raw, {}, 0.36), 0.45)
    assert ("raw" in at_t) is raw_picked
    assert ("denoised" in at_t) is published
    if published:  # PhaseNet's stacked probability, unchanged by the policy
        assert at_t["denoised"].probability == pytest.approx(0.36, abs=1e-3)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("first", "other", "published"), [
    # one sure window (0.6) and two unsure ones (0.4) stack to 0.43: below 0.45, not published (deciding per window,
    # before the stack, had published it)
    (0.6, 0.4, False),
    (0.5, 0.5, True),  # every window sure: published with PhaseNet's stacked 0.5
    (0.4, 0.7, True),  # the stack is 0.64
    (0.4, 0.4, False),  # no window sure, none confirmed: not published
])
def test_an_unconfirmed_onset_needs_the_unconfirmed_threshold_on_the_stack(first, other, published):
    picker = _ByWindowPicker({}, {2000: first}, other)  # raw P 0 everywhere: nothing confirmed
    at_t = _picks_at_t_abs(picker, 0.45)
    assert ("denoised" in at_t) is published
    if published:
        stacked = (0.25 * first + 1.0 * other + 0.25 * other) / 1.5
        assert at_t["denoised"].probability == pytest.approx(stacked, abs=1e-3)  # type: ignore[attr-defined]
    assert "denoised" in _picks_at_t_abs(picker, None)  # without the policy every one of them is a pick
