"""``coldstream tail``: print picks and per-station latency from Redis as they are published.

One line per pick report (``XREAD BLOCK`` on ``{prefix}:picks``): an onset's provisional reports
(``provisional#0``, then updates ``#1``, ``#2`` as the amplitude seconds arrive), its ``final`` or
``retracted`` report, all with one ``id``, and, every ``--interval`` seconds, one line
with each station's latency: now minus the end time of its newest denoised segment (the
``{prefix}:latest`` hash the publisher keeps beside the per-station ``{prefix}:denoised:*`` streams,
falling back to the newest entry of a station's stream).
Colours only on a terminal; piped output is plain lines, one per event.

Limitations: a reader of the picks stream only (no consumer group: it never acknowledges or steals
entries); the latency line needs the segments' ``end_ns`` field (schema 1); with many stations the
line gets long: narrow it with ``--station``.

Examples::

    coldstream tail --config /etc/coldstream/coldstream.toml
    coldstream tail --url redis://noc-redis:6379/0 --last 20
    coldstream tail --once --last 5          # print the 5 newest picks and the latency line, exit
    coldstream tail --station 'NC.*' --station BK.CMB.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import redis

from streamer.config import ConfigError, RedisSettings, load_settings
from streamer.publish import connect, mask_url
from streamer.schema import EntryDecodeError, StreamKeys, decode_pick, published_ns_of

HELP = "Print picks and per-station latency from the Redis output streams, live."

NS_PER_S = 1_000_000_000
PHASE_STYLE = {"P": "bold cyan", "S": "bold magenta"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (its [redis] section is used)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--url", help="Redis URL (overrides redis.url); a password in it is never printed")
    parser.add_argument("--prefix", help="stream prefix (overrides redis.stream_prefix)")
    parser.add_argument("--last", type=int, default=0, metavar="N", help="first print the N newest picks already stored")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after printing N picks")
    parser.add_argument("--once", action="store_true", help="print what is stored (see --last) and the latency line, then exit")
    parser.add_argument("--interval", type=float, default=5.0, metavar="SECONDS", help="latency line period (default 5)")
    parser.add_argument("--station", dest="stations", action="append", default=[], metavar="PATTERN",
                        help="only these stations (NET.STA.LOC, shell wildcards; repeatable)")
    parser.add_argument("--stale-after", type=float, default=120.0, metavar="SECONDS",
                        help="mark stations whose latency exceeds this (default 120)")


class _Printer:
    """Plain lines when piped, rich colours on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.console: Any = None
        if stream.isatty():
            try:
                from rich.console import Console

                self.console = Console(file=stream, highlight=False, soft_wrap=True)
            except ImportError:  # rich is optional for tail
                self.console = None

    def line(self, plain: str, markup: str | None = None) -> None:
        if self.console is not None and markup is not None:
            self.console.print(markup)
        else:
            self.stream.write(plain + "\n")
            self.stream.flush()


STATUS_STYLE = {"provisional": "yellow", "final": "green", "retracted": "red"}


def format_pick_line(fields: dict[Any, Any]) -> tuple[str, str]:
    """(plain, rich markup) for one pick entry: its lifecycle state (``provisional`` reports and their
    updates, ``final``, ``retracted``), the early-warning fields it carries, and where the latency
    went (onset sample's arrival -> inference -> Redis) when the entry says."""
    pick = decode_pick(fields)
    delay_s = (pick.emitted_ns - pick.time_ns) / NS_PER_S
    status = f"{pick.status}#{pick.update}"
    parts = [
        status, pick.time_iso, pick.station_id, pick.phase, f"p={pick.probability:.2f}", pick.source,
        f"steps={pick.steps}",
    ]
    d = pick.details
    published = published_ns_of(fields)
    if d is not None and d.onset_arrival_ns and published:
        infer = f" (inference +{(d.inference_ns - d.onset_arrival_ns) / NS_PER_S:.1f}s)" if d.inference_ns else ""
        parts.append(f"latency={(published - d.onset_arrival_ns) / NS_PER_S:.1f}s{infer}")
    else:
        parts.append(f"delay={delay_s:.1f}s")
    if d is not None:
        if d.polarity:
            parts.append(f"polarity={d.polarity}")
        if d.snr_db is not None:
            parts.append(f"snr={d.snr_db:.0f}dB")
        if d.amplitudes:
            sec, pd, pv, pa, tc = d.amplitudes[-1]
            parts.append(f"Pd{sec}s={pd:.2e}m Pv={pv:.2e}m/s Pa={pa:.2e}m/s2 tc={tc:.2f}s")
    if pick.reason:
        parts.append(f"reason={pick.reason}")
    parts.append(f"id={pick.pick_id}")
    plain = "pick " + "  ".join(parts)
    style = PHASE_STYLE.get(pick.phase, "bold")
    markup = plain.replace(f"  {pick.phase}  ", f"  [{style}]{pick.phase}[/]  ", 1)
    markup = markup.replace(status, f"[{STATUS_STYLE.get(pick.status, 'bold')}]{status}[/]", 1)
    return plain, markup


def format_latency_line(latest: dict[Any, Any], now_ns: int, stale_after_s: float) -> tuple[str, str]:
    """(plain, rich markup): ``latency NET.STA.LOC 2.1s ...`` sorted by station."""
    if not latest:
        return "latency (no denoised segments yet)", "[dim]latency (no denoised segments yet)[/]"
    plain_parts, markup_parts = [], []
    for station in sorted(latest, key=lambda s: s.decode() if isinstance(s, bytes) else str(s)):
        name = station.decode() if isinstance(station, bytes) else str(station)
        raw = latest[station]
        end_ns = int(raw.decode() if isinstance(raw, bytes) else raw)
        lat = (now_ns - end_ns) / NS_PER_S
        flag = " STALE" if lat > stale_after_s else ""
        plain_parts.append(f"{name} {lat:.1f}s{flag}")
        colour = "red" if flag else ("yellow" if lat > stale_after_s / 4 else "green")
        markup_parts.append(f"{name} [{colour}]{lat:.1f}s{flag}[/]")
    return "latency " + "  ".join(plain_parts), "[bold]latency[/] " + "  ".join(markup_parts)


def newest_segment_ends(client: redis.Redis, keys: StreamKeys) -> dict[Any, Any]:
    """Station -> end time (ns) of its newest denoised segment: the ``latest`` hash, or, where a station
    is missing from it (e.g. written by another producer), the last entry of its denoised stream."""
    ends: dict[Any, Any] = dict(client.hgetall(keys.latest))
    known = {k.decode() if isinstance(k, bytes) else str(k) for k in ends}
    prefix_len = len(keys.denoised(""))
    for key in client.scan_iter(match=keys.denoised_pattern, count=1000, _type="stream"):
        station = (key.decode() if isinstance(key, bytes) else str(key))[prefix_len:]
        if station in known:
            continue
        last: Any = client.xrevrange(key, count=1)
        if last and b"end_ns" in last[0][1]:
            ends[station] = last[0][1][b"end_ns"]
    return ends


def _redis_settings(args: argparse.Namespace) -> RedisSettings:
    settings = load_settings(args.config, args.overrides).redis
    update: dict[str, Any] = {}
    if args.url:
        update["url"] = args.url
    if args.prefix:
        update["stream_prefix"] = args.prefix
    return settings.model_copy(update=update) if update else settings


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    try:
        settings = _redis_settings(args)
    except ConfigError as exc:
        print(f"coldstream tail: {exc}", file=sys.stderr)
        return 2
    keys = StreamKeys(settings.stream_prefix)
    printer = _Printer(stream)
    client = connect(settings)
    try:
        return _follow(client, keys, printer, args)
    except redis.RedisError as exc:
        print(f"coldstream tail: Redis {mask_url(settings.url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _follow(client: redis.Redis, keys: StreamKeys, printer: _Printer, args: argparse.Namespace) -> int:
    printed = 0

    def wanted(station: Any) -> bool:
        if not args.stations:
            return True
        name = station.decode() if isinstance(station, bytes) else str(station)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in args.stations)

    def show(fields: dict[Any, Any]) -> None:
        nonlocal printed
        if not wanted(fields.get(b"station", b"")):
            return
        try:
            printer.line(*format_pick_line(fields))
        except EntryDecodeError as exc:
            printer.line(f"skipped entry: {exc}")
        printed += 1

    def latency() -> None:
        ends = {k: v for k, v in newest_segment_ends(client, keys).items() if wanted(k)}
        printer.line(*format_latency_line(ends, time.time_ns(), args.stale_after))

    newest: Any = client.xrevrange(keys.picks, count=max(1, args.last))
    last_id = newest[0][0] if newest else b"0-0"
    for _, fields in reversed(newest[: args.last] if args.last > 0 else []):
        show(fields)
        if args.count is not None and printed >= args.count:
            return 0
    latency()
    if args.once:
        return 0
    next_latency = time.monotonic() + args.interval
    while args.count is None or printed < args.count:
        block_ms = max(1, int((next_latency - time.monotonic()) * 1000))
        try:
            reply: Any = client.xread({keys.picks: last_id}, count=100, block=block_ms)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            print(f"coldstream tail: Redis unavailable ({exc}); retrying", file=sys.stderr)
            time.sleep(1.0)
            continue
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                show(fields)
                if args.count is not None and printed >= args.count:
                    return 0
        if time.monotonic() >= next_latency:
            latency()
            next_latency = time.monotonic() + args.interval
    return 0
