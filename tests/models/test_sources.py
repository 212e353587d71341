"""Source loaders (single-component STEAD-type files, continuous miniSEED with events screened out) and the
per-source station split, on small files the tests write themselves."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import Recording
from models.sources import (
    CONTINUOUS,
    NCEDC,
    STEAD,
    load_continuous_folder,
    load_single_component_folder,
    load_source,
    make_source_split,
    noise_pieces,
    read_source_split,
    screen_events,
    select_split,
    write_source_split,
)


def _write_single(folder, name, data, p=None, s=None):
    kw = {"data": np.asarray(data, np.float64)}
    if p is not None:
        kw |= {"itp": np.int64(p), "its": np.int64(s)}
    np.savez(folder / f"{name}.npz", **kw)


def test_single_component_files_group_into_recordings(tmp_path, rng):
    for cha, scale in (("BHE", 1.0), ("BHN", 2.0), ("BHZ", 3.0)):
        _write_single(tmp_path, f"XX_AAA_{cha}_1001", scale + rng.standard_normal(500), 100, 200)
    _write_single(tmp_path, "XX_AAA_HHZ_1001", rng.standard_normal(500), 120, 220)  # other instrument: own group
    _write_single(tmp_path, "YY_BBB_EH1_77", np.ones(500) + rng.standard_normal(500))  # 1 -> N
    _write_single(tmp_path, "YY_BBB_EH2_77", rng.standard_normal(500))  # 2 -> E
    recs = {r.name: r for r in load_single_component_folder(tmp_path)}
    assert set(recs) == {"XX_AAA_BH_1001", "XX_AAA_HH_1001", "YY_BBB_EH_77"}
    bh = recs["XX_AAA_BH_1001"]
    assert bh.station == "XX.AAA" and bh.p_sample == 100 and bh.s_sample == 200 and bh.three_component
    assert bh.data.shape == (3, 500) and bh.source == STEAD
    assert np.allclose(bh.data.mean(axis=1), 0, atol=1e-5)
    hh = recs["XX_AAA_HH_1001"]
    assert not hh.three_component and not np.any(hh.data[:2]) and hh.p_sample == 120
    bbb = recs["YY_BBB_EH_77"]
    assert bbb.p_sample is None and not bbb.is_event and not np.any(bbb.data[2])  # no Z channel


def test_screen_events_and_noise_pieces_keep_events_out():
    n = 60_000
    data = np.random.default_rng(0).standard_normal((3, n)).astype(np.float32)
    true_p = [20_000, 45_000]

    def predict(x):  # a fake picker: P probability 1 at the true onsets
        out = np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)
        for b, w in enumerate(x):
            for p in true_p:
                hit = np.flatnonzero(np.isclose(w[2], data[2, p]))
                for i in hit:
                    out[b, 0, i] = 1.0
        return out

    picks = screen_events(data, predict)
    assert picks == true_p
    rec = Recording("CX_AA_x", "CX.AA", data, None, None, True, source=CONTINUOUS)
    pieces = noise_pieces(rec, picks, before_s=10, after_s=60, min_s=35)
    covered = np.zeros(n, bool)
    for pc in pieces:
        start = int(pc.name.split("+")[1])
        covered[start : start + pc.data.shape[1]] = True
        assert pc.p_sample is None and pc.source == CONTINUOUS
    for p in true_p:
        assert not covered[p - 1000 : p + 6000].any()
    assert covered[:15_000].all()


def test_continuous_miniseed_loads_and_needs_screening(tmp_path):
    import obspy

    rng = np.random.default_rng(3)
    st = obspy.Stream()
    for cha in ("HHZ", "HHN", "HHE"):
        st.append(obspy.Trace(rng.standard_normal(12_000).astype(np.int32) * 10,
                              header={"network": "CX", "station": "PB09", "channel": cha, "sampling_rate": 100.0,
                                      "starttime": obspy.UTCDateTime(2014, 3, 1, 2)}))
    st.write(str(tmp_path / "20140301.CX.PB09..HH.mseed"), format="MSEED", reclen=512, encoding="STEIM2")
    raw, noise = load_continuous_folder(tmp_path)
    assert len(raw) == 1 and raw[0].station == "CX.PB09" and raw[0].data.shape == (3, 12_000)
    assert noise == []  # never noise unchecked

    def quiet(x):
        return np.zeros((x.shape[0], 3, x.shape[-1]), np.float32)

    raw, noise = load_continuous_folder(tmp_path, predict=quiet, screen_cache=tmp_path / "screen.json")
    assert len(noise) == 1 and noise[0].data.shape == (3, 12_000)
    assert (tmp_path / "screen.json").exists()


def test_load_source_rejects_unknown(tmp_path):
    (tmp_path / "other").mkdir()
    from models.errors import DataError

    with pytest.raises(DataError):
        load_source(tmp_path, "other")
    with pytest.raises(DataError):
        load_source(tmp_path, NCEDC)


def _rec(name, station, source, event=True):
    data = np.zeros((3, 100), np.float32)
    return Recording(name, station, data, 10 if event else None, 20 if event else None, True, source=source)


def test_source_split_is_by_station_within_source_and_round_trips(tmp_path):
    by_source = {
        NCEDC: [_rec(f"n{i}", f"NC.S{i % 10}", NCEDC) for i in range(30)],
        STEAD: [_rec(f"s{i}", f"XX.T{i % 5}", STEAD) for i in range(20)]
        + [_rec(f"RN_BAVN_EH_2018010{i}", "RN.BAVN", STEAD, event=False) for i in range(10)],
        CONTINUOUS: [_rec("c1", "CX.PB01", CONTINUOUS, False), _rec("c2", "CX.PB02", CONTINUOUS, False)],
    }
    split = make_source_split(by_source, seed=0)
    write_source_split(tmp_path / "split.json", split)
    split = read_source_split(tmp_path / "split.json")
    for src, e in split["sources"].items():
        assert not set(e["train"]) & set(e["test"]) and not set(e["train"]) & set(e["val"])
    assert split["sources"][CONTINUOUS]["train"] and split["sources"][CONTINUOUS]["test"]
    nbt = split["sources"][STEAD]["noise_by_time"]
    assert nbt["station"] == "RN.BAVN" and len(nbt["train"]) == 7 and len(nbt["test"]) == 2
    assert nbt["train"][-1] < nbt["test"][0]  # oldest in training
    recs = [r for rs in by_source.values() for r in rs]
    train, test = select_split(recs, split, "train"), select_split(recs, split, "test")
    assert not {(r.source, r.station) for r in train if r.is_event} & {(r.source, r.station) for r in test}
    assert not {r.name for r in train} & {r.name for r in test}


def test_instrument_responses_keep_rms_and_change_the_spectrum(rng):
    from models.data import instrument_response

    x = np.cumsum(rng.standard_normal((3, 3000)), axis=1).astype(np.float32)  # red, microseism-like
    for kind in ("short-period", "strong-motion"):
        y = instrument_response(x, kind)
        assert y.shape == x.shape
        assert np.isclose(np.sqrt(np.mean(y.astype(np.float64) ** 2)), np.sqrt(np.mean(x.astype(np.float64) ** 2)),
                          rtol=1e-3)
        f = np.fft.rfftfreq(3000, 0.01)
        low = lambda a: np.abs(np.fft.rfft(a[2]))[f < 0.5].sum() / np.abs(np.fft.rfft(a[2])).sum()  # noqa: E731
        assert low(y) < low(x)
    assert instrument_response(x, "broadband") is x


def _pair_sampler(rng, **cfg):
    from models.data import PairConfig, PairSampler

    recs = []
    for i in range(4):
        data = 0.01 * rng.standard_normal((3, 9000))
        data[:, 3000:3500] += np.sin(np.arange(500) / 3.0) * 5
        recs.append(Recording(f"XX_E{i}_1", f"XX.E{i}", data.astype(np.float32), 3000, 3300, True,
                              source="a" if i < 2 else "b"))
    return PairSampler(recs, PairConfig(**cfg), seed=1)


def test_missing_components_are_missing_in_input_and_target(rng):
    ps = _pair_sampler(rng, z_only_share=1.0, noise_only_share=0.0)
    b = ps.draw(6)
    assert not np.any(b.y[:, :2]) and not np.any(b.x0[:, :2]) and np.any(b.y[:, 2])


def test_channel_swap_moves_input_and_target_together(rng):
    ps = _pair_sampler(rng, en_swap_share=1.0, component_flip_share=0.0, z_only_share=0.0,
                       one_horizontal_missing_share=0.0)
    y = np.stack([np.ones(10), 2 * np.ones(10), 3 * np.ones(10)]).astype(np.float32)
    y2, x2 = ps._channel_augment(y, y.copy())
    assert np.all(y2[0] == 2) and np.all(y2[1] == 1) and np.array_equal(y2, x2)


def test_chain_training_step_runs_and_exports_a_mask_model(tmp_path, rng):
    """One optimizer step of the unfolded chain on synthetic NCEDC-layout files (no picker term)."""
    from models.checkpoint import load_checkpoint
    from models.train import TrainConfig, train

    for i in range(6):
        data = 0.01 * rng.standard_normal((9001, 3))
        data[3000:3600] += np.sin(np.arange(600) / 3.0)[:, None] * 3
        np.savez(tmp_path / f"XX_S{i}_2020.npz", data=data, itp=3000, its=3300, channels="HHE_HHN_HHZ")
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), max_steps=1, batch_size=2, picker_weight=0,
                      architecture="mask", mask_widths=(8, 16, 16), chain_steps=(2,), n_train_steps=4,
                      asym_weight=1.0, progress=False)
    path = train(cfg)
    model, meta = load_checkpoint(path)
    assert meta["model_class"] == "STFTMaskNet" and meta["schedule"]["n_train_steps"] == 4
    assert meta["training"]["config"]["chain_steps"] == [2]


def test_mask_stft_size_is_a_training_option_that_travels_with_the_weights(tmp_path, rng):
    """``mask_n_fft`` / ``mask_hop`` build the mask model with that STFT; the export reloads with it, the guard's
    bins follow it (0.78 Hz bins: bins 0-6 lie at or below 5 Hz), and a size the inverse STFT cannot invert is
    refused."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.errors import DataError
    from models.train import TrainConfig, train

    for i in range(6):
        data = 0.01 * rng.standard_normal((9001, 3))
        data[3000:3600] += np.sin(np.arange(600) / 3.0)[:, None] * 3
        np.savez(tmp_path / f"XX_S{i}_2020.npz", data=data, itp=3000, its=3300, channels="HHE_HHN_HHZ")
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), max_steps=1, batch_size=2, picker_weight=0,
                      architecture="mask", mask_widths=(8, 16, 16), mask_n_fft=128, mask_hop=16, n_train_steps=4,
                      progress=False)
    model, meta = load_checkpoint(train(cfg))
    assert meta["model_args"]["n_fft"] == 128 and model.n_fft == 128 and model.n_bins == 65
    model.set_guard((8.0, 14.0), max_hz=5.0, smooth_s=1.0)
    assert model.guard_max_bin == 7 and model.guard_smooth_frames == 7
    with torch.no_grad():
        out = model(torch.randn(1, 3, 3000), torch.ones(1))
    assert out.shape == (1, 3, 3000) and torch.isfinite(out).all()
    for n_fft, hop in ((100, 16), (16, 16), (64, 0)):
        with pytest.raises(DataError, match="mask_n_fft"):
            TrainConfig(data=".", out=".", mask_n_fft=n_fft, mask_hop=hop)


def test_picker_mix_scores_the_output_as_the_residual_mix_makes_it(tmp_path):
    """With ``picker_mix`` r the PhaseNet term sees pred + r (y - pred), against the clean target."""
    import torch

    from models.train import TrainConfig, _Trainer

    torch.manual_seed(0)
    seen = []

    def record(pred, target):
        seen.append((pred.clone(), target.clone()))
        return pred.new_zeros(())

    pred, x0, y = (torch.randn(2, 3, 3000) for _ in range(3))
    w = torch.ones(2, 1, 3000)
    for mix, expected in ((0.0, pred), (0.4, 0.6 * pred + 0.4 * y)):
        cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / f"run{mix}"), max_steps=1, batch_size=2,
                          picker_weight=1.0, architecture="mask", mask_widths=(8, 16, 16), n_train_steps=4,
                          progress=False, picker_mix=mix)
        trainer = _Trainer.__new__(_Trainer)  # only the loss is under test: no data, no picker weights
        trainer.cfg, trainer.picker_loss = cfg, record
        trainer._loss(pred, x0, w, y=y)
        assert torch.allclose(seen[-1][0], expected, atol=1e-6) and torch.equal(seen[-1][1], x0)


def test_picker_mix_both_scores_the_network_output_and_the_mixed_one(tmp_path):
    """With ``picker_mix_both`` the PhaseNet term is the mean over the network's own output and the mixed output."""
    import torch

    from models.errors import DataError
    from models.train import TrainConfig, _Trainer

    torch.manual_seed(0)
    pred, x0, y = (torch.randn(2, 3, 3000) for _ in range(3))
    mixed = 0.6 * pred + 0.4 * y
    seen = []

    def score(p, target):  # a stand-in picker term that tells its inputs apart
        seen.append(p.clone())
        return (p - target).abs().mean()

    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), max_steps=1, batch_size=2, picker_weight=1.0,
                      architecture="mask", mask_widths=(8, 16, 16), n_train_steps=4, progress=False, picker_mix=0.4,
                      picker_mix_both=True)
    trainer = _Trainer.__new__(_Trainer)
    trainer.cfg, trainer.picker_loss = cfg, score
    got = trainer._loss(pred, x0, torch.ones(2, 1, 3000), y=y)["pick"]
    assert len(seen) == 2 and any(torch.allclose(s, pred) for s in seen)
    assert any(torch.allclose(s, mixed, atol=1e-6) for s in seen)
    expected = 0.5 * ((pred - x0).abs().mean() + (mixed - x0).abs().mean())
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, (mixed - x0).abs().mean(), atol=1e-6)  # not the mixed output alone
    with pytest.raises(DataError, match="picker_mix_both needs picker_mix"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run2"), picker_mix_both=True)


def test_training_with_the_guard_in_the_loop_exports_it_with_the_weights(tmp_path, rng):
    """``train_guard_db``: the network is trained with the guard bounding its gain, and the exported sidecar carries
    the guard settings, so the weights run with the gain they were trained with."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.train import TrainConfig, _Trainer, train

    for i in range(6):
        data = 0.01 * rng.standard_normal((9001, 3))
        data[3000:3600] += np.sin(np.arange(600) / 3.0)[:, None] * 3
        np.savez(tmp_path / f"XX_S{i}_2020.npz", data=data, itp=3000, its=3300, channels="HHE_HHN_HHZ")
    common = dict(data=str(tmp_path), max_steps=1, batch_size=2, picker_weight=0, architecture="mask",
                  mask_widths=(8, 16, 16), chain_steps=(1,), n_train_steps=4, progress=False)
    cfg = TrainConfig(out=str(tmp_path / "run"), train_guard_db=(8.0, 14.0), train_guard_max_hz=5.0,
                      train_guard_smooth_s=1.0, **common)  # type: ignore[arg-type]
    trainer = _Trainer(cfg)
    for m in (trainer.model, trainer.ema):
        assert m.guard_db == (8.0, 14.0) and m.guard_max_bin == 4 and m.guard_smooth_frames == 7
    # The trained forward is bounded by the guard: a loud arrival is kept whatever the network says.
    with torch.no_grad():
        for p in trainer.model.head.parameters():
            p.fill_(0.0)
        trainer.model.head[-1].bias.fill_(-30.0)  # type: ignore[index]  # the network erases everything
        t = torch.arange(3000) / 100.0
        x = 0.01 * torch.randn(1, 3, 3000)
        x[..., 1500:2100] += torch.sin(2 * torch.pi * 2 * t[:600]) * torch.exp(-t[:600] / 3.0)
        out = trainer._call(trainer.model, x, torch.ones(1), x)
        assert out[0, 2, 1500:2100].abs().max() > 0.5 * x[0, 2, 1500:2100].abs().max()
    model, meta = load_checkpoint(train(cfg))
    assert meta["guard_db"] == [8.0, 14.0] and meta["guard_max_hz"] == 5.0 and meta["guard_smooth_s"] == 1.0
    assert model.guard_db == (8.0, 14.0) and model.guard_smooth_frames == 7
    assert "guard_db" not in load_checkpoint(train(TrainConfig(out=str(tmp_path / "plain"), **common)))[1]  # type: ignore[arg-type]
