"""Early-warning picks through the real service: replay server (SeedLink, in real time x 4) -> service
(fast path and final path) -> real Redis. A provisional P pick is stored before the final one and
linked to it by ``pick_id``; an update carries the amplitudes and the inventory's coordinates; a
restart that replays the same data adds no second version of any report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pipeline_helpers import make_settings, read_picks, shipped_weights_present, wait_for, weights_path

from streamer.commands.demo import write_resume_state
from streamer.demo_data.build import load_catalogue, recording_path, stationxml_path
from streamer.metrics import Metrics
from streamer.replay import ReplayServerThread
from streamer.schema import StreamKeys, published_ns_of
from streamer.service import Service, run_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = 1_000_000_000
SPAN_S = 100  # the demo's first event (rjob-2009, P at 50-54 s) and enough after it for the final path


def _first_part(tmp_path: Path) -> Path:
    import obspy

    cat = load_catalogue()
    st = obspy.read(str(recording_path()))
    t0 = obspy.UTCDateTime(ns=cat["start_ns"])
    st.trim(t0, t0 + SPAN_S)
    path = tmp_path / "first.mseed"
    st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path


def _run_once(tmp_path: Path, path: Path, redis_url: str, prefix: str, cache: Path, run: int) -> Service:
    cat = load_catalogue()
    with ReplayServerThread([path], speed=4.0) as replay:
        settings = make_settings(tmp_path / f"run{run}", redis_url, prefix, replay.port, weights_path(tmp_path), cache,
                                 inventory={"stationxml": str(stationxml_path())},
                                 worker={"max_steps": 1})
        (tmp_path / f"run{run}").mkdir(exist_ok=True)
        keys = [s.replace(".", "_").rstrip("_") for s in cat["stations"]]
        write_resume_state(settings.seedlink.state_file, f"127.0.0.1:{replay.port}", keys, cat["start_ns"])
        service = Service(settings, Metrics(), environ={})
        service.load_models()
        thread = run_in_thread(service)
        assert service.ready.wait(60), "service not ready"
        n_windows = len(cat["stations"]) * ((SPAN_S - 30) // 10 + 1)
        wait_for(lambda: service.worker is not None and service.worker.windows_done >= n_windows, 120, "all windows")
        time.sleep(1.0)
        service.request_stop()
        thread.join(60)
    assert service.exit_code == 0
    return service


def test_provisional_pick_before_the_final_one_with_one_identity_and_an_idempotent_restart(
    tmp_path, redis_client, redis_url, redis_key_prefix, seisbench_cache
) -> None:
    if not shipped_weights_present():
        pytest.skip("the shipped denoiser weights are not in models/weights")
    path = _first_part(tmp_path)
    _run_once(tmp_path, path, redis_url, redis_key_prefix, seisbench_cache, 1)
    entries = redis_client.xrange(StreamKeys(redis_key_prefix).picks)
    reports = read_picks(redis_client, redis_key_prefix, status=None)
    cat = load_catalogue()
    want = next(p for p in cat["picks"] if p["station_id"] == "XX.DEM01." and p["phase"] == "P")

    def near(p) -> bool:  # noqa: ANN001
        return p.station_id == want["station_id"] and p.phase == "P" and abs(p.time_ns - want["time_ns"]) < 0.5 * NS

    story = [(i, p) for i, p in enumerate(reports) if near(p)]
    assert story, "no pick report for the catalogued P onset"
    statuses = [p.status for _, p in story]
    assert statuses[0] == "provisional" and statuses[-1] == "final", statuses
    assert len({p.pick_id for _, p in story}) == 1, "one identity per onset"
    assert [p.update for _, p in story] == list(range(len(story))), "updates count up, each once"
    first, final = story[0][1], story[-1][1]
    assert abs(first.time_ns - want["time_ns"]) <= 0.1 * NS
    # the provisional report reached Redis long before the final one
    t_first, t_final = published_ns_of(entries[story[0][0]][1]), published_ns_of(entries[story[-1][0]][1])
    assert t_first < t_final
    assert first.details is not None and first.details.onset_arrival_ns > 0
    assert t_first - first.details.onset_arrival_ns < 3 * NS  # within a record and a fast-path run at 4x
    # an update carries the amplitudes of the seconds after the onset and the inventory's coordinates
    updates = [p for _, p in story if p.status == "provisional" and p.details and p.details.amplitudes]
    assert updates, "no update with amplitudes"
    amp = updates[-1].details
    assert amp.latitude_deg == pytest.approx(47.0) and amp.longitude_deg == pytest.approx(11.0)
    sec, pd, pv, pa, tau_c = amp.amplitudes[-1]
    assert sec >= 1 and 0 < pd < pv and pa > 0 and tau_c > 0  # P waves of a few Hz: |d| < |v| < |a| in SI
    assert amp.polarity in ("U", "D", "")
    assert final.details is not None and final.details.latitude_deg == pytest.approx(47.0)

    # a restart that replays the same data from the start: nothing stored twice, nothing reopened
    stored_before = {(p.pick_id, p.update) for p in reports}
    _run_once(tmp_path, path, redis_url, redis_key_prefix, seisbench_cache, 2)
    after = read_picks(redis_client, redis_key_prefix, status=None)
    pairs = [(p.pick_id, p.update) for p in after]
    assert len(pairs) == len(set(pairs)), "a lifecycle state stored twice"
    assert stored_before <= set(pairs)
    closed = {p.pick_id for p in reports if p.status in ("final", "retracted")}
    assert not [p for p in after[len(reports):] if p.pick_id in closed and p.status != "final"], \
        "a closed onset got new reports after the restart"
    assert not [p for p in after[len(reports):] if near(p)], "the catalogued onset was reported again"
