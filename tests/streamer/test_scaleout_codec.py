"""Scale-out stream fields of worker results round-trip exactly."""

from __future__ import annotations

import numpy as np

from streamer.scaleout.codec import decode_result, encode_result

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
