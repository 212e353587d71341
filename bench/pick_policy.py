"""Cost of the pick policy on denoised output, per window: the denoiser step, PhaseNet on the denoised window,
PhaseNet on the raw window (which the policy adds) and the confirmation itself (``models.peaks.confirm_p``, the
rule the pick detector applies to the stacked curves; timed here on whole windows, an upper bound, as the
detector judges each stacked sample once: a third of a window per window at a 10 s stride).

Random ``(batch, 3, 3000)`` windows, shipped weights, after a warm-up; each figure is the mean over
``--repeats`` calls, divided by the batch size. The ratio printed last is the worker's per-window model time
with the policy over without it (denoiser steps + PhaseNet passes + confirmation).

    .venv/bin/python bench/pick_policy.py --seisbench-cache DIR      # CPU, 2 threads, batch 32, 1 step
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000.0


def main(argv: list[str] | None = None) -> int:
    from models.denoiser import Denoiser
    from models.peaks import CONFIRM_WITHIN_S, confirm_p
    from models.picker import Picker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seisbench-cache", type=Path, default=None, help="SeisBench cache with PhaseNet weights")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    den = Denoiser.load()
    picker = Picker("phasenet", "original", cache_root=args.seisbench_cache)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, den.spec.window_samples)).astype(np.float32)
    out = den.denoise_windows(x, steps=args.steps).x0
    pd, pr = picker.predict(out), picker.predict(x)
    within = round(CONFIRM_WITHIN_S * den.spec.sampling_rate_hz)
    n = args.batch
    d = _ms(lambda: den.denoise_windows(x, steps=args.steps), args.repeats) / n
    p = _ms(lambda: picker.predict(out), args.repeats) / n
    r = _ms(lambda: picker.predict(x), args.repeats) / n
    c = _ms(lambda: confirm_p(pd, pr, 0.3, 0.45, within), args.repeats) / n
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {n}, {args.steps} step(s)")
    print(f"per window: denoiser {d:.2f} ms, PhaseNet on the output {p:.2f} ms, PhaseNet on the raw window {r:.2f} ms, "
          f"confirmation {c:.3f} ms")
    print(f"with the policy / without: {(d + p + r + c) / (d + p):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
