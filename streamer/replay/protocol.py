"""SeedLink v3 wire details shared by the replay server and its sessions: selectors, times, sequence
numbers, the INFO capabilities and the framing of INFO XML in miniSEED log records.

Limitations: v3 only (no SLPROTO 4.0).
"""


from __future__ import annotations

import datetime as dt
import io
import math
import re
from collections.abc import Sequence

from streamer.records import NS_PER_S
from streamer.replay.records import RECORD_BYTES, SEQ_MODULUS

SOFTWARE = "SeedLink v3.1 (coldstream replay)"
CAPABILITIES = ("SLPROTO:3.1", "CAP", "EXTREPLY", "NSWILDCARD")
INFO_CAPABILITIES = (
    "dialup", "multistation", "window-extraction", "info:id", "info:capabilities",
    "info:stations", "info:streams",
)


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------


def glob_match(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.upper())
    return re.fullmatch(regex, text.upper()) is not None


def _selector_matches(selector: str, location: str, channel: str) -> bool:
    """v3 selector ``[LL]CCC[.T]`` or ``.T`` (``?`` wildcards, ``-`` = blank location) against a stream."""
    pattern, _, rtype = selector.partition(".")
    if rtype and rtype.upper() != "D":
        return False
    loc = location.ljust(2)
    if len(pattern) == 5:
        loc_p, cha_p = pattern[:2], pattern[2:]
    elif len(pattern) == 2:
        loc_p, cha_p = pattern, "???"
    else:  # CCC, or no pattern at all (".T": every stream of that type)
        loc_p, cha_p = "??", pattern or "???"
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
    if not pattern:  # ".T": the LLCCC part may be left out
        return re.fullmatch(r"[A-Za-z]", rtype) is not None
    return len(pattern) in (2, 3, 5) and len(rtype) <= 1 and re.fullmatch(r"[A-Za-z0-9?\-]+", pattern) is not None


def parse_seedlink_time(text: str) -> int:
    """``YYYY,MM,DD,hh,mm,ss[.ffff]`` (fields after the day optional) -> int ns."""
    parts = text.strip().split(",")
    if not 3 <= len(parts) <= 6:
        raise ValueError(f"bad SeedLink time {text!r}")
    nums = [int(p) for p in parts[:5]] + [0] * (5 - min(5, len(parts)))
    sec = float(parts[5]) if len(parts) == 6 else 0.0
    if not 0 <= sec < 61:  # also NaN and inf, which would fail below with another exception type
        raise ValueError(f"bad SeedLink time {text!r}")
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


def info_time(t_ns: int) -> str:
    d = dt.datetime.fromtimestamp(t_ns // NS_PER_S, tz=dt.timezone.utc)
    frac = (t_ns % NS_PER_S) // 100_000
    return f"{d:%Y/%m/%d %H:%M:%S}.{frac:04d}"


def log_records(text: bytes) -> list[bytes]:
    """``text`` as ASCII-encoded 512-byte miniSEED log records."""
    import numpy as np
    from obspy import Stream, Trace

    tr = Trace(np.frombuffer(text, dtype="|S1").copy())
    tr.stats.network, tr.stats.station, tr.stats.channel = "SL", "INFO", "LOG"
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=RECORD_BYTES, encoding="ASCII")
    data = buf.getvalue()
    return [data[i:i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]
