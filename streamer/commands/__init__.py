"""One module per ``coldstream`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``.

The service commands (``run``, ``ingest``, ``worker``) share their configuration arguments and the way a bad
configuration ends the start: :func:`add_config_arguments` and :func:`load_settings_or_report`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from streamer.config import ConfigError, Settings, load_settings


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, repeated ``--set SECTION.KEY=VALUE`` and ``--log-level``."""
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def load_settings_or_report(args: argparse.Namespace, command: str) -> Settings | None:
    """The validated settings, or None after printing the offending key or file to stderr.

    Applies ``service.log_level`` unless ``--log-level`` was given on the command line."""
    try:
        settings = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"coldstream {command}: {exc}", file=sys.stderr)
        return None
    if args.log_level is None:
        logging.getLogger().setLevel(settings.service.log_level)
    return settings
