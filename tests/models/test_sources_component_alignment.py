"""Single-component files grouped into one recording stay time-aligned when one of them was cut differently.

seisdae-stead has a group whose N file labels P 300 samples earlier than its E and Z files: the same event,
cut 3 s later. Stacked as they are, N lags the other components by 3 s."""

from __future__ import annotations

import numpy as np

from models.sources import load_single_component_folder

N = 3000


def _onset(p):
    t = np.arange(N)
    return np.where(t >= p, np.exp(-(t - p) / 100.0) * np.sin(2 * np.pi * 5.0 * t / 100.0), 0.0)


def _write(folder, name, data, p, s):
    np.savez(folder / f"{name}.npz", data=np.asarray(data, np.float64), itp=np.int64(p), its=np.int64(s))


def test_a_component_with_its_own_p_label_is_shifted_onto_the_groups_p(tmp_path):
    _write(tmp_path, "XX_AAA_BHE_77", _onset(800), 800, 1100)
    _write(tmp_path, "XX_AAA_BHN_77", _onset(500), 500, 800)  # cut 300 samples later
    _write(tmp_path, "XX_AAA_BHZ_77", _onset(800), 800, 1100)
    (rec,) = load_single_component_folder(tmp_path)
    assert rec.p_sample == 800
    onsets = [int(np.flatnonzero(np.abs(rec.data[c] - rec.data[c][:400].mean()) > 0.05)[0]) for c in range(3)]
    assert max(onsets) - min(onsets) <= 2, f"component onsets at {onsets}"


def test_consistent_components_are_unchanged(tmp_path):
    for cha in ("BHE", "BHN", "BHZ"):
        _write(tmp_path, f"XX_AAA_{cha}_78", _onset(800), 800, 1100)
    (rec,) = load_single_component_folder(tmp_path)
    ref = _onset(800)
    assert np.allclose(rec.data, (ref - ref.mean())[None], atol=1e-6)
