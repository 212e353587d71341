"""``coldstream run``: the live daemon (SeedLink -> denoiser -> PhaseNet -> Redis).

Fails fast, with the offending key or file named, on a bad configuration, missing or corrupt
weights, or an unusable picker (set ``picker.enabled = false`` to run without picks). Exit status:
0 after a clean drain (SIGTERM/SIGINT), 1 when the drain was cancelled or timed out, 2 on a start-up
error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from streamer.config import ConfigError, load_settings

HELP = "Run the live daemon: SeedLink -> denoiser -> PhaseNet -> Redis streams, Prometheus metrics."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"coldstream run: {exc}", file=sys.stderr)
        return 2
    if args.log_level is None:
        logging.getLogger().setLevel(settings.service.log_level)
    from streamer.service import Service, ServiceError

    service = Service(settings)
    try:
        service.load_models()
    except ServiceError as exc:
        print(f"coldstream run: {exc}", file=sys.stderr)
        return 2
    return service.run()
