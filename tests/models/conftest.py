"""Fixtures for the science-core tests: tiny models, a tiny denoiser, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.denoiser import Denoiser
from models.unet import UNet1D

from denoiser_fixtures import IdentityModel, make_tiny_unet


@pytest.fixture
def tiny_unet() -> UNet1D:
    return make_tiny_unet()


@pytest.fixture
def tiny_denoiser(tiny_unet: UNet1D) -> Denoiser:
    return Denoiser(tiny_unet, n_train_steps=8, device="cpu", name="tiny", version="test")


@pytest.fixture
def identity_denoiser() -> Denoiser:
    return Denoiser(IdentityModel(), n_train_steps=8, device="cpu", name="identity", version="test")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    value = os.environ.get("COLDSTREAM_SHARED_DIR")
    if not value or not Path(value, "data").is_dir():
        pytest.skip("COLDSTREAM_SHARED_DIR not set: shared data and picker weights are unavailable")
    return Path(value)


@pytest.fixture(scope="session")
def picker_cache(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "seisbench-weights"
    if not (path / "models" / "v3" / "phasenet").is_dir():
        pytest.skip("COLDSTREAM_SHARED_DIR has no data/seisbench-weights: PhaseNet weights unavailable")
    return path


@pytest.fixture(scope="session")
def ncedc_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "phasenet-ncedc"
    if not path.is_dir():
        pytest.skip("COLDSTREAM_SHARED_DIR has no data/phasenet-ncedc")
    return path
