"""``coldstream denoise IN... -o OUT [--picks PICKS.json]``: denoise recordings offline with the daemon's code.

The files go through :func:`streamer.offline.denoise_stream`: the same ingest, windowing, worker, stitching
and pick detection as ``coldstream run``, configured by the same settings (``--config``, ``--set``), so the
output equals what the daemon would publish for the same data at the same number of sampler steps.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from streamer.commands import add_config_arguments, load_settings_or_report

log = logging.getLogger(__name__)

HELP = (
    "denoise miniSEED/SAC files with the live pipeline's windowing, stitching and picking "
    "(any length, any number of stations; windows on the absolute grid, gaps respected)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="miniSEED or SAC files (anything ObsPy reads)")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder (several inputs)")
    parser.add_argument(
        "--steps", type=int, default=None,
        help="sampler steps per window (default: worker.max_steps, where unset the weights' recommended steps, "
        "as the daemon)",
    )
    parser.add_argument("--weights", default=None, help="denoiser .pt (default: model.weights, else the shipped ones)")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the weights file")
    parser.add_argument(
        "--residual-mix", type=float, default=None, help="share of the removed part kept (default: the weights' own)"
    )
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: worker.device)")
    parser.add_argument("--format", default=None, help="output format (default: MSEED, or SAC for .sac outputs)")
    parser.add_argument(
        "--picks", type=Path, default=None,
        help="also run PhaseNet (picker.* settings) and write the picks as JSON to this file",
    )
    add_config_arguments(parser)


def _out_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt.upper()
    return "SAC" if path.suffix.lower() == ".sac" else "MSEED"


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides or [])
    if args.weights is not None:
        extra.append(f"model.weights={json.dumps(str(args.weights))}")
    if args.sha256 is not None:
        extra.append(f"model.sha256={json.dumps(args.sha256)}")
    if args.residual_mix is not None:
        extra.append(f"model.residual_mix={args.residual_mix}")
    if args.device is not None:
        extra.append(f"worker.device={json.dumps(args.device)}")
    return extra


def run(args: argparse.Namespace) -> int:
    import obspy

    from streamer.loaders import ServiceError, load_denoiser, load_inventory, load_picker
    from streamer.offline import denoise_stream

    args.overrides = _overrides(args)
    settings = load_settings_or_report(args, "denoise")
    if settings is None:
        return 2
    try:
        den = load_denoiser(settings)
        picker = load_picker(settings, str(getattr(den, "device", "cpu"))) if args.picks is not None else None
        inventory = load_inventory(settings)
    except ServiceError as exc:
        log.error("%s", exc)
        return 2
    out = Path(args.output)
    several = len(args.inputs) > 1
    if several:
        out.mkdir(parents=True, exist_ok=True)
    all_picks: list[dict[str, object]] = []
    for src in args.inputs:
        try:
            st = obspy.read(src)
        except Exception as exc:  # ObsPy raises many types for unreadable files
            log.error("cannot read %s: %s", src, exc)
            return 2
        res = denoise_stream(st, den, settings, picker=picker, steps=args.steps, inventory=inventory)
        missed = {k: v for k, v in res.uncovered_s.items() if v > 0}
        if missed:
            log.info("%s: not covered by any window (grid edges, long gaps): %s", src,
                     ", ".join(f"{k} {v:.1f} s" for k, v in sorted(missed.items())))
        dest = out / Path(src).name if several else out
        dest.parent.mkdir(parents=True, exist_ok=True)
        fmt = _out_format(dest, args.format)
        written = res.stream.split()
        if fmt == "SAC" and len(written) > 1:
            for tr in written:
                tr.write(str(dest.with_name(f"{tr.id}.{tr.stats.starttime.strftime('%Y%m%dT%H%M%S')}.sac")), format="SAC")
        elif len(written):
            written.write(str(dest), format=fmt)
        log.info("%s: %d traces denoised -> %s, %d picks", src, len(written), dest, len(res.picks))
        all_picks.extend(
            {"pick_id": p.pick_id, "station": p.station_id, "phase": p.phase, "time": p.time_iso,
             "time_ns": p.time_ns, "probability": round(p.probability, 4), "source": p.source,
             "denoiser": p.denoiser, "denoiser_version": p.denoiser_version, "picker": p.picker, "steps": p.steps}
            for p in res.picks
        )
    if args.picks is not None:
        args.picks.parent.mkdir(parents=True, exist_ok=True)
        args.picks.write_text(json.dumps(all_picks, indent=1) + "\n")
        log.info("%d picks -> %s", len(all_picks), args.picks)
    return 0
