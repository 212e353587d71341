"""``coldstream ingest``: scale-out front end: SeedLink -> windows on a Redis stream; worker results ->
stitched denoised streams and picks.

Pushes every window to ``{prefix}:windows`` (consumer group ``workers``; deduplicated by window id) for
any number of ``coldstream worker`` processes, and collects their results from ``{prefix}:results``
(group ``collector``) into the same per-station stitchers, pick detector and Redis outputs as
``coldstream run``. SeedLink state advances only behind published outputs, as in ``coldstream run``.
"""

from __future__ import annotations

import argparse
import sys

from streamer.commands import add_config_arguments, load_settings_or_report

HELP = "Scale-out ingest: SeedLink -> windows on a Redis stream; worker results -> stitched outputs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = load_settings_or_report(args, "ingest")
    if settings is None:
        return 2
    from streamer.service import Service, ServiceError

    service = Service(settings, role="ingest")
    try:
        service.load_models()
    except ServiceError as exc:
        print(f"coldstream ingest: {exc}", file=sys.stderr)
        return 2
    return service.run()
