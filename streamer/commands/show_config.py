"""``coldstream config``: print the effective configuration as TOML-like JSON, secrets masked."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamer.config import ConfigError, load_settings, settings_to_toml_dict

HELP = "Print the effective configuration (defaults < TOML file < environment < --set), secrets masked."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"coldstream: {exc}", file=sys.stderr)
        return 2
    json.dump(settings_to_toml_dict(settings), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
