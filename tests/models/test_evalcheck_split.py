"""A split file is refused when a held-out station or noise recording is also in another split: validation
(used to choose inference settings) overlapping the test split is leakage just as training is."""

from __future__ import annotations

import json

import pytest

from models.errors import DataError
from models.sources import read_source_split


def _write(tmp_path, entry):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"by": "station within source", "seed": 0, "sources": {"syn": entry}}))
    return path


def test_validation_station_also_in_test_is_refused(tmp_path):
    path = _write(tmp_path, {"train": ["XX.A"], "val": ["XX.B"], "test": ["XX.B", "XX.C"]})
    with pytest.raises(DataError):
        read_source_split(path)


def test_noise_recording_in_two_time_splits_is_refused(tmp_path):
    nbt = {"station": "RN.N", "train": ["RN_N_EH_1", "RN_N_EH_2"], "val": ["RN_N_EH_3"], "test": ["RN_N_EH_2"]}
    path = _write(tmp_path, {"train": ["XX.A"], "val": ["XX.B"], "test": ["XX.C"], "noise_by_time": nbt})
    with pytest.raises(DataError):
        read_source_split(path)


def test_disjoint_split_still_reads(tmp_path):
    nbt = {"station": "RN.N", "train": ["RN_N_EH_1"], "val": ["RN_N_EH_2"], "test": ["RN_N_EH_3"]}
    path = _write(tmp_path, {"train": ["XX.A"], "val": ["XX.B"], "test": ["XX.C"], "noise_by_time": nbt})
    assert read_source_split(path)["sources"]["syn"]["test"] == ["XX.C"]
