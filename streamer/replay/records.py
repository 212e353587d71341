"""The replay server's input: miniSEED files as 512-byte miniSEED 2 records, ordered and indexed per station.

``load_records`` reads files and directories (other inputs are re-packed into 512-byte records with
ObsPy); ``StationArchive`` holds one station's records in release order, numbers them (24-bit
sequence numbers, wrapping) and answers the time and sequence look-ups of a session;
``shift_record_time`` rewrites the fixed-header start time (looping).

Limitations: looping shifts record start times by rewriting the fixed-header time, so it needs
miniSEED 2 records; everything is held in memory.
"""


from __future__ import annotations

import bisect
import datetime as dt
import io
import logging
import struct
from typing import Any
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import StreamerError
from streamer.records import NS_PER_S

log = logging.getLogger(__name__)

RECORD_BYTES = 512
SMALL_RECORD_BYTES = (256,)  # emulated record lengths (their samples in a 512-byte packet); ObsPy packs no shorter
SEQ_MODULUS = 1 << 24
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


def _repack_512(path: Path, record_s: float | None = None, record_bytes: int | None = None) -> list[bytes]:
    """Re-write a file's traces as 512-byte miniSEED 2 records (Steim2 for integers); with
    ``record_s``, no record holds more than ``record_s`` seconds of samples; with ``record_bytes``
    (256), each record holds exactly the samples a record of that many bytes holds (ObsPy's
    packing at that length), carried in a 512-byte record: SeedLink 3 packets are 512 bytes, so
    this is how a v3 server can show what smaller records cost in latency."""
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
        if record_s is None and record_bytes is None:
            tr.write(buf, format="MSEED", reclen=RECORD_BYTES, encoding=encoding)
            continue
        for i, n in _pieces(tr, encoding, record_s, record_bytes):
            piece = tr.copy()
            piece.data = tr.data[i : i + n].copy()
            piece.stats.starttime = tr.stats.starttime + i / tr.stats.sampling_rate
            piece.write(buf, format="MSEED", reclen=RECORD_BYTES, encoding=encoding)
    data = buf.getvalue()
    return [data[i:i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]


def _pieces(tr: Any, encoding: str, record_s: float | None, record_bytes: int | None) -> list[tuple[int, int]]:
    """``(first sample, count)`` of each record: ``record_s`` seconds each, or what ObsPy packs into
    records of ``record_bytes`` bytes (the sample count depends on the data's compressibility)."""
    if record_bytes is None:
        n = max(1, int(round((record_s or 1.0) * tr.stats.sampling_rate)))
        return [(i, min(n, tr.stats.npts - i)) for i in range(0, tr.stats.npts, n)]
    from obspy import read

    small = io.BytesIO()
    tr.write(small, format="MSEED", reclen=record_bytes, encoding=encoding)
    raw = small.getvalue()
    out, first = [], 0
    for off in range(0, len(raw), record_bytes):
        n = int(read(io.BytesIO(raw[off:off + record_bytes]), format="MSEED", headonly=True)[0].stats.npts)
        if n:
            out.append((first, n))
            first += n
    return out


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


def load_records(
    sources: Sequence[Path | str], record_s: float | None = None, record_bytes: int | None = None,
) -> list[ReplayRecord]:
    """All data records of the given files/directories as 512-byte miniSEED 2 records.

    Files that are already 512-byte miniSEED 2 are served byte for byte; others (other record
    lengths, miniSEED 3) are re-packed with ObsPy. With ``record_s`` every file is re-packed so
    that no record holds more than ``record_s`` seconds (a record is released when its last sample
    is due, so this is the data latency a client sees: 1-s records against the several seconds a
    512-byte Steim-2 record of a quiet 100 Hz channel holds). With ``record_bytes`` (256)
    each record holds what a record of that length holds (see :func:`_repack_512`). Unreadable
    files are skipped with a warning.
    """
    if record_s is not None and not record_s > 0:
        raise ReplayError(f"record length must be > 0 s, got {record_s}")
    if record_bytes is not None and record_bytes not in SMALL_RECORD_BYTES:
        raise ReplayError(f"record bytes must be one of {SMALL_RECORD_BYTES}, got {record_bytes}")
    if record_s is not None and record_bytes is not None:
        raise ReplayError("give a record length in seconds or in bytes, not both")
    records: list[ReplayRecord] = []
    for path in iter_input_files(sources):
        data = path.read_bytes()
        chunks = None if record_s is not None or record_bytes is not None else _native_512_records(data)
        if chunks is None:
            try:
                chunks = _repack_512(path, record_s, record_bytes)
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
# the archive: records per station, release clock, ring
# ---------------------------------------------------------------------------------------------


class StationArchive:
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
