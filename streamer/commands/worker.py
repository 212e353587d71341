"""``coldstream worker``: scale-out worker: windows from Redis -> denoise (+ PhaseNet) -> results stream.

Run one per GPU, on any number of hosts, against the Redis that ``coldstream ingest`` writes to. Workers
share the consumer group ``workers`` on ``{prefix}:windows``; a worker that dies leaves its windows
pending, and the others take them over after ``worker.reclaim_idle_s`` (XAUTOCLAIM). Results go to
``{prefix}:results``, deduplicated by window id, so a window processed twice yields one result.
SIGTERM/SIGINT: finish the current batch, then exit 0.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from streamer.config import ConfigError, load_settings

HELP = "Scale-out worker: windows from Redis -> denoiser + PhaseNet -> results stream (one per GPU)."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--consumer", default=None, help="consumer name in the group (default: host-pid)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    import os

    try:
        settings = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"coldstream worker: {exc}", file=sys.stderr)
        return 2
    if args.log_level is None:
        logging.getLogger().setLevel(settings.service.log_level)
    from streamer.metrics import Metrics, serve_metrics
    from streamer.publish import connect
    from streamer.service import ScaleOutWorker, ServiceError, load_denoiser, load_picker, run_scaleout_worker

    try:
        denoiser = load_denoiser(settings)
        picker = load_picker(settings, str(getattr(denoiser, "device", "cpu"))) if settings.picker.enabled else None
    except ServiceError as exc:
        print(f"coldstream worker: {exc}", file=sys.stderr)
        return 2
    metrics = Metrics()
    consumer = args.consumer or f"{socket.gethostname()}-{os.getpid()}"
    worker = ScaleOutWorker(settings, metrics, denoiser, picker, connect(settings.redis), consumer)
    worker.worker.warm_up()
    metrics.ready.set(1)
    server = serve_metrics(metrics, settings.metrics.bind_address, settings.metrics.port) if settings.metrics.enabled else None
    log.info("worker %s ready", consumer)
    code = run_scaleout_worker(worker)
    if server is not None:
        server.shutdown()
    return code
