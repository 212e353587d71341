"""The peer comparison's process boundary (bench/peer_comparison.py): windows go to the peer's own interpreter over
a pipe and come back whole, in batches of any size; a peer that is not installed says so. A stand-in package
plays the peer here (it halves its input), so the test needs neither the peer nor its licence."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("peer_comparison", ROOT / "bench" / "peer_comparison.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def stand_in(tmp_path):
    pkg = tmp_path / "wavedenoiser"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "wavedenoiser.py").write_text(
        "import torch\n\n"
        "class Denoiser:\n"
        "    def predict(self, data):\n"
        "        assert len(data) <= 32\n"  # the runner feeds the peer at most 32 windows at a time
        "        return torch.as_tensor(data) * 0.5\n"
    )
    meta = tmp_path / "wavedenoiser-9.9.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: wavedenoiser\nVersion: 9.9\n")
    return tmp_path


def test_windows_cross_the_pipe_whole(stand_in):
    mod = _module()
    peer = mod.PeerProcess(sys.executable, str(stand_in), 1)
    try:
        assert peer.version == "9.9"
        den = mod.PeerDenoiser(peer, 0.45)
        for n in (1, 40, 0):
            x = np.random.default_rng(n).standard_normal((n, 3, 3000)).astype(np.float32)
            res = den.denoise_windows(x)
            assert res.x0.shape == x.shape and res.steps_done == 1
            np.testing.assert_array_equal(res.x0, 0.5 * x)
        assert (den.name, den.version, den.unconfirmed_p_threshold) == ("wavedenoiser", "9.9", 0.45)
    finally:
        peer.close()
    assert peer.proc.returncode == 0


def test_the_peer_runs_through_the_offline_stream_path(stand_in):
    import obspy

    from streamer.config import load_settings
    from streamer.offline import denoise_stream

    mod = _module()
    peer = mod.PeerProcess(sys.executable, str(stand_in), 1)
    try:
        rng = np.random.default_rng(0)
        st = obspy.Stream([obspy.Trace(rng.standard_normal(9000).astype(np.float32),
                                       header={"network": "XX", "station": "AAA", "channel": f"HH{c}",
                                               "sampling_rate": 100.0, "starttime": obspy.UTCDateTime(2024, 1, 1)})
                           for c in "ENZ"])
        res = denoise_stream(st, mod.PeerDenoiser(peer), load_settings(environ={}), steps=1)
        z_in, z_out = st.select(channel="HHZ")[0], res.stream.select(channel="HHZ")[0]
        t0 = max(z_in.stats.starttime, z_out.stats.starttime)
        a = z_in.slice(t0, t0 + 50).data
        b = z_out.slice(t0, t0 + 50).data
        np.testing.assert_allclose(b[: len(a)], 0.5 * a[: len(b)], rtol=1e-5, atol=1e-5)
    finally:
        peer.close()


def test_a_peer_that_is_not_installed_says_so(tmp_path):
    mod = _module()
    with pytest.raises(SystemExit, match="is wavedenoiser importable"):
        mod.PeerProcess(sys.executable, str(tmp_path), 1)
