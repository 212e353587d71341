"""The pick policy on the denoised output: a P pick needs PhaseNet on the raw input to confirm it (P >=
picker.p_threshold within 0.5 s), or the weights' higher unconfirmed threshold. Resolved from the settings and
the weights; the worker hands the raw P that confirms to the output stage, whose pick detector decides on the
stacked curves, for the daemon and ``coldstream denoise`` alike."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from streamer.config import load_settings
from models.peaks import cap_unconfirmed_p
from streamer.loaders import unconfirmed_p_threshold
from test_worker import FakeDenoiser, make_window, make_worker

N = 3000


def policy_p(result, b: int = 0) -> np.ndarray:
    """Window ``b``'s denoised P as the pick detector judges it when that window stands alone (no overlap)."""
    assert result.probs is not None
    if result.confirm_p is None:
        return result.probs[b, 0]
    return cap_unconfirmed_p(result.probs[b, 0], result.confirm_p[b], 0.3, result.unconfirmed_p_threshold, 50)


def _settings(*overrides: str):
    return load_settings(overrides=list(overrides), environ={})


@pytest.mark.parametrize(("overrides", "weights_value", "expected"), [
    ([], 0.45, 0.45),  # the weights' threshold
    ([], None, None),  # weights that name none: every pick at p_threshold, no raw pass needed
    (["picker.unconfirmed_p_threshold=0.6"], 0.45, 0.6),  # an explicit setting wins
    (["picker.unconfirmed_p_threshold=0.3"], 0.45, None),  # at p_threshold: the policy is off
    (["picker.p_threshold=0.5"], 0.45, None),  # not above the operator's threshold: off
])
def test_resolution(overrides, weights_value, expected):
    den = SimpleNamespace(unconfirmed_p_threshold=weights_value)
    assert unconfirmed_p_threshold(_settings(*overrides), den) == expected


def test_the_shipped_weights_name_their_unconfirmed_threshold():
    from models.denoiser import Denoiser

    den = Denoiser.load()
    assert den.unconfirmed_p_threshold is not None and 0.3 < den.unconfirmed_p_threshold <= 1.0
    assert unconfirmed_p_threshold(_settings(), den) == den.unconfirmed_p_threshold


class SpikePicker:
    """P probability 0.4 at sample 500 on every input, and 0.4 at sample 2000 only on inputs whose first sample
    is 0.5 (the FakeDenoiser halves its input: the denoised output of a window of ones), so the raw input
    confirms the pick at 500 and not the one at 2000."""

    name = "spikepick"
    version = "0"

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        p[:, 0, 500] = 0.4
        p[np.isclose(x[:, 0, 20], 0.5), 0, 2000] = 0.4
        return p


@pytest.mark.parametrize(("unconfirmed", "raw_picker", "kept"), [
    (None, False, {500, 2000}),  # no policy: both denoised maxima stand at 0.3
    (0.45, False, {500}),  # the policy: the unconfirmed 0.4 at 2000 is capped below 0.3
    (0.35, True, {500, 2000}),  # 0.4 reaches a lower unconfirmed threshold; raw picks still published
    (0.3, False, {500, 2000}),  # at p_threshold: the policy is off, no raw pass
])
def test_the_worker_hands_the_raw_p_that_confirms_to_the_output_stage(metrics, unconfirmed, raw_picker, kept):
    w, results, _ = make_worker(metrics, FakeDenoiser(), batch_size=1, picker=SpikePicker(), clock_ns=lambda: 0,
                                p_threshold=0.3, unconfirmed_p_threshold=unconfirmed, raw_picker=raw_picker)
    w.submit([make_window(0)])
    r = w.process_once()
    assert r is not None and r.probs is not None
    on = unconfirmed is not None and unconfirmed > 0.3
    assert (r.confirm_p is not None) is on and r.unconfirmed_p_threshold == (unconfirmed if on else None)
    if on:
        assert r.confirm_p.shape == (1, N) and r.confirm_p[0, 500] == np.float32(0.4)  # the raw window's P
        assert r.confirm_p[0, 2000] == 0.0
    # the worker leaves PhaseNet's output as it is; the rule is applied where windows are stacked
    assert {int(i) for i in np.flatnonzero(r.probs[0, 0] >= 0.3)} == {500, 2000}
    assert {int(i) for i in np.flatnonzero(policy_p(r) >= 0.3)} == kept
    assert (r.raw_probs is not None) is raw_picker  # raw probabilities leave the worker only when published


def test_offline_denoise_applies_the_weights_policy(tmp_path):
    """`coldstream denoise`'s path resolves the policy from the settings and the denoiser, as the daemon."""
    import obspy

    from streamer.offline import denoise_stream

    rng = np.random.default_rng(3)
    st = obspy.Stream([obspy.Trace(rng.standard_normal(6000).astype(np.float32),
                                   header={"network": "XX", "station": "AAA", "channel": f"HH{c}",
                                           "sampling_rate": 100.0, "starttime": obspy.UTCDateTime(2024, 1, 1)})
                       for c in "ENZ"])

    class HalvedPicker(SpikePicker):
        """P 0.4 at sample 1500 of every window whose std is below 0.9: the halved (denoised) noise, not the raw."""

        def predict(self, x):
            p = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
            p[x.std(axis=(1, 2)) < 0.9, 0, 1500] = 0.4
            return p

    den = FakeDenoiser()
    den.spec = None  # type: ignore[attr-defined]
    results = {}
    for value in (None, 0.45):
        den.unconfirmed_p_threshold = value  # type: ignore[attr-defined]
        res = denoise_stream(st, den, _settings(), picker=HalvedPicker(), steps=1)
        results[value] = [p for p in res.picks if p.phase == "P"]
    assert results[None] and not results[0.45]


# ------------------------------------------------------------------------------------------ coldstream evaluate
class _HalvingDenoiser:
    name, version, residual_mix, n_train_steps = "halve", "0", 0.0, 8
    unconfirmed_p_threshold = 0.45  # as the shipped v2 sidecar

    def denoise_windows(self, x, steps=None, budget_ms=None):
        return SimpleNamespace(x0=0.5 * np.asarray(x, np.float32), steps_done=int(steps or 1), elapsed_ms=0.0)


class _HalvedPicker:
    """P 0.4 at sample 1500 of every window whose std is below 0.9 (the halved output, never the raw noise)."""

    def predict(self, x):
        p = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        p[x.std(axis=(1, 2)) < 0.9, 0, 1500] = 0.4
        return p

    def find_picks(self, probs, p_threshold, s_threshold, min_distance_samples=100):
        from models.picker import find_picks

        return find_picks(probs, p_threshold, s_threshold, min_distance_samples)


def test_coldstream_evaluate_default_mode_applies_the_weights_pick_policy():
    from models.data import EvalSet
    from models.evaluate import EvalConfig, evaluate

    rng = np.random.default_rng(0)
    n_ev, n_nz = 2, 4
    noisy = rng.standard_normal((n_ev + n_nz, 3, N)).astype(np.float32)
    es = EvalSet(noisy=noisy, clean=np.zeros_like(noisy), p=np.array([1000] * n_ev + [-1] * n_nz),
                 s=np.full(n_ev + n_nz, -1), snr_db=np.array([0.0] * n_ev + [np.nan] * n_nz),
                 noise_only=np.array([False] * n_ev + [True] * n_nz), names=[f"w{i}" for i in range(n_ev + n_nz)])
    res = evaluate(es, _HalvingDenoiser(), _HalvedPicker(), EvalConfig(steps=[1], progress=False))
    # raw P is 0 everywhere and the output's 0.4 < 0.45: under the policy (daemon, coldstream denoise --picks,
    # coldstream evaluate --sources) none of these is a pick; without it every noise window has one
    assert res["methods"]["denoised_1"]["noise_only"]["p_picks_total"] == 0
    assert res["picker"]["unconfirmed_p_threshold_on_denoised"] == 0.45
    plain = _HalvingDenoiser()
    plain.unconfirmed_p_threshold = None  # type: ignore[assignment]
    res = evaluate(es, plain, _HalvedPicker(), EvalConfig(steps=[1], progress=False))
    assert res["methods"]["denoised_1"]["noise_only"]["p_picks_total"] == n_nz
