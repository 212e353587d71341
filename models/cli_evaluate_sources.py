"""``coldstream evaluate --sources ...``: per-source evaluation with the do-no-harm gate.

Loads the named sources under ``--data`` (a data folder holding the source folders), takes each source's
``--split`` (test by default) (the per-source station split recorded with ``--weights``, or ``--split-file``), builds the mixtures and the
real unmixed windows (:mod:`models.source_eval`), scores the raw input, the band-pass, ``--weights`` and every
``--compare-weights LABEL=PATH`` at each step count, and every ``--loso SOURCE=PATH`` (a model trained without
SOURCE) on SOURCE only; then applies the gate (:mod:`models.gate`) to every denoiser method. Writes
``sources.json``, ``sources.md`` and ``sources.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", nargs="+", default=None,
                        help="per-source mode: evaluate on these sources under --data (the data folder), by source "
                        "and input-SNR bin, with the do-no-harm gate")
    parser.add_argument("--compare-weights", nargs="+", default=[], metavar="LABEL=PATH",
                        help="per-source mode: more denoisers to score side by side (e.g. v1=models/weights/...; "
                        "LABEL=PATH@0.1 sets that one's residual mix, LABEL=PATH#1,4 its step counts)")
    parser.add_argument("--loso", nargs="+", default=[], metavar="SOURCE=PATH",
                        help="per-source mode: a leave-one-source-out model (trained without SOURCE), scored on SOURCE")
    parser.add_argument("--score-sources", nargs="+", default=None,
                        help="per-source mode: score only these of --sources (the others still lend their held-out "
                        "events to a source without labelled events)")
    parser.add_argument("--max-events-per-source", type=int, default=40, help="per-source mode: events per source")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from models.errors import DataError

    out = {}
    for it in items:
        if "=" not in it:
            raise DataError(f"{what} expects LABEL=PATH, got {it!r}")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def run_sources(args: argparse.Namespace, extra_denoisers: dict[str, Any] | None = None) -> int:
    """Run the per-source evaluation. ``extra_denoisers``: more denoisers by label, scored beside the weights (any
    object with ``denoise_windows(x, steps=k).x0``, ``n_train_steps``, ``name``, ``version``, ``residual_mix`` and
    ``unconfirmed_p_threshold``: a peer's model behind an adapter, as ``bench/peer_comparison.py`` does)."""
    import torch

    from models.cli_train import default_picker_cache
    from models.denoiser import Denoiser
    from models.errors import DataError, ModelsError
    from models.gate import gate
    from models.picker import Picker
    from models.source_eval import build_source_sets, evaluate_sources, real_windows, write_source_report
    from models.sources import CONTINUOUS, load_continuous_folder, load_sources, read_source_split, select_split

    torch.set_num_threads(args.threads)
    try:
        main = Denoiser.load(args.weights, device=args.device, residual_mix=args.residual_mix)
        if args.split_file is not None:
            split = read_source_split(args.split_file)
        else:
            split = main.meta.get("training", {}).get("split_stations") or {}
            if "sources" not in split:
                raise DataError(f"{main.name} records no per-source split; pass --split-file")
        picker = Picker("phasenet", args.picker_weights, cache_root=args.picker_cache or default_picker_cache())
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        by_source = load_sources(args.data, args.sources, predict=picker.predict,
                                 screen_cache=out_dir / "screen.json")
        test = {src: select_split(recs, split, args.split) for src, recs in by_source.items()}
        for src in [s for s, recs in test.items() if not recs]:
            log.warning("source %s has no %s-split recordings; left out", src, args.split)
            del test[src]
        if not test:
            raise DataError(f"no {args.split}-split recordings in any source")
        sets = build_source_sets(test, args.snr_levels, args.noise_windows, seed=args.seed,
                                 max_events=args.max_events_per_source)
        if args.score_sources:
            sets = {k: v for k, v in sets.items() if k in args.score_sources}
        reals = {}
        for src in [s for s in test if not args.score_sources or s in args.score_sources]:
            if src == CONTINUOUS:
                raw, _ = load_continuous_folder(Path(args.data) / src)
                raw = [r for r in raw if r.station in set(split["sources"][src][args.split])]
                rs = real_windows(raw, predict=picker.predict)
            else:
                rs = real_windows([r for r in test[src] if r.is_event])
            if rs is not None:
                reals[src] = rs
        denoisers = {main.name: main}
        own_steps: dict[str, list[int]] = {}
        for label, path in _pairs(args.compare_weights, "--compare-weights").items():
            path, _, ks = path.partition("#")  # PATH#1,4: only these step counts
            path, _, mix = path.partition("@")  # PATH@0.1: with that residual mix
            denoisers[label] = Denoiser.load(path, device=args.device, residual_mix=float(mix) if mix else None)
            if ks:
                own_steps[label] = [int(k) for k in ks.split(",")]
        only = {}
        for src, path in _pairs(args.loso, "--loso").items():
            label = f"loso-{src}"
            denoisers[label] = Denoiser.load(path, device=args.device, residual_mix=args.residual_mix)
            only[label] = [src]
        for label, d in (extra_denoisers or {}).items():
            if label in denoisers:
                raise DataError(f"denoiser label {label!r} given twice")
            denoisers[label] = d

        from models.cli_evaluate import apply_pick_policy

        for d in denoisers.values():
            apply_pick_policy(d, args)

        def fn_of(den):
            return lambda x, k: den.denoise_windows(x, steps=k).x0

        # each denoiser picked by the policy its weights are released with (as the daemon picks them)
        fns = {label: (fn_of(d), sorted({max(1, min(int(k), d.n_train_steps))
                                         for k in own_steps.get(label, args.steps)}),
                       getattr(d, "unconfirmed_p_threshold", None))
               for label, d in denoisers.items()}
        result = evaluate_sources(sets, reals, fns, picker, p_threshold=args.p_threshold, only=only)  # type: ignore[arg-type]
        result["denoisers"] = {label: {"name": d.name, "version": d.version, "residual_mix": d.residual_mix,
                                       "n_train_steps": d.n_train_steps,
                                       "unconfirmed_p_threshold": getattr(d, "unconfirmed_p_threshold", None)}
                               for label, d in denoisers.items()}
        result["split_seed"] = split.get("seed")
        methods = sorted({m for e in result["sources"].values() for part in ("mixtures", "real")
                          for m in e.get(part, {}) if m not in ("raw", "bandpass")})
        result["gate"] = [gate(result, m).to_dict() for m in methods]
        paths = write_source_report(result, out_dir)
    except ModelsError as exc:
        log.error("evaluation failed: %s", exc)
        return 2
    log.info("per-source evaluation written to %s", paths["markdown"])
    return 0
