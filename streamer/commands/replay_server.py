"""``coldstream replay-server``: serve miniSEED files over SeedLink v3 in (scaled) real time."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from pathlib import Path

from streamer.replay import ReplayError, ReplayServer

log = logging.getLogger(__name__)

HELP = (
    "Serve miniSEED files or directories to SeedLink clients (v3: DATA/FETCH/TIME, resume by "
    "sequence number or time, INFO) in real time or at a speed factor."
)


def _speed(text: str) -> float:
    value = float(text)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError("speed must be >= 0 (0 or inf: as fast as possible)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", type=Path, metavar="FILE_OR_DIR", help="miniSEED files or directories")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=18000, help="TCP port (0 = pick a free one)")
    parser.add_argument(
        "--speed", type=_speed, default=1.0,
        help="replay speed factor (1 = real time; 0 or inf = as fast as possible)",
    )
    parser.add_argument("--loop", action="store_true", help="start again from the beginning (times shifted) when done")
    parser.add_argument(
        "--ring-packets", type=int, default=None,
        help="released packets kept per station for resume (default: all)",
    )
    parser.add_argument(
        "--live-start", action="store_true",
        help="clients that give no sequence number or time get only new packets (default: the whole ring)",
    )
    parser.add_argument(
        "--record-s", type=float, default=None,
        help="re-pack so that no record holds more than this many seconds (e.g. 1: what 1-s records cost)",
    )
    parser.add_argument(
        "--record-bytes", type=int, default=None, choices=[256],
        help="serve records holding what 256-byte records hold (in 512-byte SeedLink 3 packets): what smaller "
             "records cost in latency (128-byte records: approximate them with --record-s 0.5)",
    )
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


async def _serve(server: ReplayServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # The port line goes to stdout so scripts using --port 0 can read it.
    sys.stdout.write(f"listening on {server.host}:{server.port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        log.info("stopping replay server (%d connections served, %d packets sent)", server.connections, server.packets_sent)
        await server.stop()


def run(args: argparse.Namespace) -> int:
    try:
        server = ReplayServer(
            args.sources, host=args.host, port=args.port, speed=args.speed,
            loop_forever=args.loop, ring_packets=args.ring_packets, live_start=args.live_start,
            record_s=args.record_s, record_bytes=args.record_bytes,
        )
    except ReplayError as exc:
        print(f"coldstream replay-server: {exc}", file=sys.stderr)
        return 2
    for key, arch in server.stations.items():
        first, last = arch.records[0], arch.records[-1]
        log.info("serving %s: %d records, %s .. %s", key, arch.n, _iso(first.start_ns), _iso(last.end_ns))
    try:
        asyncio.run(_serve(server))
    except OSError as exc:
        print(f"coldstream replay-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _iso(t_ns: int) -> str:
    from streamer.seedlink_state import ns_to_iso

    return ns_to_iso(t_ns)
