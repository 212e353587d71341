"""Stitching finality when the windows' masks differ: a sample a window held only as masked (a hole
the window was cut with, filled by a late record before the next window was cut) must not be
emitted before the later windows that may hold it as valid data were stitched."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.stitch import Segment, StitchMode, Stitcher

pytestmark = pytest.mark.timeout(10)

N, S, START = 30, 10, 1000


def _windows(hole: slice) -> list[tuple[int, np.ndarray, np.ndarray]]:
    x = np.arange(100, dtype=np.float32) + 1.0
    out = []
    for k in range(5):
        mask = np.ones((2, N), bool)
        if k == 0:
            mask[1, hole] = False  # a hole in one component of the first window only
        out.append((START + k * S, np.stack([x[k * S:k * S + N], -x[k * S:k * S + N]]), mask))
    return out


def _stitch(mode: StitchMode, windows: list[tuple[int, np.ndarray, np.ndarray]], max_out_of_order: int) -> list[Segment]:
    st = Stitcher(N, S, mode, channels=2, max_out_of_order=max_out_of_order)
    segs: list[Segment] = []
    for start, data, mask in windows:
        segs.extend(st.add(start, data, mask))
    segs.extend(st.flush())
    return [s for s in segs if s.n_samples]


def _joined(segs: list[Segment]) -> tuple[int, np.ndarray, np.ndarray]:
    starts = [s.start_sample for s in segs]
    ends = [s.end_sample for s in segs]
    assert starts == sorted(starts) and all(a == b for a, b in zip(ends, starts[1:]))  # contiguous, once each
    return starts[0], np.concatenate([s.data for s in segs], axis=1), np.concatenate([s.mask for s in segs], axis=1)


@pytest.mark.parametrize("mode", ["centre_crop", "overlap_add"])
@pytest.mark.parametrize("hole", [slice(12, 14), slice(10, 20), slice(18, 20)], ids=["inside", "whole", "end"])
def test_masked_sample_waits_for_a_valid_later_window(mode: StitchMode, hole: slice) -> None:
    windows = _windows(hole)
    live = _joined(_stitch(mode, windows, max_out_of_order=0))
    # the reference: every window stitched before anything is emitted (held for reordering until the flush)
    held = _joined(_stitch(mode, windows, max_out_of_order=len(windows)))
    assert live[0] == held[0]
    np.testing.assert_array_equal(live[2], held[2])
    np.testing.assert_allclose(live[1], held[1], rtol=1e-6)
    # the samples of the hole are real data in window 1: published as valid
    assert live[2][1, hole].all()


def test_missing_component_keeps_the_centre_crop_latency() -> None:
    """A component the station does not send (masked in every window) is no hole to wait for."""
    st = Stitcher(N, S, "centre_crop", channels=2)
    data = np.ones((2, N), np.float32)
    mask = np.ones((2, N), bool)
    mask[1] = False
    segs = st.add(START, data, mask)
    assert st.final_end_sample == START + st.hold_samples
    assert sum(s.n_samples for s in segs) == st.hold_samples
