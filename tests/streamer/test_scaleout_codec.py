"""Scale-out stream fields of worker results round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.scaleout.codec import decode_result, encode_result
from streamer.schema import EntryDecodeError

from service_helpers import result, window

# ----------------------------------------------------------------------------------- scale-out codec
def test_result_encoding_round_trip():
    ws = [window(0, value=3.0), window(1, value=4.0)]
    res = result(ws)
    res.raw_probs = res.probs.copy() * 0.5 if res.probs is not None else None
    enc = encode_result(res, 1)
    assert {"data", "probs", "raw_probs", "steps"} <= set(enc)
    back = decode_result(enc)
    assert back.windows[0].window_id == ws[1].window_id
    np.testing.assert_array_equal(back.denoised[0], res.denoised[1])
    assert back.probs is not None and back.raw_probs is not None
    np.testing.assert_array_equal(back.raw_probs[0], res.raw_probs[1])
    assert (back.steps, back.model, back.extra["picker"]) == (2, "m", "PhaseNet/original")


def test_the_pick_policy_travels_with_a_result():
    ws = [window(0, value=3.0), window(1, value=4.0)]
    res = result(ws)
    enc = encode_result(res, 0)
    assert "confirm_p" not in enc and decode_result(enc).confirm_p is None  # no policy: nothing extra
    res.confirm_p = np.stack([np.linspace(0, 1, ws[0].data.shape[-1], dtype=np.float32)] * 2)
    res.unconfirmed_p_threshold = 0.45
    back = decode_result(encode_result(res, 1))
    assert back.unconfirmed_p_threshold == 0.45 and back.confirm_p is not None
    np.testing.assert_array_equal(back.confirm_p[0], res.confirm_p[1])
    half = encode_result(res, 1)
    del half["unconfirmed_p_threshold"]  # a row without its threshold is refused, never guessed
    with pytest.raises(EntryDecodeError):
        decode_result(half)
    bad = encode_result(res, 1)
    bad["unconfirmed_p_threshold"] = "1.5"  # not a probability
    with pytest.raises(EntryDecodeError, match="not in"):
        decode_result(bad)


@pytest.mark.parametrize("key, value", [("schema", "2"), ("mask_encoding", "packbits-be")])
def test_an_entry_of_another_layout_is_refused_with_both_versions_named(key, value):
    """A producer of a newer release (mid-upgrade) must not be read as this layout: its window could decode
    into wrong data. Refused, so the queue dead-letters it with the reason."""
    from streamer.scaleout.codec import decode_window, encode_window

    w = window(0, value=3.0)
    enc = encode_window(w)
    assert decode_window(enc).window_id == w.window_id  # the same layout reads
    enc[key] = value
    with pytest.raises(EntryDecodeError, match=f"{key} '{value}', this release reads"):
        decode_window(enc)
    res = encode_result(result([w]), 0)
    res[key] = value.encode()  # results carry the window's fields; bytes as Redis returns them
    with pytest.raises(EntryDecodeError, match=key):
        decode_result(res)
