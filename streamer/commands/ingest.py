"""``coldstream ingest``: scale-out front end: SeedLink -> windows on a Redis stream; worker results ->
stitched denoised streams and picks.

Pushes every window to ``{prefix}:windows`` (consumer group ``workers``; deduplicated by window id) for
any number of ``coldstream worker`` processes, and collects their results from ``{prefix}:results``
(group ``collector``) into the same per-station stitchers, pick detector and Redis outputs as
``coldstream run``. SeedLink state advances only behind published outputs, as in ``coldstream run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from streamer.config import ConfigError, load_settings

HELP = "Scale-out ingest: SeedLink -> windows on a Redis stream; worker results -> stitched outputs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"coldstream ingest: {exc}", file=sys.stderr)
        return 2
    if args.log_level is None:
        logging.getLogger().setLevel(settings.service.log_level)
    from streamer.service import Service

    service = Service(settings, role="ingest")
    service.load_models()
    return service.run()
