"""How many seconds of data after a P onset PhaseNet needs before it picks it reliably, at the right edge of a
trailing window (the situation of an early-warning fast path that runs every second on the newest 30 s).

For every labelled event of the sources given (3-component, P known) and every context ``c`` in ``--context-s``,
the trailing window is the 30 s of data ending ``c`` seconds after P; PhaseNet ``original`` (SeisBench weights)
runs on it raw and after the denoiser (one step, the fast path's cheapest setting). A hit is a P probability of
at least ``--threshold`` within ±0.5 s of the labelled P, at a sample that is the highest P probability of that
±0.5 s and has at least ``--guard-s`` of data after it; its time error is that sample minus the label. False
triggers: on the last 30 s of each noise-only recording of the source, any P probability over the threshold
with ``c`` seconds of data after it (sources without noise-only recordings report none).

    .venv/bin/python bench/post_onset_context.py --data ../shared/data --seisbench-cache CACHE

Prints a table (per source, input and context: recall, median and 90th-percentile absolute time error, false
triggers per noise window) and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.data import event_snr_db  # noqa: E402
from models.denoiser import Denoiser  # noqa: E402
from models.picker import Picker, prepare_cache_root  # noqa: E402
from models.sources import load_source  # noqa: E402

WINDOW = 3000
RATE = 100.0


def trailing_windows(recs, context_s: float, noise: bool) -> tuple[np.ndarray, list[int]]:
    """``(n, 3, 3000)`` windows ending ``context_s`` after P of the event recordings, or (``noise``) the last
    30 s of the noise-only recordings; with the P index inside each window (-1 for noise)."""
    out, p_idx = [], []
    c = int(round(context_s * RATE))
    for r in recs:
        if noise:
            end = r.data.shape[1]
        else:
            end = int(r.p_sample) + c
        start = end - WINDOW
        if start < 0 or end > r.data.shape[1]:
            continue
        out.append(r.data[:, start:end])
        p_idx.append(-1 if noise else int(r.p_sample) - start)
    return np.asarray(out, np.float32), p_idx


def score(probs: np.ndarray, p_idx: list[int], threshold: float, guard: int) -> dict[str, float]:
    hits, errs = 0, []
    for pr, p in zip(probs[:, 0], p_idx):
        lo, hi = max(0, p - 50), min(WINDOW - guard, p + 51)
        if hi <= lo:
            continue
        seg = pr[lo:hi]
        i = int(np.argmax(seg))
        if seg[i] >= threshold:
            hits += 1
            errs.append(abs(lo + i - p) / RATE)
    n = len(p_idx)
    return {
        "n": n,
        "recall": hits / n if n else float("nan"),
        "abs_error_median_s": float(np.median(errs)) if errs else float("nan"),
        "abs_error_p90_s": float(np.percentile(errs, 90)) if errs else float("nan"),
    }


def false_triggers(probs: np.ndarray, context: int, threshold: float) -> float:
    """P probability over the threshold anywhere with at least ``context`` samples after it, per window."""
    if not len(probs):
        return float("nan")
    usable = probs[:, 0, : WINDOW - max(context, 1)]
    return float(np.mean(usable.max(axis=1) >= threshold))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the data folder holding the sources")
    ap.add_argument("--sources", nargs="+", default=["phasenet-ncedc", "seisdae-stead"])
    ap.add_argument("--seisbench-cache", type=Path, required=True)
    ap.add_argument("--weights", default=None, help="denoiser weights (default: the shipped ones)")
    ap.add_argument("--context-s", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0])
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--guard-s", type=float, default=0.0, help="data required after the picked sample")
    ap.add_argument("--min-snr-db", type=float, default=-100.0, help="only events at least this clear")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prepare_cache_root(args.seisbench_cache)
    picker = Picker("phasenet", "original", cache_root=args.seisbench_cache)
    den = Denoiser.load(args.weights, device="cpu")
    t0 = time.perf_counter()
    rows = []
    for source in args.sources:
        loaded = load_source(args.data, source)
        recs = [r for r in loaded if r.is_event and r.three_component and event_snr_db(r) >= args.min_snr_db]
        noise_recs = [r for r in loaded if not r.is_event and r.three_component]
        for context_s in args.context_s:
            c = int(round(context_s * RATE))
            guard = min(int(round(args.guard_s * RATE)), c)
            ev, p_idx = trailing_windows(recs, context_s, noise=False)
            nz, _ = trailing_windows(noise_recs, context_s, noise=True)
            for name, fn in (("raw", lambda x: x), ("denoised", lambda x: den.denoise_windows(x, steps=1).x0)):
                probs = picker.predict(fn(ev)) if len(ev) else np.zeros((0, 3, WINDOW), np.float32)
                nprobs = picker.predict(fn(nz)) if len(nz) else np.zeros((0, 3, WINDOW), np.float32)
                row = {"source": source, "input": name, "context_s": context_s,
                       **score(probs, p_idx, args.threshold, guard),
                       "false_triggers_per_noise_window": false_triggers(nprobs, c, args.threshold),
                       "noise_windows": len(nz)}
                rows.append(row)
                print(f"{source:15s} {name:8s} {context_s:5.2f} s  n={row['n']:3d}  recall={row['recall']:.2f}  "
                      f"|err| median={row['abs_error_median_s']:.2f} s p90={row['abs_error_p90_s']:.2f} s  "
                      f"false/noise-window={row['false_triggers_per_noise_window']:.2f}", flush=True)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "denoiser": f"{den.name} {den.version}", "threshold": args.threshold, "guard_s": args.guard_s,
           "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
