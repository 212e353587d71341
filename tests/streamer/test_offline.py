"""The offline path runs the live stages: ids, grid, gaps, rates, the component table, the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import obspy
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.components import COMPONENT_ALIASES, component_of
from models.denoiser import Denoiser
from models.spec import DEFAULT_SPEC
from models.unet import UNet1D
from streamer.config import load_settings
from streamer.offline import denoise_stream

T0 = obspy.UTCDateTime(2024, 1, 1)  # on the 10-s window grid


class RowGain(torch.nn.Module):
    """x0_hat = gain[row] * x_t: a model whose output tells which spec row (E, N, Z) a sample went through."""

    downsampling_factor = 1

    def __init__(self, gains: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("gains", torch.tensor(gains).view(1, 3, 1))

    def forward(self, x: torch.Tensor, t_frac: torch.Tensor, *_: object) -> torch.Tensor:
        return x * self.gains


def denoiser(gains: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Denoiser:
    return Denoiser(RowGain(gains), n_train_steps=4, device="cpu", name="rowgain", version="test")


def station(rng, net, sta, start, seconds=60.0, channels=("HHE", "HHN", "HHZ"), rate=100.0) -> obspy.Stream:
    st = obspy.Stream()
    t = np.arange(int(seconds * rate)) / rate
    for k, cha in enumerate(channels):
        data = (1000 * np.sin(2 * np.pi * (1.0 + k) * t) + 200 * rng.standard_normal(t.size)).astype(np.float32)
        st.append(obspy.Trace(data, header={"network": net, "station": sta, "location": "", "channel": cha,
                                            "sampling_rate": rate, "starttime": start}))
    return st


@pytest.fixture
def settings():
    return load_settings(environ={})


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_identity_reproduces_every_grid_aligned_sample(settings, rng):
    st = station(rng, "XX", "AAA", T0) + station(rng, "XX", "BBB", T0)
    res = denoise_stream(st, denoiser(), settings, steps=2)
    assert sorted(tr.id for tr in res.stream) == sorted(tr.id for tr in st)
    for a in st:
        (b,) = res.stream.select(id=a.id)
        assert b.stats.starttime == a.stats.starttime and b.stats.npts == a.stats.npts
        assert b.data.dtype == np.float32 and "coldstream denoise" in b.stats.processing[-1]
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-2)
    assert set(res.uncovered_s.values()) == {0.0}


def test_windows_follow_the_absolute_grid_like_the_daemon(settings, rng):
    st = station(rng, "XX", "AAA", T0 + 3.0, seconds=57)  # data from 3 s: the first window starts at 10 s
    res = denoise_stream(st, denoiser(), settings)
    for tr in res.stream:
        assert tr.stats.starttime == T0 + 10 and tr.stats.endtime == T0 + 60 - 0.01
    assert all(abs(v - 7.0) < 1e-6 for v in res.uncovered_s.values())


def test_component_table_is_seisbench_convention():
    assert COMPONENT_ALIASES["1"] == "N" and COMPONENT_ALIASES["2"] == "E"
    assert [component_of(c) for c in ("HHZ", "HH1", "HH2", "HHE", "HHN", "HHU")] == ["Z", "N", "E", "E", "N", None]


def test_z12_station_maps_1_to_n_and_2_to_e(settings, rng):
    st = station(rng, "YY", "CCC", T0, channels=("EHZ", "EH1", "EH2"))
    res = denoise_stream(st, denoiser((0.25, 0.5, 1.0)), settings)  # E row x0.25, N row x0.5
    gains = {"EH1": 0.5, "EH2": 0.25, "EHZ": 1.0}
    for a in st:
        (b,) = res.stream.select(id=a.id)
        # the denoiser works on de-meaned windows, so the gain shows in the spread, not the mean
        assert np.std(b.data) / np.std(a.data) == pytest.approx(gains[a.stats.channel], rel=0.01)
    (seg, *_) = res.segments
    assert seg.channels == ("EH2", "EH1", "EHZ")  # spec order E, N, Z


def test_long_gap_splits_the_output_and_z_only_stations_pass(settings, rng):
    st = station(rng, "XX", "AAA", T0, seconds=50) + station(rng, "XX", "AAA", T0 + 80, seconds=40)
    st += station(rng, "XX", "ZZZ", T0, seconds=40, channels=("HHZ",))
    res = denoise_stream(st, denoiser(), settings)
    z = res.stream.split().select(station="AAA", channel="HHZ")
    assert len(z) == 2  # the 30-s gap is not bridged
    for tr in z:
        src = st.select(station="AAA", channel="HHZ").slice(tr.stats.starttime, tr.stats.endtime).merge()[0]
        np.testing.assert_allclose(tr.data, src.data, rtol=1e-5, atol=1e-2)
    (zz,) = res.stream.select(station="ZZZ")
    assert zz.stats.channel == "HHZ" and zz.stats.npts == 4000


def test_data_right_after_a_gap_longer_than_the_clock_jump_limit_are_denoised(settings, rng):
    """A file with a two-hour gap (more than ``buffers.max_clock_jump_s``): the stretch after it is
    denoised from its first sample, as the daemon does for a station back from an outage; nothing
    is held back to confirm a new time base."""
    gap_s = 7200
    assert gap_s > settings.buffers.max_clock_jump_s
    st = station(rng, "XX", "AAA", T0, seconds=60) + station(rng, "XX", "AAA", T0 + 60 + gap_s, seconds=60)
    res = denoise_stream(st, denoiser(), settings)
    for cha in ("HHE", "HHN", "HHZ"):
        parts = sorted(res.stream.split().select(channel=cha), key=lambda tr: tr.stats.starttime)
        assert [(tr.stats.starttime, tr.stats.npts) for tr in parts] == [(T0, 6000), (T0 + 60 + gap_s, 6000)]
        src = st.select(channel=cha)[1]
        np.testing.assert_allclose(parts[1].data, src.data, rtol=1e-5, atol=1e-2)
    assert set(res.uncovered_s.values()) == {0.0}


def test_other_rates_are_resampled_to_the_model_rate(settings, rng):
    st = station(rng, "XX", "AAA", T0, seconds=60, rate=200.0)
    res = denoise_stream(st, denoiser(), settings)
    assert {tr.stats.sampling_rate for tr in res.stream} == {100.0}
    assert all(np.all(np.isfinite(tr.data)) for tr in res.stream)


# ------------------------------------------------------------------------------------------- the command
def run_denoise(argv: list[str]) -> int:
    from streamer.commands import denoise

    parser = argparse.ArgumentParser()
    denoise.add_arguments(parser)
    return denoise.run(parser.parse_args(argv))


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    model = UNet1D(base_channels=4, channel_mults=(1, 2), bottleneck_dilations=(1,), time_dim=8)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model, schedule_kind="linear", n_train_steps=4, spec=DEFAULT_SPEC.__dict__)
    return path


def test_denoise_command_on_a_multi_station_file(tmp_path, tiny_weights, rng, monkeypatch):
    monkeypatch.delenv("COLDSTREAM_SHARED_DIR", raising=False)
    st = station(rng, "XX", "AAA", T0, seconds=45) + station(rng, "XX", "BBB", T0, seconds=45)
    src, dst = tmp_path / "in.mseed", tmp_path / "out.mseed"
    st.write(str(src), format="MSEED")
    assert run_denoise([str(src), "-o", str(dst), "--weights", str(tiny_weights), "--steps", "2",
                        "--device", "cpu", "--set", "worker.batch_size=4"]) == 0
    out = obspy.read(str(dst))
    assert sorted(tr.id for tr in out) == sorted(tr.id for tr in st)
    for tr in out:
        assert tr.stats.starttime == T0 and tr.stats.npts == 4000 and tr.data.dtype == np.float32


def test_denoise_command_fails_cleanly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLDSTREAM_SHARED_DIR", raising=False)
    assert run_denoise([str(tmp_path / "x.mseed"), "-o", str(tmp_path / "y"), "--weights",
                        str(tmp_path / "none.pt")]) == 2
    assert run_denoise([str(tmp_path / "x.mseed"), "-o", str(tmp_path / "y"), "--set", "stitch.bogus=1"]) == 2
    assert "stitch.bogus" in capsys.readouterr().err


def test_denoise_command_writes_picks(tmp_path, tiny_weights, rng, seisbench_cache, monkeypatch):
    st = station(rng, "XX", "AAA", T0, seconds=60)
    src, dst, picks = tmp_path / "in.mseed", tmp_path / "out.mseed", tmp_path / "picks.json"
    st.write(str(src), format="MSEED")
    assert run_denoise([str(src), "-o", str(dst), "--weights", str(tiny_weights), "--device", "cpu",
                        "--picks", str(picks), "--set", f"picker.seisbench_cache={json.dumps(str(seisbench_cache))}"]) == 0
    got = json.loads(picks.read_text())
    assert isinstance(got, list)
    for p in got:
        assert {"pick_id", "station", "phase", "time", "probability"} <= set(p) and p["station"] == "XX.AAA."


@pytest.mark.parametrize(("overrides", "recommended", "expected"), [
    ([], 3, 3),  # unset: the weights' recommended steps, in both paths
    (["worker.max_steps=2"], 3, 2),  # set: the setting, in both paths
    (["worker.min_steps=4"], 3, 4),  # unset, but never below min_steps
])
def test_offline_and_daemon_resolve_the_same_sampler_steps(rng, overrides, recommended, expected):
    from streamer.metrics import Metrics
    from streamer.worker import Worker

    settings = load_settings(overrides=overrides, environ={})
    den = denoiser()
    den.default_steps = recommended
    live = Worker.from_settings(den, Metrics(), lambda _r: None, settings.worker, settings.windows.stride_s)
    assert live.controller.max_steps == expected
    res = denoise_stream(station(rng, "XX", "AAA", T0), den, settings)
    assert res.segments and {(s.steps_min, s.steps_max) for s in res.segments} == {(expected, expected)}


def test_the_default_worker_runs_the_shipped_weights_recommended_steps():
    """The daemon's default equals `coldstream denoise`'s default for the shipped v2 (1 step, model card)."""
    assert load_settings(environ={}).worker.max_steps is None
