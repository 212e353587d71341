"""Denoiser throughput: windows per second for batch sizes x step counts, and FLOPs per window-step.

Each cell runs ``Denoiser.denoise_windows`` on random ``(batch, 3, 3000)`` windows (normalization, sampler and
de-normalization included) after a warm-up, repeating until at least ``--min-seconds`` have passed, and reports
windows/s = windows processed / wall time. FLOPs are counted with ``torch.utils.flop_counter`` for one forward
pass of one window (multiply-add = 2 FLOPs); the ceiling is the device's sustained FLOP/s divided by that.

    .venv/bin/python bench/denoiser.py                       # CPU, 2 threads, shipped weights
    .venv/bin/python bench/denoiser.py --device cuda --batch-sizes 1 8 64 256
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

from models.denoiser import Denoiser  # noqa: E402


def flops_per_window_step(den: Denoiser) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, den.spec.n_components, den.spec.window_samples, device=den.device)
    t = torch.ones(1, device=den.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        den.model(x, t)
    return float(counter.get_total_flops())


def windows_per_s(den: Denoiser, batch: int, steps: int, min_seconds: float) -> float:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((batch, den.spec.n_components, den.spec.window_samples)) * 100).astype(np.float32)
    den.denoise_windows(x, steps=steps)
    n, start = 0, time.perf_counter()
    while True:
        den.denoise_windows(x, steps=steps)
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="denoiser .pt (default: shipped weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--min-seconds", type=float, default=1.5)
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--peak-gflops", type=float, default=None, help="the device's peak FP32 GFLOP/s, for the ceiling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den = Denoiser.load(args.weights, device=args.device)
    flops = flops_per_window_step(den)
    table = {b: {k: windows_per_s(den, b, k, args.min_seconds) for k in args.steps} for b in args.batch_sizes}
    device = torch.cuda.get_device_name(0) if den.device.startswith("cuda") else platform.processor() or "cpu"
    if args.json:
        print(json.dumps({"device": device, "threads": args.threads, "flops_per_window_step": flops,
                          "windows_per_s": table}, indent=1))
        return 0
    print(f"Device: {device} ({den.device}, {args.threads} threads), weights {den.name} {den.version}, "
          f"torch {torch.__version__}")
    print(f"FLOPs per window-step: {flops / 1e9:.2f} GFLOP\n")
    print("| batch | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in args.steps) + " |")
    print("|---|" + "---|" * len(args.steps))
    for b, row in table.items():
        print(f"| {b} | " + " | ".join(f"{row[k]:.1f}" for k in args.steps) + " |")
    direct = max(row[args.steps[0]] for row in table.values())
    print(f"\nBest throughput at {args.steps[0]} step(s): {direct:.1f} windows/s, i.e. "
          f"{direct * args.steps[0] * flops / 1e9:.1f} GFLOP/s sustained by the network")
    if args.peak_gflops:
        print(f"Ceiling at {args.peak_gflops:g} GFLOP/s peak: {args.peak_gflops * 1e9 / flops:.0f} window-steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
