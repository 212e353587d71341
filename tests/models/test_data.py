from __future__ import annotations

import json
import os

import numpy as np
import pytest

from models.data import (
    PAD_RUN_SAMPLES,
    PairConfig,
    PairSampler,
    build_eval_set,
    live_span,
    load_npz_folder,
    load_recordings,
    make_station_split,
    read_split,
    select,
    write_split,
)
from models.data import Recording
from models.errors import DataError
from models.train import TrainConfig, _Trainer

N_SAMPLES = 9001


def _synthetic_event(rng, p=3000, s=3400, amp=1000.0):
    t = np.arange(N_SAMPLES)
    data = rng.standard_normal((3, N_SAMPLES)) * 5.0
    for onset, a in ((p, amp), (s, 2 * amp)):
        env = np.where(t >= onset, np.exp(-(t - onset) / 300.0), 0.0)
        data += a * env * np.sin(2 * np.pi * 5.0 * t / 100.0)[None]
    return data.astype(np.float32)


def _write_npz_folder(path, rng, stations):
    path.mkdir()
    for k, sta in enumerate(stations):
        np.savez(path / f"{sta}_{k:02d}.npz", data=_synthetic_event(rng).T, itp=3000, its=3400, channels="HHE_HHN_HHZ")


def _write_seisbench_dataset(path, rng, n_events=6, n_noise=2):
    import seisbench.data as sbd

    path.mkdir()
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100,
                              "measurement": "velocity", "unit": "counts", "instrument_response": "not restituted"}
        for i in range(n_events + n_noise):
            event = i < n_events
            wave = _synthetic_event(rng) if event else (rng.standard_normal((3, N_SAMPLES)) * 5).astype(np.float32)
            meta = {
                "trace_name": f"trace{i}",
                "station_network_code": "XX",
                "station_code": f"S{i % 5}",
                "trace_sampling_rate_hz": 100,
                "trace_category": "earthquake" if event else "noise",
                "trace_p_arrival_sample": 3000 if event else np.nan,
                "trace_s_arrival_sample": 3400 if event else np.nan,
            }
            writer.add_trace(meta, wave[::-1].copy())  # ENZ -> ZNE as declared above
    return path


def test_station_split_is_disjoint_seeded_and_written(tmp_path):
    stations = [f"XX.S{i}" for i in range(30)]
    a = make_station_split(stations, seed=3)
    assert a == make_station_split(stations, seed=3)
    assert a != make_station_split(stations, seed=4)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(stations)
    assert not (set(a["train"]) & set(a["test"])) and not (set(a["val"]) & set(a["test"]))
    write_split(tmp_path / "split.json", a, 3, "synthetic")
    assert read_split(tmp_path / "split.json") == a
    assert json.loads((tmp_path / "split.json").read_text())["by"] == "station"


def test_npz_folder_and_pairs(tmp_path, rng):
    _write_npz_folder(tmp_path / "ev", rng, ["XX_A", "XX_B", "XX_C", "YY_D"])
    recs = load_npz_folder(tmp_path / "ev")
    assert len(recs) == 4 and recs[0].station == "XX.A" and recs[0].data.shape == (3, N_SAMPLES)
    sampler = PairSampler(recs, PairConfig(noise_only_share=0.3), seed=0)
    batch = sampler.draw(32)
    assert batch.y.shape == batch.x0.shape == (32, 3, 3000) and batch.y.dtype == np.float32
    assert np.all(batch.x0[batch.noise_only] == 0) and batch.noise_only.any()
    assert np.all(np.isfinite(batch.y))
    snr = batch.snr_db[~batch.noise_only]
    assert snr.min() >= -15 and snr.max() <= 30
    again = PairSampler(recs, PairConfig(noise_only_share=0.3), seed=0).draw(32)
    np.testing.assert_array_equal(batch.y, again.y)


def test_tiny_seisbench_dataset_goes_through_the_loader(tmp_path, rng):
    path = _write_seisbench_dataset(tmp_path / "sb", rng)
    recs = load_recordings(path)
    assert len(recs) == 8
    assert sum(r.is_event for r in recs) == 6
    ev = recs[0]
    assert ev.p_sample == 3000 and ev.s_sample == 3400 and ev.station == "XX.S0"
    # Component order came back as ENZ: the strongest S energy is on every channel, the noise traces have no pick.
    assert ev.data.shape == (3, N_SAMPLES)
    batch = PairSampler(recs, seed=1).draw(8)
    assert batch.y.shape == (8, 3, 3000)
    es = build_eval_set(recs, (-5, 5), n_noise_only=3, seed=0)
    assert es.noisy.shape[0] == 6 * 2 + 3


@pytest.mark.slow
def test_two_training_steps_on_the_seisbench_dataset(tmp_path, rng):
    path = _write_seisbench_dataset(tmp_path / "sb", rng, n_events=10)
    cfg = TrainConfig(data=str(path), out=str(tmp_path / "run"), max_steps=2, batch_size=2, base_channels=4,
                      channel_mults=(1, 2), picker_weight=0.0, progress=False, n_train_steps=4)
    trainer = _Trainer(cfg)
    weights = trainer.run()
    assert weights.exists() and weights.with_suffix(".json").exists()
    assert (tmp_path / "run" / "split.json").exists() and trainer.step == 2
    cfg.max_steps, cfg.resume = 3, True
    resumed = _Trainer(cfg)
    resumed.run()
    assert resumed.step == 3


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_recordings(tmp_path / "nothing")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="no .npz"):
        load_recordings(tmp_path / "empty")


def test_noise_segment_leaves_out_padding_and_dead_stretches(rng):
    data = _synthetic_event(rng)
    data[:, :1200] = 0.0  # archive padding before the digitiser had data
    rec = Recording("XX.PAD_00", "XX.PAD", data, p_sample=3000, s_sample=3400)
    seg = rec.noise_segment()
    assert seg is not None and seg.shape[1] == 3000 - 100 - 1200
    np.testing.assert_allclose(seg + data[:, 1200:2900].mean(axis=1, keepdims=True), data[:, 1200:2900], atol=1e-3)
    # a dead stretch in the middle keeps the longer live side; a short constant run is not padding
    x = rng.standard_normal((3, 2000))
    x[2, 1400:1400 + PAD_RUN_SAMPLES] = 7.0
    x[1, 300:300 + PAD_RUN_SAMPLES - 1] = -2.0
    assert live_span(x) == (0, 1400)
    # an all-zero horizontal (single-component station) is not a dead channel
    x = rng.standard_normal((3, 2000))
    x[:2] = 0
    assert live_span(x) == (0, 2000)
    # too little live noise: no segment
    data[:, :2500] = 0.0
    assert Recording("XX.PAD_01", "XX.PAD", data, p_sample=3000, s_sample=3400).noise_segment() is None


def test_no_padding_reaches_real_noise_windows(ncedc_dir):
    """Some NCEDC traces start with up to 20 s of zeros; none of that may reach a noise-only window."""
    recs = load_npz_folder(ncedc_dir)
    padded = [r for r in recs if live_span(r.data[:, : r.p_sample])[0] > 0]
    assert padded, "the data set is known to hold padded traces"
    ev = build_eval_set(recs, snr_levels_db=(0,), n_noise_only=200, seed=3)
    for w in ev.noisy[ev.noise_only]:
        assert live_span(w) == (0, w.shape[1])


def test_real_ncedc_folder_splits_by_station(ncedc_dir):
    recs = load_npz_folder(ncedc_dir)
    split = make_station_split([r.station for r in recs], seed=0)
    train, test = select(recs, split["train"]), select(recs, split["test"])
    assert {r.station for r in train}.isdisjoint({r.station for r in test})


@pytest.mark.slow
def test_fine_tuning_starts_from_exported_weights_and_checks_architecture(tmp_path, rng):
    path = _write_seisbench_dataset(tmp_path / "sb", rng, n_events=10)
    common = dict(data=str(path), max_steps=1, batch_size=2, picker_weight=0.0, progress=False, n_train_steps=4)
    first = _Trainer(TrainConfig(out=str(tmp_path / "a"), base_channels=4, channel_mults=(1, 2), **common)).run()
    tuned = _Trainer(TrainConfig(out=str(tmp_path / "b"), base_channels=4, channel_mults=(1, 2),
                                 init_weights=str(first), **common))
    # before any step the model is the exported one, parameter for parameter
    from models.checkpoint import load_checkpoint

    exported, meta = load_checkpoint(first)
    for a, b in zip(exported.state_dict().values(), tuned.model.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    out = tuned.run()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["training"]["initialised_from"]["sha256"] == meta["sha256"]
    with pytest.raises(DataError, match="architecture"):
        _Trainer(TrainConfig(out=str(tmp_path / "c"), base_channels=8, channel_mults=(1, 2),
                             init_weights=str(first), **common))
    with pytest.raises(DataError, match="schedule"):
        _Trainer(TrainConfig(out=str(tmp_path / "d"), base_channels=4, channel_mults=(1, 2),
                             init_weights=str(first), **(common | {"n_train_steps": 8})))
