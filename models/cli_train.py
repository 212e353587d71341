"""``coldstream train``: train the cold-diffusion denoiser on labelled events."""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)

HELP = "train the cold-diffusion denoiser (CPU or CUDA; bounded by steps and minutes; resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="folder of labelled .npz events, a SeisBench dataset folder, or (with --sources) the data folder "
        "holding the source folders",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        default=None,
        help="train on these sources under --data together (phasenet-ncedc seisdae-stead cx-continuous-1h), "
        "split by station within each",
    )
    parser.add_argument("--architecture", choices=["unet", "mask"], default="unet",
                        help="unet: waveform U-Net (v1); mask: bounded STFT gain on the observation (v2)")
    parser.add_argument("--mask-n-fft", type=int, default=64,
                        help="mask model: STFT size in samples (64: 1.6 Hz bins at 100 Hz, as v2; 128: 0.8 Hz)")
    parser.add_argument("--mask-hop", type=int, default=16, help="mask model: STFT hop in samples (default 16)")
    parser.add_argument("--chain-steps", type=int, nargs="+", default=[],
                        help="train the sampler's chains as used: step counts K drawn per batch (e.g. 1 2 4)")
    parser.add_argument("--chain-probabilities", type=float, nargs="+", default=[],
                        help="probability of each --chain-steps value (default equal)")
    parser.add_argument("--snapshot-minutes", type=float, nargs="+", default=[],
                        help="also export the weights as they are after these many minutes (budget-matched copies)")
    parser.add_argument("--asym-weight", type=float, default=0.0,
                        help="weight of the asymmetric STFT-magnitude term (erased signal costs more)")
    parser.add_argument("--keep-weight", type=float, default=0.0,
                        help="weight of the keep term: the share of the clean signal lost on cells where it stands "
                             "--keep-db above the noise, every such cell alike (a learned guard; 0 = off)")
    parser.add_argument("--keep-db", type=float, default=6.0,
                        help="keep term: how far (dB) a cell's clean signal must stand above the noise (default 6)")
    parser.add_argument("--out", required=True, help="run folder: split.json, checkpoints, exported weights, log")
    parser.add_argument("--max-minutes", type=float, default=45.0, help="wall-clock bound (default 45)")
    parser.add_argument("--max-steps", type=int, default=1_000_000, help="optimizer-step bound")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the pairs and the weights")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt.pt when present")
    parser.add_argument("--split-file", default=None, help="use this station split (JSON) instead of a new one")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train-steps", type=int, default=16, help="T, the number of degradation levels")
    parser.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--unfold-weight", type=float, default=0.5, help="weight of the unfolded (2nd-step) term")
    parser.add_argument("--stft-weight", type=float, default=0.15, help="weight of the multi-resolution STFT term")
    parser.add_argument("--picker-weight", type=float, default=2.0, help="weight of the PhaseNet term (0 = off)")
    parser.add_argument(
        "--false-pick-weight",
        type=float,
        default=0.0,
        help="extra weight of the PhaseNet term where the output is picked more than the clean target (0 = symmetric)",
    )
    parser.add_argument(
        "--picker-mix", type=float, default=0.0,
        help="score the PhaseNet term on pred + R * (y - pred), the output as residual mix R makes it (default 0)",
    )
    parser.add_argument(
        "--picker-mix-both", action="store_true",
        help="with --picker-mix: score the PhaseNet term on the network's own output and on the mixed one (mean)",
    )
    parser.add_argument(
        "--train-guard", type=float, nargs=2, default=[], metavar=("LO_DB", "HI_DB"),
        help="mask model: train with the guard in the loop (as guard_db at inference); exported with the weights",
    )
    parser.add_argument("--train-guard-max-hz", type=float, default=None, help="with --train-guard: guard_max_hz")
    parser.add_argument("--train-guard-smooth-s", type=float, default=None, help="with --train-guard: guard_smooth_s")
    parser.add_argument(
        "--noise-only-share", type=float, default=None, help="share of noise-only windows (target zero; default 0.15)"
    )
    parser.add_argument(
        "--init-weights", default=None, help="start from these exported weights (fine-tuning; same architecture and T)"
    )
    parser.add_argument(
        "--picker-cache",
        default=None,
        help="SeisBench cache folder with PhaseNet 'original' (default: $COLDSTREAM_SHARED_DIR/data/seisbench-weights)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_picker_cache() -> str | None:
    shared = os.environ.get("COLDSTREAM_SHARED_DIR")
    if shared and os.path.isdir(os.path.join(shared, "data", "seisbench-weights")):
        return os.path.join(shared, "data", "seisbench-weights")
    return None


def run(args: argparse.Namespace) -> int:
    from models.errors import ModelsError
    from models.data import PairConfig
    from models.train import TrainConfig, train

    pairs = PairConfig()
    if args.noise_only_share is not None:
        pairs.noise_only_share = args.noise_only_share
    try:
        cfg = TrainConfig(
            data=args.data,
            out=args.out,
            seed=args.seed,
            max_minutes=args.max_minutes,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            n_train_steps=args.n_train_steps,
            schedule=args.schedule,
            base_channels=args.base_channels,
            unfold_weight=args.unfold_weight,
            stft_weight=args.stft_weight,
            picker_weight=args.picker_weight,
            false_pick_weight=args.false_pick_weight,
            picker_mix=args.picker_mix,
            picker_mix_both=args.picker_mix_both,
            train_guard_db=tuple(args.train_guard),
            train_guard_max_hz=args.train_guard_max_hz,
            train_guard_smooth_s=args.train_guard_smooth_s,
            init_weights=args.init_weights,
            pairs=pairs,
            architecture=args.architecture,
            mask_n_fft=args.mask_n_fft,
            mask_hop=args.mask_hop,
            sources=tuple(args.sources) if args.sources else None,
            chain_steps=tuple(args.chain_steps),
            chain_probabilities=tuple(args.chain_probabilities),
            asym_weight=args.asym_weight,
            keep_weight=args.keep_weight,
            keep_db=args.keep_db,
            snapshot_minutes=tuple(args.snapshot_minutes),
            picker_cache=args.picker_cache or default_picker_cache(),
            device=args.device,
            threads=args.threads,
            split_file=args.split_file,
            resume=args.resume,
            progress=not args.no_progress,
        )
        path = train(cfg)
    except ModelsError as exc:
        log.error("training failed: %s", exc)
        return 2
    log.info("weights written to %s", path)
    return 0


if __name__ == "__main__":  # pragma: no cover - `coldstream train` is the usual entry point
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="coldstream train", description=HELP)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
