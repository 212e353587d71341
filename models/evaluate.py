"""Held-out evaluation: noisy input, a band-pass baseline, the denoiser at several step counts, the clean trace.

Per window (``(3, N)`` arrays, counts):

- SNR improvement (dB): 10 log10(sum clean^2 / sum (out - clean)^2) over all components, minus the same for the
  noisy input;
- correlation coefficient with the clean trace on Z; peak-amplitude ratio max|out_Z| / max|clean_Z|; SI-SDR on Z;
- PhaseNet picks on each input: P and S recall, precision, residual mean and spread within a tolerance (0.1 s and
  0.5 s), by input-SNR bin;
- on noise-only windows: P and S picks per window, share of windows with a P pick, output energy relative to the
  input (dB), and the P picks *without raw support* (PhaseNet's P probability on the raw input below 0.1 within
  0.5 s: an invented onset, as opposed to a small real event in the "noise" that the output makes pickable);
- wall time per window for each step count.

The band-pass baseline is a zero-phase (forward-backward) 4-corner Butterworth band-pass, 1-20 Hz, after removing
the mean: the baseline of the project's evaluation protocol.

Limitations: windows are the model's own 30-s windows (no stitching); the reference is a recorded high-SNR event,
so it contains that station's own low-level noise; the SNR bins are the target SNRs of the synthetic mixtures.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.data import EvalSet
from models.peaks import CONFIRM_WITHIN_S, confirm_p

log = logging.getLogger(__name__)

__all__ = [
    "BANDPASS_CORNERS_HZ",
    "EvalConfig",
    "bandpass",
    "build_protocol_cases",
    "classify_picks",
    "evaluate",
    "evaluate_protocol",
    "pick_metrics",
    "waveform_metrics",
    "write_report",
]

BANDPASS_CORNERS_HZ = (1.0, 20.0)
BANDPASS_ORDER = 4


def bandpass(x: np.ndarray, sampling_rate_hz: float = 100.0, corners_hz: Sequence[float] = BANDPASS_CORNERS_HZ):
    """Zero-phase 4-corner Butterworth band-pass of ``(..., time)`` arrays (mean removed first)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(BANDPASS_ORDER, list(corners_hz), btype="bandpass", fs=sampling_rate_hz, output="sos")
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    return sosfiltfilt(sos, x, axis=-1).astype(np.float32)


@dataclass
class EvalConfig:
    steps: Sequence[int] = (1, 2, 4, 8, 16)
    p_threshold: float = 0.3
    s_threshold: float = 0.3
    tolerances_s: Sequence[float] = (0.1, 0.5)
    sampling_rate_hz: float = 100.0
    batch_size: int = 32
    timing_batch_size: int = 32
    progress: bool = True


# ---------------------------------------------------------------------------------------------- metrics


def waveform_metrics(out: np.ndarray, clean: np.ndarray, noisy: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window waveform metrics for ``(n, 3, N)`` arrays (event windows)."""
    eps = 1e-20
    sig = (clean.astype(np.float64) ** 2).sum(axis=(1, 2))
    err_out = ((out - clean).astype(np.float64) ** 2).sum(axis=(1, 2))
    err_in = ((noisy - clean).astype(np.float64) ** 2).sum(axis=(1, 2))
    gain = 10 * np.log10((err_in + eps) / (err_out + eps))
    oz, cz = out[:, 2].astype(np.float64), clean[:, 2].astype(np.float64)
    oc = oz - oz.mean(axis=1, keepdims=True)
    cc_ = cz - cz.mean(axis=1, keepdims=True)
    cc = (oc * cc_).sum(1) / np.sqrt((oc**2).sum(1) * (cc_**2).sum(1) + eps)
    peak = np.abs(oz).max(1) / (np.abs(cz).max(1) + eps)
    alpha = (oz * cz).sum(1) / ((cz**2).sum(1) + eps)
    target = alpha[:, None] * cz
    si_sdr = 10 * np.log10(((target**2).sum(1) + eps) / (((target - oz) ** 2).sum(1) + eps))
    del sig
    return {"snr_gain_db": gain, "cc_z": cc, "peak_ratio_z": peak, "si_sdr_z_db": si_sdr}


def pick_metrics(
    picks: list[tuple[int, str, int, float]],
    truth: np.ndarray,
    phase: str,
    tolerance_samples: float,
    index: np.ndarray,
    sampling_rate_hz: float = 100.0,
) -> dict[str, float]:
    """Recall, precision and residual statistics for one phase over the windows in ``index``.

    ``truth[i]`` is the true sample (-1 when absent). A window is a hit when its pick closest to the truth lies
    within ``tolerance_samples``; residual = pick - truth in seconds (positive = late).
    """
    by_win: dict[int, list[int]] = {}
    for b, ph, sample, _ in picks:
        if ph == phase:
            by_win.setdefault(b, []).append(sample)
    n_true = hits = n_picks = n_matched = 0
    residuals = []
    for i in index:
        ps = by_win.get(int(i), [])
        n_picks += len(ps)
        if truth[i] < 0:
            continue
        n_true += 1
        if ps:
            d = np.array(ps) - truth[i]
            j = int(np.argmin(np.abs(d)))
            if abs(d[j]) <= tolerance_samples:
                hits += 1
                residuals.append(d[j] / sampling_rate_hz)
            n_matched += int(np.sum(np.abs(d) <= tolerance_samples) > 0)
    res = np.array(residuals)
    return {
        "recall": hits / n_true if n_true else math.nan,
        "precision": n_matched / n_picks if n_picks else math.nan,
        "residual_mean_s": float(res.mean()) if res.size else math.nan,
        "residual_std_s": float(res.std()) if res.size else math.nan,
        "n_true": n_true,
        "n_picks": n_picks,
    }


RAW_SUPPORT_PROBABILITY = 0.1
"""A P pick on a noise-only window is *without raw support* when PhaseNet's P probability on the raw input stays
below this within ``RAW_SUPPORT_WINDOW_S`` of it (nothing there for PhaseNet at all: an invented onset); a pick
with raw support sharpens something PhaseNet already half-sees, such as a small real event in the "noise"."""
RAW_SUPPORT_WINDOW_S = 0.5


def _noise_metrics(
    picks, out: np.ndarray, noisy: np.ndarray, index: np.ndarray, raw_p: np.ndarray | None = None,
    sampling_rate_hz: float = 100.0,
) -> dict[str, float]:
    n = len(index)
    p_counts = np.zeros(n)
    s_counts = np.zeros(n)
    unsupported = 0
    half = int(RAW_SUPPORT_WINDOW_S * sampling_rate_hz)
    pos = {int(i): k for k, i in enumerate(index)}
    for b, ph, sample, _ in picks:
        if b in pos:
            (p_counts if ph == "P" else s_counts)[pos[b]] += 1
            if ph == "P" and raw_p is not None:
                near = raw_p[b, max(0, sample - half) : sample + half + 1]
                unsupported += int(near.size == 0 or float(near.max()) < RAW_SUPPORT_PROBABILITY)
    e_out = (out[index].astype(np.float64) ** 2).sum(axis=(1, 2))
    e_in = (noisy[index].astype(np.float64) ** 2).sum(axis=(1, 2))
    return {
        "n_windows": n,
        "p_picks_per_window": float(p_counts.mean()) if n else math.nan,
        "s_picks_per_window": float(s_counts.mean()) if n else math.nan,
        "windows_with_p_pick": float((p_counts > 0).mean()) if n else math.nan,
        "p_picks_total": int(p_counts.sum()),
        "p_picks_without_raw_support_per_window": unsupported / n if n and raw_p is not None else math.nan,
        "output_energy_db": float(np.median(10 * np.log10((e_out + 1e-20) / (e_in + 1e-20)))) if n else math.nan,
    }


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if x.size and np.isfinite(x).any() else math.nan


# ----------------------------------------------------------------------------------------------- driver


def _outputs(es: EvalSet, denoiser, cfg: EvalConfig) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    outs: dict[str, np.ndarray] = {"noisy": es.noisy, "bandpass": bandpass(es.noisy, cfg.sampling_rate_hz)}
    timing: dict[str, float] = {}
    bar = _bar(cfg.progress, len(cfg.steps), "denoise")
    for k in cfg.steps:
        parts = []
        for i in range(0, len(es.noisy), cfg.batch_size):
            parts.append(denoiser.denoise_windows(es.noisy[i : i + cfg.batch_size], steps=k).x0)
        outs[f"denoised_{k}"] = np.concatenate(parts)
        tb = es.noisy[: cfg.timing_batch_size]
        denoiser.denoise_windows(tb[:1], steps=k)
        t0 = time.perf_counter()
        denoiser.denoise_windows(tb, steps=k)
        timing[f"denoised_{k}"] = (time.perf_counter() - t0) * 1e3 / len(tb)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    outs["clean"] = es.clean
    return outs, timing


def evaluate(es: EvalSet, denoiser, picker, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Run every method on the evaluation set; returns a JSON-ready dict (and keeps the outputs under ``_outputs``
    and picks under ``_picks`` for the figures). The denoised outputs are picked with the weights' pick policy
    (``denoiser.unconfirmed_p_threshold``, :func:`models.peaks.confirm_p`), as the daemon picks them."""
    cfg = cfg or EvalConfig()
    unconfirmed = getattr(denoiser, "unconfirmed_p_threshold", None)
    outs, timing = _outputs(es, denoiser, cfg)
    ev_idx = np.flatnonzero(~es.noise_only)
    nz_idx = np.flatnonzero(es.noise_only)
    levels = sorted({float(s) for s in es.snr_db[ev_idx]})
    result: dict[str, Any] = {
        "n_event_windows": int(len(ev_idx)),
        "n_noise_windows": int(len(nz_idx)),
        "snr_levels_db": levels,
        "bandpass": {"corners_hz": list(BANDPASS_CORNERS_HZ), "order": BANDPASS_ORDER, "zero_phase": True},
        "picker": {"name": getattr(picker, "name", "?"), "p_threshold": cfg.p_threshold, "s_threshold": cfg.s_threshold,
                   "unconfirmed_p_threshold_on_denoised": unconfirmed},
        "denoiser": {"name": getattr(denoiser, "name", "?"), "version": getattr(denoiser, "version", "?"),
                     "residual_mix": getattr(denoiser, "residual_mix", 0.0)},
        "ms_per_window": timing,
        "methods": {},
    }
    all_picks: dict[str, list] = {}
    bar = _bar(cfg.progress, len(outs), "pick")
    raw_p = None
    raw_probs: np.ndarray | None = None
    for method, out in outs.items():
        probs = picker.predict(out)
        if method == "noisy":
            raw_p = probs[:, 0]
            raw_probs = probs
        elif method.startswith("denoised_") and unconfirmed is not None and raw_probs is not None:
            probs = confirm_p(probs, raw_probs, cfg.p_threshold, unconfirmed,
                              round(CONFIRM_WITHIN_S * cfg.sampling_rate_hz))
        picks = picker.find_picks(probs, cfg.p_threshold, cfg.s_threshold)
        all_picks[method] = picks
        m: dict[str, Any] = {}
        if method != "clean":
            wm = waveform_metrics(out[ev_idx], es.clean[ev_idx], es.noisy[ev_idx])
            m["waveform"] = {k: _nanmean(v) for k, v in wm.items()}
            m["waveform_by_snr"] = {
                str(lv): {k: _nanmean(v[es.snr_db[ev_idx] == lv]) for k, v in wm.items()} for lv in levels
            }
        m["picks"] = {}
        for tol in cfg.tolerances_s:
            tol_samples = tol * cfg.sampling_rate_hz
            entry: dict[str, Any] = {}
            for phase, truth in (("P", es.p), ("S", es.s)):
                entry[phase] = pick_metrics(picks, truth, phase, tol_samples, ev_idx, cfg.sampling_rate_hz)
                entry[f"{phase}_by_snr"] = {
                    str(lv): pick_metrics(
                        picks, truth, phase, tol_samples, ev_idx[es.snr_db[ev_idx] == lv], cfg.sampling_rate_hz
                    )["recall"]
                    for lv in levels
                }
                low = ev_idx[es.snr_db[ev_idx] < 5]
                entry[f"{phase}_recall_below_5db"] = pick_metrics(
                    picks, truth, phase, tol_samples, low, cfg.sampling_rate_hz
                )["recall"]
                low = ev_idx[es.snr_db[ev_idx] <= -5]
                entry[f"{phase}_recall_at_or_below_minus5db"] = pick_metrics(
                    picks, truth, phase, tol_samples, low, cfg.sampling_rate_hz
                )["recall"]
            m["picks"][f"{tol:g}s"] = entry
        if len(nz_idx):
            m["noise_only"] = _noise_metrics(picks, out, es.noisy, nz_idx, raw_p, cfg.sampling_rate_hz)
        result["methods"][method] = m
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result["_outputs"] = outs
    result["_picks"] = all_picks
    return result


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


# ------------------------------------------------------------------------------------------------ report


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown_table(result: dict[str, Any]) -> str:
    """The headline table (one row per method) and the P-recall-by-SNR table, as Markdown."""
    methods = [m for m in result["methods"]]
    lines = [
        "| input to PhaseNet | SNR gain (dB) | CC (Z) | peak ratio (Z) | SI-SDR (Z, dB) | P recall 0.5 s | "
        "P recall <5 dB | P res. mean±std (s) | S recall 0.5 s | P recall 0.1 s | noise: P picks/window | "
        "noise: of which without raw support | noise: windows with P | noise: out energy (dB) | ms/window |",
        "|---|" + "---|" * 14,
    ]
    for name in methods:
        m = result["methods"][name]
        w = m.get("waveform", {})
        p5 = m["picks"].get("0.5s", {})
        p1 = m["picks"].get("0.1s", {})
        nz = m.get("noise_only", {})
        pm = p5.get("P", {})
        lines.append(
            f"| {name} | {_fmt(w.get('snr_gain_db'))} | {_fmt(w.get('cc_z'))} | {_fmt(w.get('peak_ratio_z'))} | "
            f"{_fmt(w.get('si_sdr_z_db'))} | {_fmt(pm.get('recall'))} | {_fmt(p5.get('P_recall_below_5db'))} | "
            f"{_fmt(pm.get('residual_mean_s'))}±{_fmt(pm.get('residual_std_s'))} | "
            f"{_fmt(p5.get('S', {}).get('recall'))} | {_fmt(p1.get('P', {}).get('recall'))} | "
            f"{_fmt(nz.get('p_picks_per_window'))} | {_fmt(nz.get('p_picks_without_raw_support_per_window'))} | "
            f"{_fmt(nz.get('windows_with_p_pick'))} | "
            f"{_fmt(nz.get('output_energy_db'), 1)} | {_fmt(result['ms_per_window'].get(name), 1)} |"
        )
    levels = result["snr_levels_db"]
    lines += ["", "P recall (0.5 s) by input SNR (dB):", "", "| input | " + " | ".join(f"{lv:g}" for lv in levels) + " |"]
    lines.append("|---|" + "---|" * len(levels))
    for name in methods:
        by = result["methods"][name]["picks"]["0.5s"]["P_by_snr"]
        lines.append(f"| {name} | " + " | ".join(_fmt(by[str(lv)]) for lv in levels) + " |")
    lines += ["", "SNR gain (dB) by input SNR (dB):", "", "| input | " + " | ".join(f"{lv:g}" for lv in levels) + " |"]
    lines.append("|---|" + "---|" * len(levels))
    for name in methods:
        by = result["methods"][name].get("waveform_by_snr")
        if by:
            lines.append(f"| {name} | " + " | ".join(_fmt(by[str(lv)]["snr_gain_db"]) for lv in levels) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], es: EvalSet, out_dir: str | Path, n_examples: int = 3) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and PNG figures to ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(clean, indent=1, default=_json_default) + "\n")
    paths["markdown"].write_text("# Denoiser evaluation\n\n" + markdown_table(clean))
    paths.update(_figures(result, es, out_dir, n_examples))
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def _figures(result: dict[str, Any], es: EvalSet, out_dir: Path, n_examples: int) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    outs, picks = result["_outputs"], result["_picks"]
    den_keys = [k for k in outs if k.startswith("denoised_")]
    best = den_keys[0] if den_keys else None
    ev_idx = np.flatnonzero(~es.noise_only)
    levels = result["snr_levels_db"]
    # Example traces: the lowest SNR levels, one event each, plus one noise-only window.
    chosen = []
    for lv in levels[: max(n_examples - 1, 1)]:
        cand = ev_idx[es.snr_db[ev_idx] == lv]
        if len(cand):
            chosen.append(int(cand[len(cand) // 2]))
    nz = np.flatnonzero(es.noise_only)
    if len(nz):
        chosen.append(int(nz[0]))
    rows = ["noisy", "bandpass"] + ([best] if best else []) + ["clean"]
    fig, axes = plt.subplots(len(rows), len(chosen), figsize=(3.2 * len(chosen), 1.3 * len(rows)), squeeze=False)
    t = np.arange(es.noisy.shape[-1]) / 100.0
    for j, i in enumerate(chosen):
        for r, name in enumerate(rows):
            ax = axes[r, j]
            ax.plot(t, outs[name][i, 2], lw=0.4, color="k")
            for b, ph, s, _ in picks[name]:
                if b == i:
                    ax.axvline(s / 100.0, color="b" if ph == "P" else "r", lw=0.8)
            if es.p[i] >= 0:
                ax.axvline(es.p[i] / 100.0, color="b", ls=":", lw=0.8)
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name.replace("denoised_", "den. k="), fontsize=7)
            if r == 0:
                title = "noise only" if es.noise_only[i] else f"input SNR {es.snr_db[i]:g} dB"
                ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
    fig.suptitle("Z component; PhaseNet picks: P blue, S red; true P dotted", fontsize=8)
    fig.tight_layout()
    paths["examples"] = out_dir / "examples.png"
    fig.savefig(paths["examples"], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for name, m in result["methods"].items():
        if name == "clean" and True:
            rec = [m["picks"]["0.5s"]["P_by_snr"][str(lv)] for lv in levels]
            axes[1].plot(levels, rec, "k--", label=name)
            continue
        style = "-o" if name.startswith("denoised") else "-s"
        gains = [m["waveform_by_snr"][str(lv)]["snr_gain_db"] for lv in levels]
        ccs = [m["waveform_by_snr"][str(lv)]["cc_z"] for lv in levels]
        rec = [m["picks"]["0.5s"]["P_by_snr"][str(lv)] for lv in levels]
        axes[0].plot(levels, gains, style, ms=3, label=name)
        axes[1].plot(levels, rec, style, ms=3, label=name)
        axes[2].plot(levels, ccs, style, ms=3, label=name)
    for ax, yl in zip(axes, ["SNR gain (dB)", "P recall (0.5 s)", "CC (Z)"]):
        ax.set_xlabel("input SNR (dB)", fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    paths["vs_snr"] = out_dir / "metrics_vs_snr.png"
    fig.savefig(paths["vs_snr"], dpi=90)
    plt.close(fig)

    if den_keys:
        ks = [int(k.split("_")[1]) for k in den_keys]
        fig, axes = plt.subplots(1, 3, figsize=(10, 2.6))
        ms = result["methods"]
        axes[0].plot(ks, [ms[k]["waveform"]["snr_gain_db"] for k in den_keys], "-o")
        axes[1].plot(ks, [ms[k]["picks"]["0.5s"]["P_recall_below_5db"] for k in den_keys], "-o", label="denoiser")
        axes[1].axhline(ms["bandpass"]["picks"]["0.5s"]["P_recall_below_5db"], color="g", ls="--", label="band-pass")
        axes[1].axhline(ms["noisy"]["picks"]["0.5s"]["P_recall_below_5db"], color="gray", ls=":", label="noisy")
        axes[1].legend(fontsize=6)
        axes[2].plot(ks, [result["ms_per_window"][k] for k in den_keys], "-o")
        for ax, yl in zip(axes, ["SNR gain (dB)", "P recall <5 dB (0.5 s)", "ms per window"]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("network calls (steps)", fontsize=8)
            ax.set_ylabel(yl, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        paths["vs_steps"] = out_dir / "quality_vs_steps.png"
        fig.savefig(paths["vs_steps"], dpi=90)
        plt.close(fig)
    return paths


# -------------------------------------------------------------------------------------- stream protocol


def build_protocol_cases(
    recordings,
    snr_levels_db: Sequence[float] = (-15, -10, -5, 0, 5),
    n_noise_only: int = 10,
    seconds: float = 60.0,
    seed: int = 777,
    sampling_rate_hz: float = 100.0,
    min_event_snr_db: float = 15.0,
) -> EvalSet:
    """60-s, 3-component cases shaped like the project's acceptance protocol: a high-SNR event with P placed 8-28 s
    into the window plus pre-event noise from *another* recording scaled to each SNR, and noise-only cases.

    Recordings shorter than the case are extended by reflection (the NCEDC traces are 90 s with P at 30 s, so P
    positions later than the recording allows are clipped)."""
    from models.data import _extend, crop_noise, event_snr_db, mix_at_snr

    rng = np.random.default_rng(seed)
    n = int(seconds * sampling_rate_hz)
    events = [r for r in recordings if r.is_event and r.three_component
              and event_snr_db(r, sampling_rate_hz) >= min_event_snr_db]
    noise = [(r.name, r.noise_segment()) for r in recordings if r.three_component]
    noise = [(nm, seg) for nm, seg in noise if seg is not None and np.any(seg[2] != 0)]  # Z scales the noise
    if not events or len(noise) < 2:
        from models.errors import DataError

        raise DataError("the stream protocol needs a clean 3-component event and two 3-component noise segments")
    cols: dict[str, list] = {k: [] for k in ("noisy", "clean", "p", "s", "snr", "nz", "names")}

    def noise_case(exclude: str) -> tuple[str, np.ndarray]:
        cands = [x for x in noise if x[0] != exclude] or noise
        nm, seg = cands[rng.integers(len(cands))]
        return nm, crop_noise(seg, n, rng)

    for ev in events:
        data = _extend(ev.data, n)
        p = int(ev.p_sample)
        for snr in snr_levels_db:
            start = int(np.clip(p - int(rng.uniform(8, 28) * sampling_rate_hz), 0, data.shape[1] - n))
            nm, nz = noise_case(ev.name)
            noisy, clean, p_in, s_in = mix_at_snr(ev, data, start, nz, snr, sampling_rate_hz)
            cols["noisy"].append(noisy)
            cols["clean"].append(clean)
            cols["p"].append(p_in)
            cols["s"].append(s_in)
            cols["snr"].append(float(snr))
            cols["nz"].append(False)
            cols["names"].append(f"{ev.name}|{nm}")
    for _ in range(n_noise_only):
        nm, nz = noise_case("")
        cols["noisy"].append(nz)
        cols["clean"].append(np.zeros_like(nz))
        cols["p"].append(-1)
        cols["s"].append(-1)
        cols["snr"].append(math.nan)
        cols["nz"].append(True)
        cols["names"].append(f"-|{nm}")
    return EvalSet(np.stack(cols["noisy"]).astype(np.float32), np.stack(cols["clean"]).astype(np.float32),
                   np.array(cols["p"]), np.array(cols["s"]), np.array(cols["snr"]), np.array(cols["nz"]),
                   cols["names"])


_PROTOCOL_T0 = "2020-01-01T00:00:00"  # on every grid: the cases' windows cover them completely

StreamDenoiser = Callable[[Any, Any, int], Any]
"""``(obspy_stream, denoiser, steps) -> denoised obspy_stream``: the offline path (``streamer.offline``)."""


def obspy_time(text: str) -> Any:
    import obspy

    return obspy.UTCDateTime(text)


def _cases_stream(x: np.ndarray, sampling_rate_hz: float):
    """``(n, 3, N)`` ENZ arrays as one ObsPy stream, station ``C000``... per case, channels ``HHE/HHN/HHZ``."""
    import obspy

    t0 = obspy.UTCDateTime(_PROTOCOL_T0)
    st = obspy.Stream()
    for i, w in enumerate(x):
        for c, cha in enumerate(("HHE", "HHN", "HHZ")):
            st.append(obspy.Trace(np.asarray(w[c], np.float32).copy(),
                                  header={"network": "XX", "station": f"C{i:03d}", "channel": cha,
                                          "sampling_rate": sampling_rate_hz, "starttime": t0}))
    return st


def classify_picks(picker, x: np.ndarray, p_threshold: float, s_threshold: float,
                   sampling_rate_hz: float = 100.0) -> list[tuple[int, str, int, float]]:
    """Picks from SeisBench's own ``classify`` on ``(n, 3, N)`` cases (its windowing, stacking and pick
    extraction, as a user of SeisBench would run PhaseNet), as ``(case, phase, sample, probability)``."""
    import obspy

    t0 = obspy.UTCDateTime(_PROTOCOL_T0)
    out = picker.module.classify(_cases_stream(x, sampling_rate_hz), P_threshold=p_threshold,
                                 S_threshold=s_threshold)
    picks = []
    for pk in out.picks:
        case = int(pk.trace_id.split(".")[1][1:])
        sample = int(round((pk.peak_time - t0) * sampling_rate_hz))
        picks.append((case, str(pk.phase), sample, float(pk.peak_value)))
    return sorted(picks)


def evaluate_protocol(cases: EvalSet, denoiser, picker, steps: Sequence[int] = (1,), p_threshold: float = 0.3,
                      s_threshold: float = 0.3, sampling_rate_hz: float = 100.0,
                      classify: bool = True, *, denoise_stream: StreamDenoiser) -> dict[str, Any]:
    """Run the cases through the offline path (``denoise_stream(stream, denoiser, steps)`` on one multi-station
    ObsPy stream: ``streamer.offline``, the code ``coldstream denoise`` and the daemon run) and score them: SNR gain
    over the whole window and all components, Z correlation, P recall within 0.5 s at input SNR <= -5 dB, and P
    picks on noise-only cases; raw and band-pass baselines. Samples the stream path leaves uncovered stay 0.

    Picks come from SeisBench's ``classify`` on each output stream (``classify=True``, the acceptance protocol's
    picker, at ``p_threshold`` alone on every output) or from this project's :meth:`Picker.find_picks` on the
    same probabilities the service uses, with the weights' pick policy on the denoised outputs
    (:func:`models.peaks.confirm_p`)."""
    st = _cases_stream(cases.noisy, sampling_rate_hz)
    outs = {"noisy": cases.noisy, "bandpass": bandpass(cases.noisy, sampling_rate_hz)}
    for k in steps:
        den = denoise_stream(st, denoiser, k)
        arr = np.zeros_like(cases.noisy)
        t0 = obspy_time(_PROTOCOL_T0)
        for tr in den.split():
            i0 = int(round((tr.stats.starttime - t0) * sampling_rate_hz))
            data = np.asarray(tr.data, np.float32)[: max(0, arr.shape[-1] - i0)]
            arr[int(tr.stats.station[1:]), "ENZ".index(tr.stats.channel[-1]), i0 : i0 + data.size] = data
        outs[f"denoised_{k}"] = arr
    ev = np.flatnonzero(~cases.noise_only)
    nz = np.flatnonzero(cases.noise_only)
    low = ev[cases.snr_db[ev] <= -5]
    res: dict[str, Any] = {"n_event_cases": int(len(ev)), "n_noise_cases": int(len(nz)),
                           "seconds": cases.noisy.shape[-1] / sampling_rate_hz,
                           "picking": "SeisBench classify" if classify else "coldstream find_picks", "methods": {}}
    for name, out in outs.items():
        if classify:
            picks = classify_picks(picker, out, p_threshold, s_threshold, sampling_rate_hz)
        else:
            probs = picker.predict(out)
            unconfirmed = getattr(denoiser, "unconfirmed_p_threshold", None)
            if name.startswith("denoised_") and unconfirmed is not None:
                probs = confirm_p(probs, picker.predict(cases.noisy), p_threshold, unconfirmed,
                                  round(CONFIRM_WITHIN_S * sampling_rate_hz))
            picks = picker.find_picks(probs, p_threshold, s_threshold)
        wm = waveform_metrics(out[ev], cases.clean[ev], cases.noisy[ev])
        nm = _noise_metrics(picks, out, cases.noisy, nz) if len(nz) else {}
        res["methods"][name] = {
            "snr_gain_db": _nanmean(wm["snr_gain_db"]),
            "cc_z": _nanmean(wm["cc_z"]),
            "p_recall_0.5s_at_or_below_minus5db": pick_metrics(picks, cases.p, "P", 0.5 * sampling_rate_hz, low,
                                                               sampling_rate_hz)["recall"],
            "p_recall_0.5s_all": pick_metrics(picks, cases.p, "P", 0.5 * sampling_rate_hz, ev,
                                              sampling_rate_hz)["recall"],
            "p_recall_0.5s_by_snr": {
                str(lv): pick_metrics(picks, cases.p, "P", 0.5 * sampling_rate_hz, ev[cases.snr_db[ev] == lv],
                                      sampling_rate_hz)["recall"]
                for lv in sorted({float(x) for x in cases.snr_db[ev]})
            },
            "noise_p_picks_total": nm.get("p_picks_total"),
            "noise_cases_with_p_pick": nm.get("windows_with_p_pick"),
        }
    return res


def protocol_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"Stream protocol: {res['n_event_cases']} event cases and {res['n_noise_cases']} noise-only cases of "
        f"{res['seconds']:g} s through the offline path (`streamer.offline`, as `coldstream denoise`); picks by "
        f"{res.get('picking', 'coldstream find_picks')}.",
        "",
        "| input to PhaseNet | SNR gain (dB) | CC (Z) | P recall ≤ −5 dB (0.5 s) | P recall all | "
        "P picks on noise (total) | noise cases with a P pick |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in res["methods"].items():
        lines.append(
            f"| {name} | {_fmt(m['snr_gain_db'])} | {_fmt(m['cc_z'])} | "
            f"{_fmt(m['p_recall_0.5s_at_or_below_minus5db'])} | {_fmt(m['p_recall_0.5s_all'])} | "
            f"{_fmt(m['noise_p_picks_total'])} | {_fmt(m['noise_cases_with_p_pick'])} |"
        )
    return "\n".join(lines) + "\n"
