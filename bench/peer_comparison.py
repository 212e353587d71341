"""Score a published peer denoiser beside the shipped weights: ORNL's ``wavedenoiser`` (a STEAD-trained time-domain
U-Net, one pass), on the same held-out windows, with the same figures and gate (``coldstream evaluate --sources``),
on the demo events, and in milliseconds per window.

The peer is not a dependency of coldstream (GPL-3.0, its own pinned torch): install it yourself where an
interpreter can import it, for example ``pip install --target PEER_DIR --no-deps wavedenoiser lightning
lightning-utilities torchmetrics``. It runs in a process of its own (``--peer-python``, with ``--peer-path`` put on
its ``PYTHONPATH``) and gets each batch of windows over a pipe, so nothing of it is imported here. Its windows are
this project's: 30 s, E/N/Z counts (the peer scales each window by its own peak, as its ``predict`` does).

Two rows for the peer: ``wavedenoiser`` picked with PhaseNet at the P threshold alone (as its users would), and
``wavedenoiser+policy``, picked with the shipped weights' pick policy (a P pick the raw input does not confirm
needs the weights' unconfirmed threshold), so the comparison with v2 is like for like.

    .venv/bin/python bench/peer_comparison.py --peer-path PEER_DIR --data DATA \\
        --sources phasenet-ncedc seisdae-stead cx-continuous-1h --out OUT --steps 1 \\
        --snr-levels -15 -10 -5 0 5 10 20 --noise-windows 300 --picker-cache DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# run by the peer's interpreter: read (B, 3, N) float32 arrays from stdin (each an 8-byte length, then .npy
# bytes), answer each with the peer's output the same way; the first line out names the package version
_RUNNER = r"""
import io
import sys
from importlib.metadata import version

import numpy as np
import torch

torch.set_num_threads(int(sys.argv[1]))
from wavedenoiser.wavedenoiser import Denoiser

model = Denoiser()
inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write((version("wavedenoiser") + "\n").encode())
out.flush()
while True:
    head = inp.read(8)
    if len(head) < 8:
        break
    x = np.load(io.BytesIO(inp.read(int.from_bytes(head, "little"))))
    with torch.no_grad():
        y = [model.predict(x[i : i + 32]).numpy() for i in range(0, len(x), 32)]
    buf = io.BytesIO()
    np.save(buf, np.concatenate(y).astype(np.float32) if y else x)
    out.write(len(buf.getvalue()).to_bytes(8, "little") + buf.getvalue())
    out.flush()
"""


class PeerProcess:
    """The peer model in a process of its own, fed batches of windows over a pipe."""

    def __init__(self, python: str, path: str | None, threads: int) -> None:
        env = dict(os.environ)
        if path:
            env["PYTHONPATH"] = os.pathsep.join([path, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen([python, "-c", _RUNNER, str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the peer did not start: is wavedenoiser importable by --peer-python with --peer-path?")
        self.version = line.decode().strip()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(x, np.float32))
        self.proc.stdin.write(len(buf.getvalue()).to_bytes(8, "little") + buf.getvalue())
        self.proc.stdin.flush()
        head = self.proc.stdout.read(8)
        if len(head) < 8:
            raise RuntimeError("the peer process ended")
        y = np.load(io.BytesIO(self.proc.stdout.read(int.from_bytes(head, "little"))))
        if y.shape != x.shape:
            raise RuntimeError(f"the peer answered {y.shape} to {x.shape}")
        return y

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class PeerDenoiser:
    """The peer behind the interface the evaluation and the offline stream path use (one pass, no steps)."""

    residual_mix = 0.0
    n_train_steps = 1
    recommended_steps = 1
    spec = None

    def __init__(self, peer: PeerProcess, unconfirmed_p_threshold: float | None = None) -> None:
        self.peer = peer
        self.name = "wavedenoiser"
        self.version = peer.version
        self.unconfirmed_p_threshold = unconfirmed_p_threshold

    def denoise_windows(self, x: np.ndarray, steps: int | None = None, budget_ms: float | None = None) -> Any:
        t0 = time.perf_counter()
        y = self.peer(np.asarray(x, np.float32))
        return SimpleNamespace(x0=y, steps_done=1, elapsed_ms=(time.perf_counter() - t0) * 1000.0)


def demo_ratios(denoiser: Any, picker: Any) -> dict[str, Any]:
    """The demo data through the offline stream path (the daemon's stages): Z peak ratios, denoised / raw, around
    each catalogue P (``models.demo_events``), and whether each P the raw input picks is picked on the output."""
    import obspy

    from models.demo_events import event_ratios
    from streamer.config import load_settings
    from streamer.offline import denoise_stream

    demo = ROOT / "streamer" / "demo_data"
    raw = obspy.read(str(demo / "demo.mseed"))
    catalogue = json.loads((demo / "catalogue.json").read_text())
    settings = load_settings(overrides=["picker.raw_comparison=true", "eew.enabled=false"], environ={})
    res = denoise_stream(raw, denoiser, settings, picker=picker, steps=1)
    rows = event_ratios(raw, res.stream, catalogue)
    picks = [(p.source, p.station_id, p.time_ns) for p in res.picks if p.phase == "P"]
    onsets = {(pk["event_id"], pk["station_id"]): pk["time"] for pk in catalogue["picks"] if pk["phase"] == "P"}
    for row in rows:
        t = round(obspy.UTCDateTime(onsets[(row["event_id"], row["station_id"])]).timestamp * 1e9)
        near = {src for src, sid, tn in picks if sid == row["station_id"] and abs(tn - t) <= 500_000_000}
        row["raw_picked"], row["denoised_picked"] = "raw" in near, "denoised" in near
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    import torch

    from models.cli_evaluate import add_arguments, apply_pick_policy
    from models.cli_evaluate_sources import run_sources
    from models.cli_train import default_picker_cache
    from models.denoiser import Denoiser
    from models.picker import Picker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap)
    ap.add_argument("--peer-python", default=sys.executable, help="interpreter that runs the peer")
    ap.add_argument("--peer-path", default=None, help="folder put on the peer's PYTHONPATH (where it is installed)")
    ap.add_argument("--skip-sources", action="store_true", help="only the demo events and the timing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    peer = PeerProcess(args.peer_python, args.peer_path, args.threads)
    try:
        ours = Denoiser.load(args.weights, device=args.device)
        apply_pick_policy(ours, args)
        plain = PeerDenoiser(peer)
        policy = PeerDenoiser(peer, ours.unconfirmed_p_threshold)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not args.skip_sources:
            args.sources = args.sources or ["phasenet-ncedc", "seisdae-stead", "cx-continuous-1h"]
            code = run_sources(args, {"wavedenoiser": plain, "wavedenoiser+policy": policy})
            if code:
                return code
        # per window on this machine, batch 32, after a warm-up
        x = np.random.default_rng(0).standard_normal((32, 3, ours.spec.window_samples)).astype(np.float32)
        timing = {}
        for label, fn in (("v2, 1 step", lambda: ours.denoise_windows(x, steps=1)),
                          ("wavedenoiser", lambda: plain.denoise_windows(x))):
            fn()
            t0 = time.perf_counter()
            for _ in range(4):
                fn()
            timing[label] = (time.perf_counter() - t0) / 4 / len(x) * 1000.0
        picker = Picker("phasenet", args.picker_weights, cache_root=args.picker_cache or default_picker_cache())
        report: dict[str, Any] = {
            "peer": {"name": "wavedenoiser", "version": peer.version},
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads",
            "ms_per_window": timing,
            "demo": {"wavedenoiser": demo_ratios(plain, picker), "v2": demo_ratios(ours, picker)},
        }
        (out / "peer.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"machine: {report['machine']}")
        print("ms per window (batch 32): " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
        for label, d in report["demo"].items():
            for ev in sorted({r["event_id"] for r in d["rows"]}):
                rows = [r for r in d["rows"] if r["event_id"] == ev]
                missed = [r["station_id"] for r in rows if r["raw_picked"] and not r["denoised_picked"]]
                print(f"demo {label} {ev}: Z peak ratio min {min(r['peak_ratio_z'] for r in rows):.2f}, "
                      f"max {max(r['peak_ratio_z'] for r in rows):.2f}; P picked by raw, missed on output: {missed}")
    finally:
        peer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
