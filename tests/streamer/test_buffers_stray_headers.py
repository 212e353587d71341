"""Ingest buffers: stray far-past headers must not reset a station's buffers."""

from __future__ import annotations

import numpy as np

from models.spec import DEFAULT_SPEC
from streamer.buffers import StationBuffer
from streamer.config import BufferSettings
from streamer.records import NS_PER_S, SampleBlock

T0_NS = 1_704_067_200 * NS_PER_S
NOW_NS = T0_NS + 60 * NS_PER_S


def block(t_ns: int, n: int = 500, cha: str = "HHZ") -> SampleBlock:
    return SampleBlock(f"XX.STA.00.{cha}", t_ns, 100.0, np.arange(n, dtype=np.int32), arrival_ns=NOW_NS)


def test_unrelated_stray_past_headers_do_not_reset_the_station() -> None:
    """Two stray records with corrupt far-past times, an hour apart, are not a new time base: the
    span of a backward jump must be made of data that hangs together, not of two isolated blocks."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=600))
    for k in range(6):
        assert sb.insert(block(T0_NS + k * 5 * NS_PER_S), NOW_NS).rejected is None
    epoch, newest = sb.epoch, sb.newest_end_ns
    first = sb.insert(block(T0_NS - 7200 * NS_PER_S), NOW_NS)
    second = sb.insert(block(T0_NS - 3600 * NS_PER_S), NOW_NS)
    assert (first.rejected, second.rejected) == ("expired", "expired")
    assert not second.clock_jump
    assert sb.epoch == epoch and sb.newest_end_ns == newest
    # the buffered data is still there
    assert sb.groups["HH"][2].all_valid(sb.groups["HH"][2].head - 3000, sb.groups["HH"][2].head)


def test_a_real_backward_jump_with_interleaved_channels_still_resets() -> None:
    """The new time base of a real backward jump (three channels, contiguous records) resets the
    station once it spans one model window."""
    sb = StationBuffer("XX.STA.00", DEFAULT_SPEC, BufferSettings(max_clock_jump_s=600))
    sb.insert(block(T0_NS), NOW_NS)
    back = T0_NS - 3000 * NS_PER_S
    jumped = False
    for k in range(12):
        for cha in ("HHE", "HHN", "HHZ"):
            res = sb.insert(block(back + k * 5 * NS_PER_S, cha=cha), NOW_NS)
            if res.clock_jump:
                jumped = True
                break
        if jumped:
            break
    assert jumped
    assert k == 5  # the records of the new base span 30 s
