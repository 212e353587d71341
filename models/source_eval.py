"""Evaluation per source: synthetic mixtures by input-SNR bin, real unmixed recordings, several denoisers side by side.

For each source's held-out (test-split) stations:

- **mixtures** (:func:`build_source_sets`): the source's clean events (Z SNR >= 15 dB) mixed with the source's own
  held-out noise at each input SNR, plus noise-only windows. A source without labelled events (continuous data)
  gets the other sources' held-out events mixed into *its* noise, so its real noise spectrum is what is tested;
- **real recordings** (:func:`real_windows`): the held-out recordings as they are, unmixed. Labelled events are cut
  into 30-s windows with P inside; continuous data are cut into consecutive 30-s windows, and PhaseNet's confident
  P picks on the raw data (probability >= ``CONFIDENT_P``) stand in for labels.

Metrics per method (raw input, the 1-20 Hz band-pass, each denoiser at each step count) and SNR bin: P recall within
0.5 s, P residual, SNR gain, Z correlation, the median Z peak ratio output / clean; on noise-only windows the P
picks; on real recordings P recall against the labels (or the share of confident raw picks kept), the median Z peak
ratio output / the raw 1-45 Hz band around clear P arrivals (``REAL_PEAK_WINDOW_S``), and P picks with no raw pick
within 0.5 s. The do-no-harm gate (:mod:`models.gate`) reads this result.

Limitations: small held-out sets (a few stations per source), so one pick is several per cent of a bin; the
reference of a mixture is a recorded event and holds that station's own low-level noise; confident raw picks on
continuous data are PhaseNet's, not an analyst's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.data import EvalSet, Recording, build_eval_set, event_snr_db
from models.evaluate import bandpass, pick_metrics, waveform_metrics
from models.peaks import CONFIRM_WITHIN_S, confirm_p

log = logging.getLogger(__name__)

__all__ = [
    "CONFIDENT_P",
    "RealSet",
    "build_source_sets",
    "evaluate_sources",
    "real_windows",
    "source_markdown",
    "write_source_report",
]

CONFIDENT_P = 0.7
"""A raw-data P pick at least this probable counts as a clear arrival on real continuous data."""
REAL_PEAK_WINDOW_S = (-0.5, 3.0)
"""Peak ratio on real recordings: max |Z| from 0.5 s before to 3 s after the P arrival."""
REAL_BAND_HZ = (1.0, 45.0)
TOLERANCE_S = 0.5

DenoiseFn = Callable[[np.ndarray, int], np.ndarray]
"""``fn(windows (n, 3, N) counts, steps) -> denoised windows``, e.g. ``lambda x, k: den.denoise_windows(x, k).x0``."""


@dataclass
class RealSet:
    """Unmixed windows ``x`` ``(n, 3, N)``; ``p`` the P sample per window (-1 none): a label, or a confident raw
    pick (``labelled`` False)."""

    x: np.ndarray
    p: np.ndarray
    labelled: bool
    names: list[str]


def build_source_sets(
    test_by_source: dict[str, list[Recording]],
    snr_levels_db: Sequence[float] = (-15, -10, -5, 0, 5, 10, 20),
    n_noise_only: int = 60,
    seed: int = 12345,
    max_events: int | None = 40,
) -> dict[str, EvalSet]:
    """One mixture set per source (see the module docstring); ``max_events`` bounds each set's events."""
    sets = {}
    all_events = [r for rs in test_by_source.values() for r in rs if r.is_event and event_snr_db(r) >= 15.0]
    for i, (src, recs) in enumerate(test_by_source.items()):
        events = [r for r in recs if r.is_event and event_snr_db(r) >= 15.0]
        foreign = not events
        if foreign:
            events = all_events
        if max_events is not None and len(events) > max_events:
            pick = np.random.default_rng(seed + i).choice(len(events), max_events, replace=False)
            events = [events[j] for j in sorted(pick)]
        noise = [r for r in recs if r.noise_segment() is not None]
        if not events or len(noise) < 2:
            log.warning("source %s: no mixture set (%d events, %d noise recordings)", src, len(events), len(noise))
            continue
        # Noise only from this source's held-out recordings (for foreign events too: its noise is what is tested).
        es = build_eval_set(events, snr_levels_db, n_noise_only, seed=seed + 100 * i, noise_recordings=noise)
        sets[src] = es
        log.info("source %s: %d event windows (%s events), %d noise-only", src, int((~es.noise_only).sum()),
                 "other sources'" if foreign else "own", int(es.noise_only.sum()))
    return sets


def real_windows(
    recs: Sequence[Recording],
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    window_samples: int = 3000,
    seed: int = 4321,
    max_windows: int = 400,
) -> RealSet | None:
    """Unmixed windows of held-out recordings: labelled events cut with P 5-20 s into the window (or as late as
    the trace allows); continuous recordings (no label) cut into consecutive windows, labelled with the confident
    P picks ``predict`` finds on the raw data (``predict`` required for those)."""
    rng = np.random.default_rng(seed)
    xs, ps, names = [], [], []
    events = [r for r in recs if r.is_event]
    if events:
        for r in events:
            n = r.data.shape[1]
            if n < window_samples or not np.any(r.data[2]):
                continue
            start = int(np.clip(r.p_sample - int(rng.uniform(500, 2000)), 0, n - window_samples))  # type: ignore[operator]
            xs.append(r.data[:, start : start + window_samples])
            ps.append(int(r.p_sample) - start)  # type: ignore[arg-type]
            names.append(r.name)
        labelled = True
    else:
        if predict is None:
            raise ValueError("continuous recordings need a picker to find their clear P arrivals")
        for r in recs:
            for s in range(0, r.data.shape[1] - window_samples + 1, window_samples):
                xs.append(r.data[:, s : s + window_samples])
                names.append(f"{r.name}+{s}")
        if not xs:
            return None
        x = np.stack(xs).astype(np.float32)
        probs = predict(x)
        from models.picker import find_picks

        best: dict[Any, Any] = {}
        for b, ph, sample, prob in find_picks(probs, CONFIDENT_P, 1.1):
            if ph == "P" and prob > best.get(b, (0, 0.0))[1]:
                best[b] = (sample, prob)
        ps = [best[b][0] if b in best else -1 for b in range(len(x))]
        labelled = False
        xs = list(x)
    if not xs:
        return None
    x = np.stack(xs).astype(np.float32)
    p = np.array(ps)
    if len(x) > max_windows:
        keep = np.sort(rng.choice(len(x), max_windows, replace=False))
        x, p, names = x[keep], p[keep], [names[i] for i in keep]
    return RealSet(x, p, labelled, names)


# ---------------------------------------------------------------------------------------------- metrics


def _picks_by_window(picks, phase: str = "P") -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for b, ph, sample, _ in picks:
        if ph == phase:
            out.setdefault(int(b), []).append(int(sample))
    return out


def _median(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else math.nan


def mixture_metrics(out: np.ndarray, es: EvalSet, picks, sampling_rate_hz: float = 100.0) -> dict[str, Any]:
    """Per SNR bin and overall: P recall (0.5 s), P residual, SNR gain, CC, median Z peak ratio; noise-only picks."""
    ev = np.flatnonzero(~es.noise_only)
    nz = np.flatnonzero(es.noise_only)
    tol = TOLERANCE_S * sampling_rate_hz
    wm = waveform_metrics(out[ev], es.clean[ev], es.noisy[ev])
    levels = sorted({float(v) for v in es.snr_db[ev]})
    by_bin = {}
    for lv in levels:
        sel = es.snr_db[ev] == lv
        pm = pick_metrics(picks, es.p, "P", tol, ev[sel], sampling_rate_hz)
        by_bin[f"{lv:g}"] = {
            "n": int(sel.sum()),
            "p_recall": pm["recall"],
            "p_hits": int(round(pm["recall"] * pm["n_true"])) if pm["n_true"] else 0,
            "p_residual_mean_s": pm["residual_mean_s"],
            "p_residual_std_s": pm["residual_std_s"],
            "snr_gain_db": _mean(wm["snr_gain_db"][sel]),
            "cc_z": _mean(wm["cc_z"][sel]),
            "peak_ratio_z_median": _median(wm["peak_ratio_z"][sel]),
        }
    allp = pick_metrics(picks, es.p, "P", tol, ev, sampling_rate_hz)
    by_win = _picks_by_window(picks)
    noise_p = int(sum(len(by_win.get(int(i), [])) for i in nz))
    # The noise-only windows are crops of a few recordings: a feature of one recording can be picked in several
    # windows. How many distinct recordings drew a pick says how many independent cases the count rests on.
    noise_rec = {es.names[int(i)] for i in nz}
    picked_rec = {es.names[int(i)] for i in nz if by_win.get(int(i))}
    return {
        "by_snr": by_bin,
        "p_recall": allp["recall"],
        "p_residual_mean_s": allp["residual_mean_s"],
        "p_residual_std_s": allp["residual_std_s"],
        "snr_gain_db": _mean(wm["snr_gain_db"]),
        "cc_z": _mean(wm["cc_z"]),
        "noise_windows": int(len(nz)),
        "noise_p_picks": noise_p,
        "noise_recordings": len(noise_rec),
        "noise_p_pick_recordings": len(picked_rec),
    }


def real_metrics(out: np.ndarray, rs: RealSet, picks, raw_picks, sampling_rate_hz: float = 100.0) -> dict[str, Any]:
    """P recall against the labels (or confident raw picks kept), median Z peak ratio against the raw 1-45 Hz band
    around P, and P picks with no raw P pick within 0.5 s (invented)."""
    tol = TOLERANCE_S * sampling_rate_hz
    has_p = np.flatnonzero(rs.p >= 0)
    pm = pick_metrics(picks, rs.p, "P", tol, has_p, sampling_rate_hz)
    ref = bandpass(rs.x[:, 2], sampling_rate_hz, REAL_BAND_HZ)
    a, b = (int(v * sampling_rate_hz) for v in REAL_PEAK_WINDOW_S)
    ratios = []
    for i in has_p:
        lo, hi = max(0, rs.p[i] + a), min(rs.x.shape[-1], rs.p[i] + b)
        den = float(np.abs(out[i, 2, lo:hi] - out[i, 2].mean()).max())
        r = float(np.abs(ref[i, lo:hi]).max())
        ratios.append(den / r if r > 0 else math.nan)
    raw_by = _picks_by_window(raw_picks)
    invented = 0
    n_p = 0
    for bwin, samples in _picks_by_window(picks).items():
        for s in samples:
            n_p += 1
            if not any(abs(s - r) <= tol for r in raw_by.get(bwin, [])):
                invented += 1
    return {
        "n_windows": int(len(rs.x)),
        "n_arrivals": int(len(has_p)),
        "labelled": rs.labelled,
        "p_recall": pm["recall"],
        "p_residual_mean_s": pm["residual_mean_s"],
        "peak_ratio_z_median": _median(ratios),
        "p_picks": n_p,
        "p_picks_without_raw_pick": invented,
    }


# ----------------------------------------------------------------------------------------------- driver


def evaluate_sources(
    sets: dict[str, EvalSet],
    reals: dict[str, RealSet],
    denoisers: dict[str, tuple[DenoiseFn, Sequence[int]] | tuple[DenoiseFn, Sequence[int], float | None]],
    picker,
    p_threshold: float = 0.3,
    only: dict[str, Sequence[str]] | None = None,
    sampling_rate_hz: float = 100.0,
) -> dict[str, Any]:
    """Score ``raw``, ``bandpass`` and each denoiser ``label`` at each step count (method ``label/k``) on every
    source's mixtures and real recordings. ``only`` restricts a label to some sources (a leave-one-source-out model
    is scored on its held-out source). ``picker`` needs ``predict`` (probabilities) and ``find_picks``.

    ``p_threshold`` is PhaseNet's P threshold. A denoiser given as ``(fn, steps, unconfirmed)`` is picked as the
    daemon picks its output: a P pick the raw input does not confirm needs ``unconfirmed``
    (:func:`models.peaks.confirm_p`; the weights' ``unconfirmed_p_threshold``); one given as ``(fn, steps)``, or
    with None, is picked at ``p_threshold`` alone. The policies are in ``result["p_confirmation_by_method"]``
    (the unconfirmed threshold, or None)."""
    result: dict[str, Any] = {"p_threshold": p_threshold, "tolerance_s": TOLERANCE_S, "sources": {},
                              "p_confirmation_by_method": {}}
    unconfirmed: dict[str, float | None] = {"raw": None, "bandpass": None}
    for src in sorted(set(sets) | set(reals)):
        entry: dict[str, Any] = {"mixtures": {}, "real": {}}
        pairs: tuple[tuple[str, Any], ...] = (("mixtures", sets.get(src)), ("real", reals.get(src)))
        for kind, data in pairs:
            if data is None:
                continue
            x = data.noisy if kind == "mixtures" else data.x
            outs = {"raw": x, "bandpass": bandpass(x, sampling_rate_hz)}
            for label, spec in denoisers.items():
                if only and label in only and src not in only[label]:
                    continue
                fn, steps = spec[0], spec[1]
                own = spec[2] if len(spec) > 2 else None
                for k in steps:
                    outs[f"{label}/{k}"] = np.concatenate([fn(x[i : i + 32], k) for i in range(0, len(x), 32)])
                    unconfirmed[f"{label}/{k}"] = None if own is None else float(own)
            raw_picks = None
            raw_probs = picker.predict(x)
            for name, out in outs.items():
                probs = raw_probs if name == "raw" else picker.predict(out)
                if unconfirmed[name] is not None:
                    probs = confirm_p(probs, raw_probs, p_threshold, unconfirmed[name],  # type: ignore[arg-type]
                                      round(CONFIRM_WITHIN_S * sampling_rate_hz))
                picks = picker.find_picks(probs, p_threshold, 1.1)
                if name == "raw":
                    raw_picks = picks
                if kind == "mixtures":
                    entry[kind][name] = mixture_metrics(out, data, picks, sampling_rate_hz)
                else:
                    entry[kind][name] = real_metrics(out, data, picks, raw_picks, sampling_rate_hz)
            if kind == "mixtures":
                entry["mixture_counts"] = {"event_windows": int((~data.noise_only).sum()),
                                           "noise_windows": int(data.noise_only.sum())}
        result["sources"][src] = entry
        log.info("evaluated source %s", src)
    result["p_confirmation_by_method"] = dict(sorted(unconfirmed.items()))
    return result


# ------------------------------------------------------------------------------------------------ report


def _f(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _recordings(m: dict[str, Any]) -> str:
    if "noise_recordings" not in m:  # a report written before the count existed
        return ""
    return f" ({m['noise_p_pick_recordings']} of {m['noise_recordings']})"


def source_markdown(result: dict[str, Any]) -> str:
    lines = []
    confirmed = {k: v for k, v in (result.get("p_confirmation_by_method") or {}).items() if v is not None}
    lines += [f"PhaseNet P threshold {result.get('p_threshold', 0.3):g}."]
    if confirmed:
        lines[-1] += (" Picks on " + ", ".join(f"{k} (unconfirmed: {v:g})" for k, v in confirmed.items())
                      + " stand where PhaseNet on the raw input reaches the threshold within "
                      f"{CONFIRM_WITHIN_S:g} s, or where their own P probability reaches the unconfirmed threshold.")
    lines.append("")
    for src, e in result["sources"].items():
        lines += [f"## {src}", ""]
        mix = e.get("mixtures", {})
        if mix:
            levels = list(next(iter(mix.values()))["by_snr"])
            c = e.get("mixture_counts", {})
            lines += [f"Mixtures: {c.get('event_windows')} event windows, {c.get('noise_windows')} noise-only windows.",
                      "", "P recall (0.5 s) by input SNR (dB), P picks on noise-only windows:", "",
                      "| method | " + " | ".join(levels) + " | all | P res. (s) | SNR gain (dB) | CC (Z) | noise P picks "
                      "(recordings with one) |",
                      "|---|" + "---|" * (len(levels) + 5)]
            for name, m in mix.items():
                lines.append(f"| {name} | " + " | ".join(_f(m["by_snr"][lv]["p_recall"]) for lv in levels)
                             + f" | {_f(m['p_recall'])} | {_f(m['p_residual_mean_s'])}±{_f(m['p_residual_std_s'])}"
                             f" | {_f(m['snr_gain_db'], 1)} | {_f(m['cc_z'])} | {m['noise_p_picks']}"
                             f"{_recordings(m)} |")
            lines += ["", "Median Z peak ratio output / clean by input SNR (dB):", "",
                      "| method | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
            for name, m in mix.items():
                lines.append(f"| {name} | " + " | ".join(_f(m["by_snr"][lv]["peak_ratio_z_median"]) for lv in levels)
                             + " |")
            lines.append("")
        real = e.get("real", {})
        if real:
            first = next(iter(real.values()))
            what = "labelled P" if first["labelled"] else f"confident raw P picks (p >= {CONFIDENT_P})"
            lines += [f"Real recordings, unmixed: {first['n_windows']} windows, {first['n_arrivals']} arrivals "
                      f"({what}).", "",
                      "| method | P recall / kept | median peak ratio vs raw 1-45 Hz | P picks | of which no raw pick |",
                      "|---|---|---|---|---|"]
            for name, m in real.items():
                lines.append(f"| {name} | {_f(m['p_recall'])} | {_f(m['peak_ratio_z_median'])} | {m['p_picks']} | "
                             f"{m['p_picks_without_raw_pick']} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def write_source_report(result: dict[str, Any], out_dir: str | Path, title: str = "Denoiser evaluation by source"
                        ) -> dict[str, Path]:
    """``sources.json``, ``sources.md`` and ``sources.png`` (P recall and peak ratio by input SNR per source)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "sources.json", "markdown": out_dir / "sources.md", "png": out_dir / "sources.png"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    md = f"# {title}\n\n" + source_markdown(result)
    if "gate" in result:
        from models.gate import gate_markdown

        md += "\n" + gate_markdown(result["gate"])
    paths["markdown"].write_text(md)
    _figure(result, paths["png"])
    return paths


def _figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    srcs = [s for s, e in result["sources"].items() if e.get("mixtures")]
    if not srcs:
        return
    fig, axes = plt.subplots(2, len(srcs), figsize=(3.6 * len(srcs), 5.2), squeeze=False)
    for j, src in enumerate(srcs):
        mix = result["sources"][src]["mixtures"]
        for name, m in mix.items():
            lv = [float(v) for v in m["by_snr"]]
            style = "--" if name in ("raw", "bandpass") else "-o"
            axes[0, j].plot(lv, [m["by_snr"][k]["p_recall"] for k in m["by_snr"]], style, ms=3, label=name)
            axes[1, j].plot(lv, [m["by_snr"][k]["peak_ratio_z_median"] for k in m["by_snr"]], style, ms=3,
                            label=name)
        axes[0, j].set_title(src, fontsize=9)
        axes[1, j].axhspan(0.8, 1.25, color="g", alpha=0.1)
        axes[0, j].set_ylabel("P recall (0.5 s)", fontsize=8)
        axes[1, j].set_ylabel("median peak ratio Z", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xlabel("input SNR (dB)", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
