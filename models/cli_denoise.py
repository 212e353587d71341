"""``coldstream denoise IN... -o OUT``: denoise miniSEED/SAC files of any length."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

HELP = "denoise miniSEED/SAC files (any length; overlapping windows blended without seams; gaps respected)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="miniSEED or SAC files (anything ObsPy reads)")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder (several inputs)")
    parser.add_argument("--steps", type=int, default=None, help="network calls per window (default: the model's)")
    parser.add_argument("--weights", default=None, help="denoiser .pt (default: the shipped weights)")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the weights file")
    parser.add_argument(
        "--residual-mix", type=float, default=None, help="share of the removed part kept (default: the weights' own)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--hop-samples", type=int, default=None, help="window hop (default: a quarter window)")
    parser.add_argument("--format", default=None, help="output format (default: MSEED, or SAC for .sac outputs)")


def _out_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt.upper()
    return "SAC" if path.suffix.lower() == ".sac" else "MSEED"


def run(args: argparse.Namespace) -> int:
    import obspy

    from models.denoiser import Denoiser
    from models.errors import ModelsError

    try:
        den = Denoiser.load(args.weights, device=args.device, sha256=args.sha256, residual_mix=args.residual_mix)
    except ModelsError as exc:
        log.error("cannot load the denoiser: %s", exc)
        return 2
    out = Path(args.output)
    several = len(args.inputs) > 1
    if several:
        out.mkdir(parents=True, exist_ok=True)
    for src in args.inputs:
        try:
            st = obspy.read(src)
        except Exception as exc:  # ObsPy raises many types for unreadable files
            log.error("cannot read %s: %s", src, exc)
            return 2
        res = den.denoise(st, steps=args.steps, hop_samples=args.hop_samples)
        dest = out / Path(src).name if several else out
        dest.parent.mkdir(parents=True, exist_ok=True)
        fmt = _out_format(dest, args.format)
        if fmt == "SAC" and len(res) > 1:
            for tr in res:
                tr.write(str(dest.with_name(f"{tr.id}.sac")), format="SAC")
        else:
            res.write(str(dest), format=fmt)
        log.info("%s: %d traces denoised -> %s", src, len(res), dest)
    return 0


if __name__ == "__main__":  # pragma: no cover - `coldstream denoise` is the usual entry point
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="coldstream denoise", description=HELP)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
