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

from streamer.commands import add_config_arguments, load_settings_or_report

HELP = "Run the live daemon: SeedLink -> denoiser -> PhaseNet -> Redis streams, Prometheus metrics."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = load_settings_or_report(args, "run")
    if settings is None:
        return 2
    from streamer.service import Service, ServiceError

    service = Service(settings)
    try:
        service.load_models()
    except ServiceError as exc:
        print(f"coldstream run: {exc}", file=sys.stderr)
        return 2
    return service.run()
