"""Resident memory of a denoiser process fed random batch sizes, with and without batch padding.

torch caches compiled kernels per input shape (oneDNN primitives on CPU), so a worker that runs every batch
size from 1 to ``--max-batch`` grows until each shape has been seen. The worker pads batches to a multiple of
``worker.pad_batch_multiple``; this script measures both ways, each in a fresh process, on random
``(batch, 3, 3000)`` windows with 1-3 sampler steps, and prints RSS before/after and real windows per second.

    .venv/bin/python bench/batch_shapes.py                   # 90 s per setting, pad multiples 1 and 8
    .venv/bin/python bench/batch_shapes.py --seconds 30 --pad 1 4 8 16
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def run_one(pad: int, seconds: float, max_batch: int, threads: int, device: str, weights: str | None) -> str:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models.denoiser import Denoiser
    from streamer.steps import padded_batch_size

    torch.set_num_threads(threads)
    den = Denoiser.load(weights, device=device)
    rng = np.random.default_rng(0)
    start_mb, t0, windows, calls, shapes = rss_mb(), time.perf_counter(), 0, 0, set()
    while time.perf_counter() - t0 < seconds:
        n = int(rng.integers(1, max_batch + 1))
        n_run = padded_batch_size(n, pad, max_batch)  # as the worker pads
        x = (rng.standard_normal((n_run, 3, 3000)) * 100).astype(np.float32)
        den.denoise_windows(x, steps=int(rng.integers(1, 4)))
        windows, calls = windows + n, calls + 1
        shapes.add(n_run)
    rate = windows / (time.perf_counter() - t0)
    return (f"| {pad} | {len(shapes)} | {calls} | {start_mb:.0f} | {rss_mb():.0f} | {rate:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--pad", type=int, nargs="+", default=[1, 8], help="pad multiples to compare (1 = off)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default=None, help="denoiser .pt (default: shipped weights)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(run_one(args.child, args.seconds, args.max_batch, args.threads, args.device, args.weights), flush=True)
        return 0
    print(f"random batch sizes 1-{args.max_batch}, {args.seconds:.0f} s per setting, {args.threads} threads, {args.device}")
    print("| pad multiple | batch shapes run | calls | RSS start MB | RSS end MB | real windows/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for pad in args.pad:
        cmd = [sys.executable, __file__, "--child", str(pad), "--seconds", str(args.seconds),
               "--max-batch", str(args.max_batch), "--threads", str(args.threads), "--device", args.device]
        if args.weights:
            cmd += ["--weights", args.weights]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
