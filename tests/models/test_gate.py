"""The do-no-harm gate and the per-source report, on synthetic data with a threshold picker standing in for
PhaseNet: the gate fails a model that zeroes its input and one that halves it, and the identity passes the harm
checks (it cannot pass the benefit check: it picks exactly what the raw input picks)."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import Recording
from models.gate import gate, gate_markdown
from models.picker import find_picks
from models.source_eval import build_source_sets, evaluate_sources, real_windows, write_source_report


class ThresholdPicker:
    """P 'probability' 1 around the first sample where |Z| exceeds 3 times the window's Z standard deviation."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        for b, w in enumerate(x):
            z = w[2] - w[2].mean()
            sd = z.std()
            if sd <= 0:
                continue
            hit = np.flatnonzero(np.abs(z) > 3 * sd)
            if hit.size:
                out[b, 0, max(0, hit[0] - 5) : hit[0] + 5] = 1.0
        return out

    def find_picks(self, probs, p_threshold, s_threshold):
        return find_picks(probs, p_threshold, s_threshold)


def _event(i: int, rng) -> Recording:
    n, p = 9000, 3000
    data = 0.05 * rng.standard_normal((3, n))
    t = np.arange(n - p) / 100.0
    wavelet = 30 * np.exp(-t / 4.0) * np.sin(2 * np.pi * 5 * t)
    data[:, p:] += wavelet * np.array([[0.5], [0.7], [1.0]])
    return Recording(f"XX_E{i}_1", f"XX.E{i}", data.astype(np.float32), p, p + 500, True, source="syn-a")


def _noise(i: int, rng, source: str) -> Recording:
    return Recording(f"{source}_N{i}", f"XX.N{i}", rng.standard_normal((3, 9000)).astype(np.float32), None, None,
                     True, source=source)


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(7)
    test_by_source = {
        "syn-a": [_event(i, rng) for i in range(6)] + [_noise(i, rng, "syn-a") for i in range(3)],
        "syn-b": [_noise(i, rng, "syn-b") for i in range(3)],  # no events of its own: the others' are mixed in
    }
    mixtures = build_source_sets(test_by_source, snr_levels_db=(-10, 0, 10, 20), n_noise_only=6, seed=1)
    reals = {"syn-a": real_windows(test_by_source["syn-a"])}
    return mixtures, reals


def _fn(gain: float):
    return lambda x, k: gain * x


def test_every_source_gets_a_mixture_set(sets):
    mixtures, reals = sets
    assert set(mixtures) == {"syn-a", "syn-b"}
    assert (~mixtures["syn-b"].noise_only).sum() == 6 * 4
    assert reals["syn-a"].labelled and len(reals["syn-a"].x) == 6


@pytest.mark.parametrize("gain, harm_ok", [(0.0, False), (0.5, False), (1.0, True)])
def test_gate_fails_zeroing_and_halving_and_passes_identity(sets, gain, harm_ok):
    mixtures, reals = sets
    result = evaluate_sources(mixtures, reals, {"model": (_fn(gain), [1])}, ThresholdPicker())
    g = gate(result, "model/1")
    assert g.harm_passed is harm_ok
    failed = {c.name for c in g.failed()}
    if gain < 1.0:
        assert any(name.startswith("peak") for name in failed)
        assert "real-peak" in failed
    if gain == 0.0:
        assert any(name.startswith("recall>=raw") for name in failed)
    if gain == 1.0:
        assert failed == {"recall>raw below 0 dB"}  # no benefit over the raw input, no harm either
        assert not g.passed


def test_per_source_report_json_markdown_png(sets, tmp_path):
    mixtures, reals = sets
    den = {"half": (_fn(0.5), [1, 2]), "same": (_fn(1.0), [1])}
    result = evaluate_sources(mixtures, reals, den, ThresholdPicker(), only={"half": ["syn-b"]})
    assert set(result["sources"]["syn-a"]["mixtures"]) == {"raw", "bandpass", "same/1"}
    assert set(result["sources"]["syn-b"]["mixtures"]) == {"raw", "bandpass", "half/1", "half/2", "same/1"}
    by = result["sources"]["syn-a"]["mixtures"]["raw"]["by_snr"]
    assert set(by) == {"-10", "0", "10", "20"} and by["20"]["p_recall"] == 1.0
    result["gate"] = [gate(result, "same/1").to_dict()]
    paths = write_source_report(result, tmp_path)
    md = paths["markdown"].read_text()
    assert "## syn-a" in md and "## syn-b" in md and "Do-no-harm gate" in md and "same/1" in md
    assert paths["png"].stat().st_size > 1000
    import json

    assert json.loads(paths["json"].read_text())["sources"]["syn-b"]["mixture_counts"]["noise_windows"] == 6
    raw_b = result["sources"]["syn-b"]["mixtures"]["raw"]
    assert raw_b["noise_recordings"] <= 3 and 0 <= raw_b["noise_p_pick_recordings"] <= raw_b["noise_recordings"]
    assert f"({raw_b['noise_p_pick_recordings']} of {raw_b['noise_recordings']})" in md
    assert "FAIL" in gate_markdown(gate(result, "half/1").to_dict())


def test_noise_picks_are_also_counted_by_distinct_recording():
    """Noise-only windows are crops of a few recordings: the report says on how many distinct ones a pick fell."""
    from models.data import EvalSet
    from models.source_eval import mixture_metrics

    n = 3000
    rng = np.random.default_rng(0)
    noisy = rng.standard_normal((5, 3, n)).astype(np.float32)
    es = EvalSet(noisy=noisy, clean=np.zeros_like(noisy), p=np.array([1000, -1, -1, -1, -1]),
                 s=np.full(5, -1), snr_db=np.array([0.0] + [np.nan] * 4),
                 noise_only=np.array([False, True, True, True, True]),
                 names=["E|A", "-|A", "-|A", "-|B", "-|C"])
    picks = [(0, "P", 1000, 0.9), (1, "P", 500, 0.5), (2, "P", 700, 0.4), (4, "P", 100, 0.6), (4, "S", 900, 0.6)]
    m = mixture_metrics(noisy, es, picks)
    assert m["noise_p_picks"] == 3  # what the gate counts: every P pick on a noise-only window
    assert m["noise_recordings"] == 3 and m["noise_p_pick_recordings"] == 2  # A (twice) and C


class HalfSurePicker(ThresholdPicker):
    """The threshold picker at P probability 0.4 on every input but those whose Z peak exceeds 20 (the clean
    events at high SNR), where it is 0.9."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = 0.4 * super().predict(x)
        sure = np.abs(x[:, 2]).max(axis=-1) > 20
        out[sure] *= 0.9 / 0.4
        return out


class Sharpens:
    """A 'denoiser' that adds a spike to every window, where the raw input has no onset."""

    def __call__(self, x: np.ndarray, k: int) -> np.ndarray:
        out = x.copy()
        out[:, 2, 1500] += 100 * x[:, 2].std(axis=-1)
        return out


def test_a_denoiser_pick_needs_raw_confirmation_or_its_own_higher_probability(sets, tmp_path):
    mixtures, reals = sets
    den = {"confirmed": (_fn(1.0), [1], 0.5), "plain": (_fn(1.0), [1]), "unset": (_fn(1.0), [1], None),
           "spiky": (Sharpens(), [1], 0.5), "spiky-plain": (Sharpens(), [1])}
    result = evaluate_sources(mixtures, reals, den, HalfSurePicker())
    assert result["p_confirmation_by_method"] == {
        "bandpass": None, "confirmed/1": 0.5, "plain/1": None, "raw": None, "spiky-plain/1": None, "spiky/1": 0.5,
        "unset/1": None}
    mix = result["sources"]["syn-a"]["mixtures"]
    assert mix["raw"]["p_recall"] > 0
    for name in ("plain/1", "unset/1", "confirmed/1"):  # every pick of the identity is confirmed by the raw input
        assert mix[name]["p_recall"] == mix["raw"]["p_recall"], name
    # the spike on noise: picked at 0.4 without the policy; unconfirmed and below 0.5 with it
    assert mix["spiky-plain/1"]["noise_p_picks"] > mix["raw"]["noise_p_picks"]
    assert mix["spiky/1"]["noise_p_picks"] <= mix["raw"]["noise_p_picks"]
    md = write_source_report(result, tmp_path)["markdown"].read_text()
    assert "Picks on confirmed/1 (unconfirmed: 0.5), spiky/1 (unconfirmed: 0.5) stand where" in md


def test_confirmation_keeps_confirmed_and_sure_samples_and_caps_the_rest():
    from models.peaks import confirm_p, local_peaks

    p = np.zeros((1, 3, 400), np.float32)
    raw = np.zeros_like(p)
    p[0, 0, 100], p[0, 0, 200], p[0, 0, 300] = 0.4, 0.35, 0.6  # unconfirmed weak, confirmed weak, sure
    p[0, 1, 100] = 0.4  # S is never touched
    raw[0, 0, 240] = 0.3  # confirms 200 (within 50 samples), not 100 or 300
    out = confirm_p(p, raw, 0.3, 0.5, 50)
    assert local_peaks(out[0, 0], 0.3, 10) == [200, 300]
    assert out[0, 0, 100] < 0.3 and out[0, 0, 300] == np.float32(0.6)  # capped; sure: unchanged
    assert out[0, 0, 200] == np.float32(0.35)  # confirmed: unchanged
    assert out[0, 1, 100] == np.float32(0.4) and p[0, 0, 100] == np.float32(0.4)  # S untouched; a copy
    gap = np.ones((1, 400), bool)
    gap[0, 230:250] = False  # the confirming raw sample has no data: it confirms nothing
    assert local_peaks(confirm_p(p, raw, 0.3, 0.5, 50, valid=gap)[0, 0], 0.3, 10) == [300]
    assert np.array_equal(confirm_p(p, raw, 0.3, 0.3, 50), p)  # no stricter threshold: nothing to confirm
    with pytest.raises(ValueError, match="shape"):
        confirm_p(p, raw[..., :10], 0.3, 0.5, 50)
