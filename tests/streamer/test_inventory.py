"""Rotation to Z, N, E by a StationXML inventory's azimuths, on the live windowing and the offline path."""

from __future__ import annotations

import numpy as np
import obspy
import pytest
import torch
from obspy.core.inventory import Channel, Inventory as ObspyInventory, Network, Station

from models.denoiser import Denoiser
from streamer.config import load_settings
from streamer.ingest import Ingestor
from streamer.inventory import Inventory, InventoryError
from streamer.offline import denoise_stream, stream_blocks

T0 = obspy.UTCDateTime(2024, 1, 1)
AZ1, AZ2 = 30.0, 120.0  # HH1 and HH2 point 30 and 120 degrees east of north


def write_stationxml(path, azimuths=(("HH1", AZ1, 0.0), ("HH2", AZ2, 0.0), ("HHZ", 0.0, -90.0))):
    chans = [Channel(code, "", 45.0, 7.0, 300.0, 0.0, azimuth=az, dip=dip, sample_rate=100.0,
                     start_date=T0 - 86400) for code, az, dip in azimuths]
    sta = Station("ROT", 45.0, 7.0, 300.0, channels=chans, start_date=T0 - 86400)
    ObspyInventory(networks=[Network("XX", stations=[sta])], source="test").write(str(path), format="STATIONXML")
    return path


def true_motion(seconds=60.0):
    rng = np.random.default_rng(11)
    n = int(seconds * 100)
    t = np.arange(n) / 100
    north = 800 * np.sin(2 * np.pi * 1.3 * t) + 50 * rng.standard_normal(n)
    east = 500 * np.sin(2 * np.pi * 2.1 * t + 0.4) + 50 * rng.standard_normal(n)
    up = 300 * np.sin(2 * np.pi * 0.7 * t) + 50 * rng.standard_normal(n)
    return north, east, up


def z12_stream(north, east, up):
    def along(az):
        a = np.radians(az)
        return north * np.cos(a) + east * np.sin(a)

    st = obspy.Stream()
    for cha, data in (("HH1", along(AZ1)), ("HH2", along(AZ2)), ("HHZ", up)):
        st.append(obspy.Trace(data.astype(np.float32), header={
            "network": "XX", "station": "ROT", "channel": cha, "sampling_rate": 100.0, "starttime": T0}))
    return st


class Identity(torch.nn.Module):
    downsampling_factor = 1

    def forward(self, x, t_frac, *_):
        return x


def test_inventory_epochs_and_orientations(tmp_path):
    inv = Inventory.from_stationxml(write_stationxml(tmp_path / "inv.xml"))
    o = inv.orientation("XX.ROT..HH1", T0.ns)
    assert (o.azimuth_deg, o.dip_deg) == (AZ1, 0.0)
    assert inv.orientation("XX.ROT..HH1", (T0 - 2 * 86400).ns) is None  # before the epoch
    assert inv.orientation("XX.OTHER..HHZ", T0.ns) is None
    with pytest.raises(InventoryError, match="cannot read"):
        Inventory.from_stationxml(tmp_path / "missing.xml")


def test_live_windows_are_rotated_to_zne(tmp_path):
    north, east, up = true_motion()
    inv = Inventory.from_stationxml(write_stationxml(tmp_path / "inv.xml"))
    settings = load_settings(environ={})
    ingestor = Ingestor(buffer_settings=settings.buffers, window_settings=settings.windows, inventory=inv)
    windows = [w for b in stream_blocks(z12_stream(north, east, up)) for w in ingestor.add_block(b)]
    windows += ingestor.flush()
    assert windows
    for w in windows:
        i0 = round((w.start_ns - T0.ns) / 1e7)
        sl = slice(i0, i0 + 3000)
        assert w.meta.get("rotated_to_zne") and w.channels == ("HHE", "HHN", "HHZ")
        np.testing.assert_allclose(w.data[0], east[sl], atol=0.05)
        np.testing.assert_allclose(w.data[1], north[sl], atol=0.05)
        np.testing.assert_allclose(w.data[2], up[sl], atol=0.05)


def test_offline_path_rotates_the_same_way(tmp_path):
    north, east, up = true_motion()
    inv = Inventory.from_stationxml(write_stationxml(tmp_path / "inv.xml"))
    den = Denoiser(Identity(), n_train_steps=4, device="cpu", name="identity", version="test")
    res = denoise_stream(z12_stream(north, east, up), den, load_settings(environ={}), inventory=inv)
    got = {tr.stats.channel: tr.data for tr in res.stream}
    assert set(got) == {"HHE", "HHN", "HHZ"}
    np.testing.assert_allclose(got["HHE"], east, rtol=1e-4, atol=0.1)
    np.testing.assert_allclose(got["HHN"], north, rtol=1e-4, atol=0.1)


def test_without_an_inventory_the_table_maps_1_to_n(tmp_path):
    north, east, up = true_motion()
    settings = load_settings(environ={})
    ingestor = Ingestor(buffer_settings=settings.buffers, window_settings=settings.windows)
    st = z12_stream(north, east, up)
    windows = [w for b in stream_blocks(st) for w in ingestor.add_block(b)]
    (w, *_) = windows
    assert w.channels == ("HH2", "HH1", "HHZ") and "rotated_to_zne" not in w.meta
    np.testing.assert_allclose(w.data[1], st.select(channel="HH1")[0].data[:3000], atol=1e-3)


def test_the_stationxml_setting_is_a_typed_key(tmp_path):
    path = write_stationxml(tmp_path / "inv.xml")
    settings = load_settings(overrides=[f'inventory.stationxml="{path}"'], environ={})
    assert settings.inventory.stationxml == path
    from streamer.loaders import ServiceError, load_inventory

    assert len(load_inventory(settings)) == 3
    bad = load_settings(overrides=[f'inventory.stationxml="{tmp_path / "none.xml"}"'], environ={})
    with pytest.raises(ServiceError, match="StationXML"):
        load_inventory(bad)
