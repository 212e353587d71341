"""The ``coldstream`` command: one entry point, subcommands loaded lazily.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen one is imported, so ``coldstream tail`` does not pay for
importing torch. This is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streamer import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("streamer.commands.run", "run the live daemon (SeedLink -> denoiser -> PhaseNet -> Redis)"),
    "demo": ("streamer.commands.demo", "run the live pipeline on bundled data, embedded Redis and shipped weights"),
    "replay-server": ("streamer.commands.replay_server", "serve miniSEED files over SeedLink in (scaled) real time"),
    "ingest": ("streamer.commands.ingest", "scale-out: SeedLink -> windows on a Redis stream"),
    "worker": ("streamer.commands.worker", "scale-out: windows from Redis -> denoise, pick, publish"),
    "tail": ("streamer.commands.tail", "print picks and per-station latency from Redis live"),
    "config": ("streamer.commands.show_config", "print the effective configuration (secrets masked)"),
    "denoise": ("streamer.commands.denoise", "denoise miniSEED/SAC files offline with the live pipeline's code"),
    "train": ("models.cli_train", "train the cold-diffusion denoiser"),
    "evaluate": ("streamer.commands.evaluate", "evaluate the denoiser against raw and band-pass baselines"),
}


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coldstream",
        description="Real-time streaming cold-diffusion seismic denoiser with PhaseNet picks.",
        epilog="Run 'coldstream COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"coldstream {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    known, rest = top.parse_known_args(argv)
    if known.command is None:
        top.print_help()
        return 2
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"coldstream {known.command}", description=getattr(module, "HELP", help_text))
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    configure_logging(getattr(args, "log_level", None) or known.log_level)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
