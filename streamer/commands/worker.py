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

from streamer.commands import add_config_arguments, load_settings_or_report

HELP = "Scale-out worker: windows from Redis -> denoiser + PhaseNet -> results stream (one per GPU)."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--consumer", default=None, help="consumer name in the group (default: host-pid)")


def run(args: argparse.Namespace) -> int:
    import os

    settings = load_settings_or_report(args, "worker")
    if settings is None:
        return 2
    from streamer.metrics import Metrics, serve_metrics
    from streamer.publish import connect
    from streamer.loaders import ServiceError, load_denoiser, load_picker
    from streamer.scaleout.worker import ScaleOutWorker, run_scaleout_worker

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
