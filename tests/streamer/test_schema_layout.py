"""Entries of another layout (schema version, mask encoding) are refused, never read as this one."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.schema import EntryDecodeError, decode_segment, encode_segment
from streamer.stitch import Segment


def _fields() -> dict:
    data = np.arange(3 * 200, dtype=np.float32).reshape(3, 200)
    mask = np.ones((3, 200), bool)
    mask[1, 5:9] = False
    seg = Segment("NC.ABC.00", 1_700_000_000_00, 100.0, data, mask, steps_min=1, steps_max=1,
                  channels=("HHE", "HHN", "HHZ"))
    return {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in encode_segment(seg, "m", "1").items()}


def test_this_layout_reads():
    back = decode_segment(_fields())
    assert back.segment.data.shape == (3, 200) and not back.segment.mask[1, 5:9].any()


@pytest.mark.parametrize("key, value", [(b"schema", b"2"), (b"mask_encoding", b"packbits-be")])
def test_a_segment_of_another_layout_is_refused_with_both_versions_named(key, value):
    fields = _fields()
    fields[key] = value
    with pytest.raises(EntryDecodeError, match=f"{key.decode()} '{value.decode()}', this release reads"):
        decode_segment(fields)
