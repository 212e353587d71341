"""Offline = live: one recording through `coldstream denoise`'s path and through the daemon
(replay server -> SeedLink -> Service -> Redis) gives the same denoised samples and the same picks.

The recording is the demo file plus a Z12 copy of one station (``HH1`` carrying its N data, ``HH2``
its E data): with SeisBench's component convention both paths must put them in the same model rows,
so the copy comes out exactly like the original, and its segments are labelled ``HH2,HH1,HHZ``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import obspy
import pytest

from pipeline_helpers import make_settings, read_picks, read_segments, weights_path, wait_for
from streamer.commands.demo import write_resume_state
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.loaders import load_denoiser, load_picker
from streamer.metrics import Metrics
from streamer.offline import denoise_stream
from streamer.replay import ReplayServerThread
from streamer.service import Service, run_in_thread
from streamer.stitch import Segment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COPY = "XX.DEM07."
ORIGINAL = "XX.DEM01."






def recording_with_z12_copy(tmp_path: Path) -> Path:
    st = obspy.read(str(recording_path()))
    for tr in st.select(station="DEM01").copy():
        tr.stats.station = "DEM07"
        tr.stats.channel = {"HHE": "HH2", "HHN": "HH1", "HHZ": "HHZ"}[tr.stats.channel]
        st.append(tr)
    path = tmp_path / "demo-z12.mseed"
    st.write(str(path), format="MSEED", reclen=512)
    return path


def joined(segments: list[Segment]) -> tuple[int, np.ndarray, tuple[str, ...]]:
    """Contiguous segments of one station as ``(start_sample, (3, n) data, channel names)``."""
    segments = sorted(segments, key=lambda s: s.start_sample)
    for a, b in zip(segments, segments[1:]):
        assert a.end_sample == b.start_sample, "hole or overlap"
    return segments[0].start_sample, np.concatenate([s.data for s in segments], axis=1), segments[0].channels


def test_offline_path_equals_the_live_service(tmp_path, redis_client, redis_url, redis_key_prefix, picker_cache_or_none):
    path = recording_with_z12_copy(tmp_path)
    catalogue = load_catalogue()
    stations = [*catalogue["stations"], COPY]
    # the daemon's steps otherwise follow its budget; the early-warning fast path is off: it has no
    # offline counterpart, and a final pick it reported first carries the provisional report's pick_id
    # (tests/integration/test_eew_service.py covers that link)
    fixed_steps = {"worker": {"min_steps": 1, "max_steps": 1}, "eew": {"enabled": False}}

    # live: replay server -> SeedLink -> service -> Redis
    with ReplayServerThread([path], speed=0) as replay:
        settings = make_settings(tmp_path, redis_url, redis_key_prefix, replay.port, weights_path(tmp_path),
                                 picker_cache_or_none, **fixed_steps)
        keys = [s.replace(".", "_").rstrip("_") for s in stations]
        write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{replay.port}", keys, catalogue["start_ns"])
        service = Service(settings, Metrics(), environ={})
        service.load_models()
        thread = run_in_thread(service)
        assert service.ready.wait(60), "service not ready"
        n_windows = len(stations) * 22
        wait_for(lambda: service.worker is not None and service.worker.windows_done >= n_windows, 120, "all windows")
        service.request_stop()
        thread.join(60)
    assert service.exit_code == 0
    live = {sid: joined(read_segments(redis_client, redis_key_prefix, sid)) for sid in stations}
    live_picks = read_picks(redis_client, redis_key_prefix)

    # offline: the same file through `coldstream denoise`'s path, the same settings
    denoiser = load_denoiser(settings)
    picker = load_picker(settings) if settings.picker.enabled else None
    res = denoise_stream(obspy.read(str(path)), denoiser, settings, picker=picker, steps=1)
    offline = {sid: joined([s for s in res.segments if s.station_id == sid]) for sid in stations}

    for sid in stations:
        (l_start, l_data, l_channels), (o_start, o_data, o_channels) = live[sid], offline[sid]
        assert (l_start, l_data.shape, l_channels) == (o_start, o_data.shape, o_channels), sid
        scale = float(np.std(o_data)) or 1.0
        np.testing.assert_allclose(l_data, o_data, rtol=1e-4, atol=1e-4 * scale, err_msg=sid)

    # the Z12 copy lands in the same rows as the original: E <- HH2, N <- HH1
    assert offline[COPY][2] == ("HH2", "HH1", "HHZ")
    np.testing.assert_allclose(offline[COPY][1], offline[ORIGINAL][1], rtol=1e-4, atol=1e-3)

    if picker is None:
        pytest.skip("picks not compared: no SeisBench weights (COLDSTREAM_SHARED_DIR unset)")

    def key(p) -> tuple[str, str, str, int]:
        return (p.station_id, p.phase, p.source, round(p.time_ns / 1e7))

    assert res.picks, "no picks offline"
    assert sorted(map(key, live_picks)) == sorted(map(key, res.picks))
    by_id = {p.pick_id for p in live_picks}
    assert all(p.pick_id in by_id for p in res.picks)  # the same identity, so consumers can join them
    copy_picks = sorted((p.phase, p.time_ns) for p in res.picks if p.station_id == COPY)
    assert copy_picks == sorted((p.phase, p.time_ns) for p in res.picks if p.station_id == ORIGINAL)
