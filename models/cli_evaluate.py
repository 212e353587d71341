"""``coldstream evaluate``: held-out metrics, a Markdown table and figures for a denoiser."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

HELP = "evaluate a denoiser on a held-out station split against the noisy input and a 1-20 Hz band-pass"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder of labelled .npz events, or a SeisBench dataset folder")
    parser.add_argument(
        "--split-file",
        default=None,
        help="station split JSON written by `coldstream train` (default: the split recorded with the weights)",
    )
    parser.add_argument("--split", default="test", choices=["test", "val", "train"], help="which split to use")
    parser.add_argument("--out", required=True, help="output folder: metrics.json, report.md, PNG figures")
    parser.add_argument("--weights", default=None, help="denoiser .pt (default: the shipped weights)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="network calls to compare")
    parser.add_argument(
        "--residual-mix", type=float, default=None, help="share of the removed part kept (default: the weights' own)"
    )
    parser.add_argument("--picker-cache", default=None, help="SeisBench cache folder holding PhaseNet 'original'")
    parser.add_argument("--picker-weights", default="original", help="PhaseNet weights name")
    parser.add_argument("--p-threshold", type=float, default=0.3)
    parser.add_argument("--s-threshold", type=float, default=0.3)
    parser.add_argument(
        "--unconfirmed-p-threshold", type=float, default=None,
        help="P a pick on the denoised output needs where PhaseNet on the raw input does not confirm it (the pick "
        "policy; default: each weights' own, as the daemon; at or below --p-threshold: off, P at the threshold alone)",
    )
    parser.add_argument("--snr-levels", type=float, nargs="+", default=[-15, -10, -5, 0, 5, 10], help="input SNRs (dB)")
    parser.add_argument("--noise-windows", type=int, default=40, help="noise-only windows")
    parser.add_argument("--max-events", type=int, default=None, help="use at most this many events (quick runs)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation mixtures")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument(
        "--protocol", action="store_true", help="also score 60-s multi-station cases through the offline stream path"
    )
    parser.add_argument("--protocol-steps", type=int, nargs="+", default=[1, 4], help="steps for --protocol")
    parser.add_argument("--protocol-noise-cases", type=int, default=20, help="noise-only cases for --protocol")
    parser.add_argument("--no-progress", action="store_true")
    from models.cli_evaluate_sources import add_source_arguments

    add_source_arguments(parser)


def apply_pick_policy(den: Any, args: argparse.Namespace) -> None:
    """``--unconfirmed-p-threshold`` over the weights' own (``picker.unconfirmed_p_threshold`` for the daemon)."""
    value = getattr(args, "unconfirmed_p_threshold", None)
    if value is not None:
        den.unconfirmed_p_threshold = None if value <= args.p_threshold else float(value)


def run(args: argparse.Namespace, denoise_stream: Any = None) -> int:
    """``denoise_stream``: the offline stream path (``streamer.offline``) the ``--protocol`` cases go
    through; the ``coldstream evaluate`` command passes it (``models`` cannot import the service)."""
    if getattr(args, "sources", None):
        from models.cli_evaluate_sources import run_sources

        return run_sources(args)
    import torch

    from models.cli_train import default_picker_cache
    from models.data import build_eval_set, load_recordings, read_split, select
    from models.denoiser import Denoiser
    from models.errors import DataError, ModelsError
    from models.evaluate import (
        EvalConfig,
        build_protocol_cases,
        evaluate,
        evaluate_protocol,
        markdown_table,
        protocol_markdown,
        write_report,
    )
    from models.picker import Picker

    torch.set_num_threads(args.threads)
    try:
        den = Denoiser.load(args.weights, device=args.device, residual_mix=args.residual_mix)
        apply_pick_policy(den, args)
        if args.split_file is not None:
            split = read_split(args.split_file)
        else:
            split = den.meta.get("training", {}).get("split_stations")
            if not split:
                raise DataError(f"{den.name} records no station split; pass --split-file")
        recs = select(load_recordings(args.data), split[args.split])
        if not recs:
            raise DataError(f"no recordings of the {args.split!r} split's stations under {args.data}")
        if args.max_events is not None:
            events = [r for r in recs if r.is_event][: args.max_events]
            recs = events + [r for r in recs if r not in events][: max(2, args.max_events)]
        es = build_eval_set(recs, args.snr_levels, args.noise_windows, seed=args.seed)
        picker = Picker("phasenet", args.picker_weights, cache_root=args.picker_cache or default_picker_cache())
        steps = sorted({max(1, min(int(k), den.n_train_steps)) for k in args.steps})
        cfg = EvalConfig(
            steps=steps, p_threshold=args.p_threshold, s_threshold=args.s_threshold, progress=not args.no_progress
        )
        result = evaluate(es, den, picker, cfg)
        paths = write_report(result, es, args.out)
        if args.protocol:
            cases = build_protocol_cases(recs, seed=args.seed + 1, n_noise_only=args.protocol_noise_cases)
            if denoise_stream is None:
                raise DataError("--protocol needs the stream path: run it as `coldstream evaluate`")
            proto = evaluate_protocol(cases, den, picker, args.protocol_steps, args.p_threshold, args.s_threshold,
                                      denoise_stream=denoise_stream)
            (paths["json"].parent / "protocol.json").write_text(json.dumps(proto, indent=1) + "\n")
            with open(paths["markdown"], "a") as f:
                f.write("\n## Stream protocol\n\n" + protocol_markdown(proto))
    except ModelsError as exc:
        log.error("evaluation failed: %s", exc)
        return 2
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    log.info("evaluation written to %s\n%s", paths["markdown"].parent, markdown_table(clean))
    return 0


if __name__ == "__main__":  # pragma: no cover - `coldstream evaluate` is the usual entry point
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="coldstream evaluate", description=HELP)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
