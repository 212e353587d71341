"""A SeedLink v3 replay server: serves miniSEED files to SeedLink clients in (scaled) real time.

``ReplayServer`` reads miniSEED files and directories, orders the records by time, numbers them
per station (``SL%06X`` on the wire, 24-bit, wrapping) and releases each record when its end
time is reached on a replay clock running at ``speed`` times real time (anchored so the first
record's end is "now"; ``speed=0`` or ``inf`` releases everything at once). Released records stay
in a per-station ring, so clients can resume with ``DATA n``, ask for a begin time with
``DATA n begin`` / ``TIME begin [end]`` (a begin before the server started gives everything from
that time on), or dial up with ``FETCH``. A client that gives no sequence number or time gets
the whole ring from its oldest packet (``live_start=True``: only packets released from then on, as
from a live server), so what a client receives does not depend on when it connected.

Commands: HELLO, CAT, CAPABILITIES, STATION, SELECT, DATA, FETCH, TIME, END, BYE, INFO (ID,
CAPABILITIES, STATIONS, STREAMS; XML in miniSEED log records framed ``SLINFO *``/``SLINFO  ``).
Lines may end in CR, LF or CRLF; sequence numbers may carry a ``0x`` prefix. Without STATION the
session is in uni-station mode and gets every station that its SELECT patterns allow.

Fault hooks for tests (plain attributes and methods, not protocol features): ``drop_connections()``,
``fail_after_packets`` (close each connection after that many data packets), ``stalled`` (send no
bytes while true), and ``ring_packets`` (how many released packets per station stay available).

Limitations: v3 only (no SLPROTO 4.0); no BATCH; no INFO GAPS/CONNECTIONS; looping (``loop_forever``)
shifts record start times by rewriting the fixed-header time, so it needs miniSEED 2 records
(which the server always serves: other inputs are re-packed into 512-byte records with ObsPy).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import io
import logging
import math
import re
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from streamer.errors import StreamerError
from streamer.records import NS_PER_S

log = logging.getLogger(__name__)

RECORD_BYTES = 512
SEQ_MODULUS = 1 << 24
SOFTWARE = "SeedLink v3.1 (coldstream replay)"
CAPABILITIES = ("SLPROTO:3.1", "CAP", "EXTREPLY", "NSWILDCARD")
INFO_CAPABILITIES = (
    "dialup", "multistation", "window-extraction", "info:id", "info:capabilities",
    "info:stations", "info:streams",
)
MSEED_SUFFIXES = {".mseed", ".miniseed", ".ms", ".msd", ".seed", ".mseed3", ".ms3"}


class ReplayError(StreamerError):
    """The replay server cannot start (no usable input, bad arguments)."""


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRecord:
    """One 512-byte miniSEED 2 record to serve; times are int ns (end = just after last sample)."""

    network: str
    station: str
    location: str
    channel: str
    start_ns: int
    end_ns: int
    payload: bytes

    @property
    def station_key(self) -> str:
        return f"{self.network}_{self.station}"

    @property
    def seed_id(self) -> str:
        return f"{self.network}.{self.station}.{self.location}.{self.channel}"


def _record_from_bytes(payload: bytes) -> ReplayRecord:
    from pymseed import MS3Record, sourceid2nslc

    rec = MS3Record.parse(payload)
    net, sta, loc, cha = sourceid2nslc(rec.sourceid)
    start_ns = int(rec.starttime)
    n, rate = int(rec.samplecnt), float(rec.samprate)
    end_ns = start_ns + round(n * NS_PER_S / rate) if n > 0 and rate > 0 else start_ns
    return ReplayRecord(net, sta, loc, cha, start_ns, end_ns, bytes(payload))


def _native_512_records(data: bytes) -> list[bytes] | None:
    """Split ``data`` into records if it is exactly a run of 512-byte miniSEED 2 records."""
    from pymseed import MiniSEEDError, MS3Record

    if not data or len(data) % RECORD_BYTES:
        return None
    out = []
    for off in range(0, len(data), RECORD_BYTES):
        chunk = data[off:off + RECORD_BYTES]
        try:
            rec = MS3Record.parse(chunk)
        except (MiniSEEDError, ValueError, BufferError):
            return None
        if rec.reclen != RECORD_BYTES or rec.formatversion != 2:
            return None
        out.append(chunk)
    return out


def _repack_512(path: Path) -> list[bytes]:
    """Re-write a file's traces as 512-byte miniSEED 2 records (Steim2 for integers)."""
    import numpy as np
    from obspy import read

    stream = read(str(path))
    buf = io.BytesIO()
    for tr in stream:
        if tr.data.dtype.kind in "iu":
            tr.data = tr.data.astype(np.int32)
            encoding = "STEIM2"
        else:
            tr.data = tr.data.astype(np.float32)
            encoding = "FLOAT32"
        tr.write(buf, format="MSEED", reclen=RECORD_BYTES, encoding=encoding)
    data = buf.getvalue()
    return [data[i:i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]


def iter_input_files(sources: Sequence[Path | str]) -> Iterable[Path]:
    for src in sources:
        path = Path(src)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and (f.suffix.lower() in MSEED_SUFFIXES or not f.suffix):
                    yield f
        elif path.is_file():
            yield path
        else:
            raise ReplayError(f"{path}: no such file or directory")


def load_records(sources: Sequence[Path | str]) -> list[ReplayRecord]:
    """All data records of the given files/directories as 512-byte miniSEED 2 records.

    Files that are already 512-byte miniSEED 2 are served byte for byte; others (other record
    lengths, miniSEED 3) are re-packed with ObsPy. Unreadable files are skipped with a warning.
    """
    records: list[ReplayRecord] = []
    for path in iter_input_files(sources):
        data = path.read_bytes()
        chunks = _native_512_records(data)
        if chunks is None:
            try:
                chunks = _repack_512(path)
            except Exception as exc:  # ObsPy raises many types for non-miniSEED input
                log.warning("skipping %s: not readable as miniSEED (%s)", path, exc)
                continue
            log.info("%s: re-packed into %d records of %d bytes", path, len(chunks), RECORD_BYTES)
        for chunk in chunks:
            rec = _record_from_bytes(chunk)
            if rec.end_ns > rec.start_ns:  # data records only
                records.append(rec)
    if not records:
        raise ReplayError("no miniSEED data records in " + ", ".join(str(s) for s in sources))
    return records


def shift_record_time(payload: bytes, shift_ns: int) -> bytes:
    """A copy of a miniSEED 2 record with its fixed-header start time moved by ``shift_ns``
    (a multiple of 100 microseconds, the BTIME resolution)."""
    head = payload[20:30]
    year_be = struct.unpack(">H", head[:2])[0]
    fmt = ">HHBBBBH" if 1900 <= year_be <= 2500 else "<HHBBBBH"
    year, doy, hour, minute, sec, _unused, frac = struct.unpack(fmt, head)
    t = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
        days=doy - 1, hours=hour, minutes=minute, seconds=sec, microseconds=frac * 100
    )
    t += dt.timedelta(microseconds=shift_ns // 1000)
    new = struct.pack(
        fmt, t.year, t.timetuple().tm_yday, t.hour, t.minute, t.second, 0, t.microsecond // 100
    )
    return payload[:20] + new + payload[30:]


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------


def _glob_match(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.upper())
    return re.fullmatch(regex, text.upper()) is not None


def _selector_matches(selector: str, location: str, channel: str) -> bool:
    """v3 selector ``[LL]CCC[.T]`` (``?`` wildcards, ``-`` = blank location) against a stream."""
    pattern, _, rtype = selector.partition(".")
    if rtype and rtype.upper() != "D":
        return False
    loc = location.ljust(2)
    if len(pattern) == 5:
        loc_p, cha_p = pattern[:2], pattern[2:]
    elif len(pattern) == 2:
        loc_p, cha_p = pattern, "???"
    else:
        loc_p, cha_p = "??", pattern
    loc_p = loc_p.replace("-", " ")
    if len(cha_p) != 3 or len(loc_p) != 2:
        return False
    return all(p in "?" + t for p, t in zip(loc_p + cha_p, loc + channel.ljust(3), strict=True))


def selection_accepts(selectors: Sequence[str], location: str, channel: str) -> bool:
    """No positive selector or any matches, and no ``!`` selector matches."""
    positive = [s for s in selectors if not s.startswith("!")]
    negative = [s[1:] for s in selectors if s.startswith("!")]
    if positive and not any(_selector_matches(s, location, channel) for s in positive):
        return False
    return not any(_selector_matches(s, location, channel) for s in negative)


def valid_selector(selector: str) -> bool:
    s = selector[1:] if selector.startswith("!") else selector
    pattern, _, rtype = s.partition(".")
    return len(pattern) in (2, 3, 5) and len(rtype) <= 1 and re.fullmatch(r"[A-Za-z0-9?\-]+", pattern) is not None


def parse_seedlink_time(text: str) -> int:
    """``YYYY,MM,DD,hh,mm,ss[.ffff]`` (fields after the day optional) -> int ns."""
    parts = text.strip().split(",")
    if not 3 <= len(parts) <= 6:
        raise ValueError(f"bad SeedLink time {text!r}")
    nums = [int(p) for p in parts[:5]] + [0] * (5 - min(5, len(parts)))
    sec = float(parts[5]) if len(parts) == 6 else 0.0
    base = dt.datetime(nums[0], nums[1], nums[2], nums[3], nums[4], tzinfo=dt.timezone.utc)
    whole = int(math.floor(sec))
    epoch_s = int(base.timestamp()) + whole
    return epoch_s * NS_PER_S + round((sec - whole) * NS_PER_S)


def format_seedlink_time(t_ns: int) -> str:
    d = dt.datetime.fromtimestamp(t_ns // NS_PER_S, tz=dt.timezone.utc)
    return f"{d.year},{d.month:02d},{d.day:02d},{d.hour:02d},{d.minute:02d},{d.second:02d}"


def parse_sequence(text: str) -> int:
    """Hex sequence number, with or without ``0x``."""
    t = text.strip()
    if t.lower().startswith("0x"):
        t = t[2:]
    if not t or not re.fullmatch(r"[0-9A-Fa-f]+", t):
        raise ValueError(f"bad sequence number {text!r}")
    return int(t, 16) % SEQ_MODULUS


# ---------------------------------------------------------------------------------------------
# the archive: records per station, release clock, ring
# ---------------------------------------------------------------------------------------------


class _StationArchive:
    """One station's records; absolute index i = loop * n + k (k in the base list)."""

    def __init__(self, key: str, records: list[ReplayRecord], period_ns: int, first_sequence: int) -> None:
        self.key = key
        self.records = records
        self.n = len(records)
        self.ends = [r.end_ns for r in records]
        self.period_ns = period_ns
        self.first_sequence = first_sequence
        self.released = 0  # absolute count released
        self.max_duration_ns = max(r.end_ns - r.start_ns for r in records)

    def end_ns(self, i: int) -> int:
        loop, k = divmod(i, self.n)
        return self.records[k].end_ns + loop * self.period_ns

    def start_ns(self, i: int) -> int:
        loop, k = divmod(i, self.n)
        return self.records[k].start_ns + loop * self.period_ns

    def record(self, i: int) -> ReplayRecord:
        return self.records[i % self.n]

    def payload(self, i: int) -> bytes:
        loop, k = divmod(i, self.n)
        payload = self.records[k].payload
        return payload if loop == 0 else shift_record_time(payload, loop * self.period_ns)

    def sequence(self, i: int) -> int:
        return (self.first_sequence + i) % SEQ_MODULUS

    def index_of_sequence(self, seq: int, oldest: int) -> int | None:
        """Absolute index of ``seq`` among the available packets and the next one to come."""
        i = self.released - ((self.first_sequence + self.released - seq) % SEQ_MODULUS)
        return i if oldest <= i <= self.released else None

    def window_finished(self, i: int, end_ns: int, looping: bool) -> bool:
        """True when no record from index ``i`` on can start before ``end_ns``."""
        if not looping and i >= self.n:
            return True
        return self.end_ns(i) - self.max_duration_ns >= end_ns

    def first_index_ending_after(self, t_ns: int, lo: int, looping: bool) -> int:
        """Smallest absolute index >= lo whose end is after ``t_ns`` (may be in the future)."""
        loop = lo // self.n
        if looping and self.period_ns > 0:
            loop = max(loop, (t_ns - self.ends[-1]) // self.period_ns)
        while True:
            shift = loop * self.period_ns
            k = bisect.bisect_right(self.ends, t_ns - shift)
            i = max(lo, loop * self.n + k)
            if k < self.n or not looping:
                return i if looping or i < self.n else self.n
            loop += 1


@dataclass
class _Entry:
    """A STATION request in a session (patterns, selectors, start)."""

    net: str
    sta: str
    selectors: list[str] = field(default_factory=list)
    seq: int | None = None
    begin_ns: int | None = None
    end_ns: int | None = None
    mode: str = "DATA"  # DATA, FETCH or TIME
    explicit_start: bool = False

    @property
    def exact(self) -> bool:
        return not any(c in self.net + self.sta for c in "*?")

    def matches(self, arch: _StationArchive) -> bool:
        net, sta = arch.key.split("_", 1)
        return _glob_match(self.net, net) and _glob_match(self.sta, sta)


@dataclass
class _Cursor:
    arch: _StationArchive
    next: int
    selectors: list[str]
    end_ns: int | None
    done: bool = False


class ReplayServer:
    """An asyncio SeedLink v3 server over miniSEED files (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[Path | str],
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        loop_forever: bool = False,
        ring_packets: int | None = None,
        first_sequence: int = 0,
        organization: str = "coldstream replay",
        records: list[ReplayRecord] | None = None,
        live_start: bool = False,
    ) -> None:
        if speed < 0 or math.isnan(speed):
            raise ReplayError("speed must be >= 0 (0 or inf: as fast as possible)")
        self.fast = speed == 0 or math.isinf(speed)
        if loop_forever and self.fast:
            raise ReplayError("--loop needs a finite, positive --speed")
        self.host = host
        self._port = port
        self.speed = speed
        self.loop_forever = loop_forever
        self.ring_packets = ring_packets
        self.organization = organization
        # A client without a sequence number or time starts at the oldest packet in the ring (the
        # replay does not depend on when it connected), or with live_start at the next packet,
        # as a live server does.
        self.live_start = live_start
        all_records = records if records is not None else load_records(sources)
        if not all_records:
            raise ReplayError("nothing to serve")
        first_start = min(r.start_ns for r in all_records)
        last_end = max(r.end_ns for r in all_records)
        # Loop period: the archive's span rounded up to whole seconds (BTIME can shift by it exactly).
        self.period_ns = math.ceil((last_end - first_start) / NS_PER_S) * NS_PER_S if loop_forever else 0
        by_station: dict[str, list[ReplayRecord]] = {}
        for rec in all_records:
            by_station.setdefault(rec.station_key, []).append(rec)
        self.stations: dict[str, _StationArchive] = {}
        for key, recs in sorted(by_station.items()):
            recs.sort(key=lambda r: (r.end_ns, r.start_ns, r.seed_id))
            self.stations[key] = _StationArchive(key, recs, self.period_ns, first_sequence % SEQ_MODULUS)
        # Global release order: (end time, station, per-station index).
        self._order = sorted(
            (a.ends[k], key, k) for key, a in self.stations.items() for k in range(a.n)
        )
        self._released_global = 0
        self._server: asyncio.base_events.Server | None = None
        self._release_task: asyncio.Task[None] | None = None
        self._cond: asyncio.Condition | None = None  # created in start(), inside the loop
        self._sessions: set[_Session] = set()
        self.started_ns = time.time_ns()
        self._anchor_mono_ns = 0
        self._anchor_data_ns = self._order[0][0]
        # fault hooks
        self.fail_after_packets: int | None = None
        self.stalled = False
        # counters for tests and logs
        self.connections = 0
        self.packets_sent = 0
        self.command_log: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def record_count(self) -> int:
        return len(self._order)

    async def start(self) -> None:
        self._cond = asyncio.Condition()
        self._server = await asyncio.start_server(self._handle, self.host, self._port, reuse_address=True)
        sock = self._server.sockets[0]
        self._port = int(sock.getsockname()[1])
        self._anchor_mono_ns = time.monotonic_ns()
        self._release_task = asyncio.create_task(self._release_loop(), name="replay-release")
        log.info(
            "SeedLink replay server on %s:%d: %d records, %d stations, speed %s%s",
            self.host, self._port, len(self._order), len(self.stations),
            "max" if self.fast else f"{self.speed:g}", ", looping" if self.loop_forever else "",
        )

    async def stop(self) -> None:
        if self._release_task is not None:
            self._release_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._release_task
        if self._server is not None:
            self._server.close()
        for s in list(self._sessions):
            s.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def drop_connections(self) -> int:
        """Abort every client connection (call in the server's loop); returns how many."""
        n = len(self._sessions)
        for s in list(self._sessions):
            s.abort()
        return n

    # -- release clock -------------------------------------------------------------------------

    def data_now_ns(self) -> int:
        """The replay clock: data time that corresponds to now."""
        if self.fast:
            return 2**62
        elapsed = time.monotonic_ns() - self._anchor_mono_ns
        return self._anchor_data_ns + int(elapsed * self.speed)

    def _release_time(self, g: int) -> int | None:
        n = len(self._order)
        loop, j = divmod(g, n)
        if loop and not self.loop_forever:
            return None
        return self._order[j][0] + loop * self.period_ns

    async def _release_loop(self) -> None:
        n = len(self._order)
        while True:
            t = self._release_time(self._released_global)
            if t is None:
                log.info("replay: all %d records released", n)
                return
            now = self.data_now_ns()
            if t > now:
                await asyncio.sleep(min((t - now) / self.speed / NS_PER_S, 1.0))
                continue
            count = 0
            while t is not None and t <= now and count < 5000:
                loop, j = divmod(self._released_global, n)
                _end, key, k = self._order[j]
                arch = self.stations[key]
                arch.released = loop * arch.n + k + 1
                self._released_global += 1
                count += 1
                t = self._release_time(self._released_global)
            if self._cond is not None:
                async with self._cond:
                    self._cond.notify_all()
            await asyncio.sleep(0)

    def oldest_available(self, arch: _StationArchive) -> int:
        if self.ring_packets is None:
            return 0
        return max(0, arch.released - self.ring_packets)

    async def wait_released(self, timeout_s: float) -> None:
        if self._cond is None:
            return
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait(), timeout=timeout_s)

    # -- sessions -------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("replay: session %s failed", session.peer)
        finally:
            self._sessions.discard(session)
            session.abort()

    # -- INFO -----------------------------------------------------------------------------------

    def info_xml(self, level: str) -> str | None:
        level = level.upper()
        started = dt.datetime.fromtimestamp(self.started_ns / NS_PER_S, tz=dt.timezone.utc)
        head = (
            f'<?xml version="1.0"?>\n<seedlink software={quoteattr(SOFTWARE)} '
            f'organization={quoteattr(self.organization)} started="{started:%Y/%m/%d %H:%M:%S}.0000">\n'
        )
        body: list[str] = []
        if level == "ID":
            pass
        elif level == "CAPABILITIES":
            body = [f' <capability name="{c}"/>' for c in INFO_CAPABILITIES]
        elif level in ("STATIONS", "STREAMS"):
            for key, arch in self.stations.items():
                net, sta = key.split("_", 1)
                oldest = self.oldest_available(arch)
                begin_seq = arch.sequence(oldest)
                end_seq = arch.sequence(arch.released)
                attrs = (
                    f'name={quoteattr(sta)} network={quoteattr(net)} description="replay" '
                    f'begin_seq="{begin_seq:06X}" end_seq="{end_seq:06X}" stream_check="enabled"'
                )
                if level == "STATIONS":
                    body.append(f" <station {attrs}/>")
                    continue
                body.append(f" <station {attrs}>")
                streams: dict[tuple[str, str], list[int]] = {}
                # Each channel occurs within any n consecutive packets: look at the first n and
                # the last n available ones only (a looping replay's ring can be long).
                first = range(oldest, min(arch.released, oldest + arch.n))
                last = range(max(first.stop, arch.released - arch.n), arch.released)
                for i in (*first, *last):
                    rec = arch.record(i)
                    span = streams.setdefault((rec.location, rec.channel), [arch.start_ns(i), arch.end_ns(i)])
                    span[0] = min(span[0], arch.start_ns(i))
                    span[1] = max(span[1], arch.end_ns(i))
                for (loc, cha), (b, e) in sorted(streams.items()):
                    body.append(
                        f'  <stream location={quoteattr(loc)} seedname={quoteattr(cha)} type="D" '
                        f'begin_time="{_info_time(b)}" end_time="{_info_time(e)}" '
                        f'begin_recno="0" end_recno="0" gap_check="disabled" gap_treshold="0"/>'
                    )
                body.append(" </station>")
        else:
            return None
        return head + "\n".join(body) + ("\n" if body else "") + "</seedlink>\n"

    def info_packets(self, level: str) -> bytes | None:
        xml = self.info_xml(level)
        if xml is None:
            return None
        records = _log_records(xml.encode("utf-8"))
        out = []
        for i, rec in enumerate(records):
            out.append((b"SLINFO *" if i < len(records) - 1 else b"SLINFO  ") + rec)
        return b"".join(out)


def _info_time(t_ns: int) -> str:
    d = dt.datetime.fromtimestamp(t_ns // NS_PER_S, tz=dt.timezone.utc)
    frac = (t_ns % NS_PER_S) // 100_000
    return f"{d:%Y/%m/%d %H:%M:%S}.{frac:04d}"


def _log_records(text: bytes) -> list[bytes]:
    """``text`` as ASCII-encoded 512-byte miniSEED log records."""
    import numpy as np
    from obspy import Stream, Trace

    tr = Trace(np.frombuffer(text, dtype="|S1").copy())
    tr.stats.network, tr.stats.station, tr.stats.channel = "SL", "INFO", "LOG"
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=RECORD_BYTES, encoding="ASCII")
    data = buf.getvalue()
    return [data[i:i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]


class _Session:
    """One client connection: the command phase, then streaming."""

    MAX_LINE_BYTES = 4096

    def __init__(self, server: ReplayServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.entries: list[_Entry] = []
        self.current: _Entry | None = None
        self.uni_selectors: list[str] = []
        self.multistation = False  # a STATION command was seen (even a rejected one)
        self.extreply = False
        self.streaming = False
        self.sender: asyncio.Task[None] | None = None
        self.sent = 0
        self.closed = False

    def abort(self) -> None:
        self.closed = True
        if self.sender is not None and not self.sender.done():
            self.sender.cancel()
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    # -- I/O ------------------------------------------------------------------------------------

    async def _lines(self) -> Any:
        buf = b""
        while True:
            chunk = await self.reader.read(4096)
            if not chunk:
                return
            buf += chunk
            parts = re.split(rb"\r\n|\r|\n", buf)
            buf = parts.pop()
            if len(buf) > self.MAX_LINE_BYTES:
                raise ConnectionError("command line too long")
            for line in parts:
                text = line.decode("ascii", errors="replace").strip()
                if text:
                    yield text

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def _ok(self) -> None:
        self._write(b"OK\r\n")

    def _error(self, message: str) -> None:
        if self.extreply:
            self._write(b"ERROR\r" + message.encode("ascii", "replace") + b"\r\n")
        else:
            self._write(b"ERROR\r\n")

    async def run(self) -> None:
        async for line in self._lines():
            self.server.command_log.append(line)
            tokens = line.split()
            cmd, args = tokens[0].upper(), tokens[1:]
            if self.streaming:
                if cmd == "INFO" and args:
                    packets = self.server.info_packets(args[0])
                    if packets is not None:
                        self._write(packets)
                elif cmd == "BYE":
                    return
                continue
            if not await self._command(cmd, args):
                return
            await self.writer.drain()

    async def _command(self, cmd: str, args: list[str]) -> bool:
        """Handle one command-phase command; False to close the connection."""
        srv = self.server
        if cmd == "HELLO":
            self._write(f"{SOFTWARE} :: {' '.join(CAPABILITIES)}\r\n{srv.organization}\r\n".encode())
        elif cmd == "BYE":
            return False
        elif cmd == "CAPABILITIES":
            flags = {a.upper() for a in args}
            if flags <= {"EXTREPLY"}:
                self.extreply = "EXTREPLY" in flags or self.extreply
                self._ok()
            else:
                self._error("unsupported capability")
        elif cmd == "CAT":
            lines = "".join(f"{k.split('_', 1)[0]:<2} {k.split('_', 1)[1]:<5} replay\r\n" for k in srv.stations)
            self._write(lines.encode() + b"END")
        elif cmd == "INFO":
            packets = srv.info_packets(args[0]) if args else None
            if packets is None:
                self._error("unsupported INFO level")
            else:
                self._write(packets)
        elif cmd == "STATION":
            self._station(args)
        elif cmd == "SELECT":
            self._select(args)
        elif cmd in ("DATA", "FETCH", "TIME"):
            if not self._start_request(cmd, args):
                return True
            if self.current is None:  # uni-station mode: data start now
                await self._begin_streaming()
        elif cmd == "END":
            if not self.entries:
                self._error("END without STATION")
            else:
                await self._begin_streaming()
        else:
            self._error(f"unknown command {cmd}")
        return True

    def _station(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            self._error("STATION needs station [network]")
            return
        self.multistation = True
        sta = args[0].upper()
        net = args[1].upper() if len(args) == 2 else "*"
        entry = _Entry(net=net, sta=sta)
        if not any(entry.matches(a) for a in self.server.stations.values()):
            self.current = None
            self._error(f"unknown station {net}_{sta}")
            return
        self.entries.append(entry)
        self.current = entry
        self._ok()

    def _select(self, args: list[str]) -> None:
        if self.current is None and self.multistation:
            self._error("SELECT after a rejected STATION")
            return
        target = self.current.selectors if self.current is not None else self.uni_selectors
        if not args:
            target.clear()
            self._ok()
            return
        if not all(valid_selector(a) for a in args):
            self._error("bad selector")
            return
        target.extend(a.upper() for a in args)
        self._ok()

    def _start_request(self, cmd: str, args: list[str]) -> bool:
        entry = self.current
        if entry is None:
            if self.multistation:
                self._error(f"{cmd} after a rejected STATION")
                return False
            entry = _Entry(net="*", sta="*", selectors=self.uni_selectors)
            self.entries.append(entry)
        try:
            if cmd == "TIME":
                if not 1 <= len(args) <= 2:
                    raise ValueError("TIME needs begin [end]")
                entry.begin_ns = parse_seedlink_time(args[0])
                entry.end_ns = parse_seedlink_time(args[1]) if len(args) == 2 else None
            else:
                if len(args) > 2:
                    raise ValueError(f"{cmd} takes [seq [begin]]")
                entry.seq = parse_sequence(args[0]) if args else None
                entry.begin_ns = parse_seedlink_time(args[1]) if len(args) == 2 else None
        except ValueError as exc:
            if self.current is not None:
                self._error(str(exc))
            return False
        entry.mode = cmd
        entry.explicit_start = True
        if self.current is not None:
            self._ok()
        return True

    # -- streaming ------------------------------------------------------------------------------

    def _cursors(self) -> list[_Cursor]:
        srv = self.server
        cursors = []
        for arch in srv.stations.values():
            matching = [e for e in self.entries if e.matches(arch)]
            if not matching:
                continue
            exact = [e for e in matching if e.exact]
            entry = (exact or matching)[0]
            cursors.append(_Cursor(arch, self._start_index(entry, arch), list(entry.selectors), entry.end_ns))
        return cursors

    def _start_index(self, entry: _Entry, arch: _StationArchive) -> int:
        srv = self.server
        oldest = srv.oldest_available(arch)
        if entry.seq is not None:
            i = arch.index_of_sequence(entry.seq, oldest)
            if i is not None:
                return i
            log.info("replay: %s asked %s for sequence %06X, no longer available", self.peer, arch.key, entry.seq)
            if entry.begin_ns is None:
                return oldest
        if entry.begin_ns is not None:
            return arch.first_index_ending_after(entry.begin_ns, oldest, srv.loop_forever)
        # No start given: a live server sends only what comes next; a replay hands out its ring.
        return arch.released if srv.live_start else oldest

    async def _begin_streaming(self) -> None:
        self.streaming = True
        modes = {e.mode for e in self.entries}
        cursors = self._cursors()
        dialup = "FETCH" in modes
        windowed = all(e.mode == "TIME" and e.end_ns is not None for e in self.entries)
        log.info("replay: %s streaming %d stations", self.peer, len(cursors))
        self.sender = asyncio.create_task(self._send_loop(cursors, dialup, windowed))

    async def _send_loop(self, cursors: list[_Cursor], dialup: bool, windowed: bool) -> None:
        srv = self.server
        try:
            while not self.closed:
                if srv.stalled:
                    await asyncio.sleep(0.02)
                    continue
                batch: list[tuple[int, str, int, _Cursor]] = []
                for c in cursors:
                    if c.done:
                        continue
                    c.next = max(c.next, srv.oldest_available(c.arch))
                    stop = min(c.arch.released, c.next + 2000)
                    for i in range(c.next, stop):
                        batch.append((c.arch.end_ns(i), c.arch.key, i, c))
                batch.sort(key=lambda x: (x[0], x[1], x[2]))
                for _end, _key, i, c in batch:
                    if srv.stalled or self.closed:
                        break
                    if i != c.next:
                        continue
                    c.next = i + 1
                    arch = c.arch
                    if c.end_ns is not None and arch.start_ns(i) >= c.end_ns:
                        continue
                    rec = arch.record(i)
                    if not selection_accepts(c.selectors, rec.location, rec.channel):
                        continue
                    self._write(b"SL%06X" % arch.sequence(i) + arch.payload(i))
                    self.sent += 1
                    srv.packets_sent += 1
                    if srv.fail_after_packets is not None and self.sent >= srv.fail_after_packets:
                        # A clean close (FIN after the buffered packets), as a server restart gives.
                        log.info("replay: closing %s after %d packets (fault hook)", self.peer, self.sent)
                        self.closed = True
                        self.writer.close()
                        return
                    if self.sent % 64 == 0:
                        await self.writer.drain()
                await self.writer.drain()
                for c in cursors:
                    if c.end_ns is not None and not c.done and c.arch.window_finished(c.next, c.end_ns, srv.loop_forever):
                        c.done = True
                caught_up = all(c.done or c.next >= c.arch.released for c in cursors)
                if (dialup and caught_up) or (windowed and all(c.done for c in cursors)):
                    self._write(b"END")
                    await self.writer.drain()
                    return
                if caught_up:
                    await srv.wait_released(0.5)
        except (ConnectionError, asyncio.CancelledError):
            return


# ---------------------------------------------------------------------------------------------
# a server in a background thread (tests, embedding in synchronous code)
# ---------------------------------------------------------------------------------------------


class ReplayServerThread:
    """Runs a ``ReplayServer`` in its own event loop thread::

        with ReplayServerThread([path], speed=0) as srv:
            client.connect("127.0.0.1", srv.port)
            srv.drop_connections()
    """

    def __init__(self, sources: Sequence[Path | str], **kwargs: Any) -> None:
        self._sources = sources
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="replay-server", daemon=True)
        self.server: ReplayServer | None = None

    def start(self) -> ReplayServerThread:
        self._thread.start()

        async def _start() -> ReplayServer:
            srv = ReplayServer(self._sources, **self._kwargs)
            await srv.start()
            return srv

        self.server = self.call(_start())
        return self

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        """Run a coroutine in the server's loop and return its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=timeout_s)

    @property
    def port(self) -> int:
        assert self.server is not None  # noqa: S101 - start() sets it
        return self.server.port

    def drop_connections(self) -> int:
        async def _drop() -> int:
            assert self.server is not None  # noqa: S101
            return self.server.drop_connections()

        return int(self.call(_drop()))

    def stop(self) -> None:
        if self.server is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self.server.stop(), timeout_s=10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> ReplayServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
