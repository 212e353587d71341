"""`coldstream demo`'s settings and model loading without sockets or models: a disabled picker is not
loaded, and a user override equal to a library default still undoes a demo default."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from streamer.config import Settings, load_settings

pytestmark = pytest.mark.timeout(30)


def _args(tmp_path: Path, overrides: list[str], config: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(speed=1000.0, out_dir=tmp_path / "out", config=config, overrides=overrides,
                              no_live=True, log_level=None)


class _FakeService:
    def __init__(self, settings: Settings, metrics: Any, denoiser: Any, picker: Any, **kwargs: Any) -> None:
        self.settings = settings
        self.picker = picker
        self.kwargs = kwargs
        self.loaded = False

    def load_models(self) -> None:
        self.loaded = True


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-ins for the model loaders and the service; records which loaders ran."""
    from streamer import loaders, service

    calls: list[str] = []

    def load_denoiser(_settings: Settings) -> Any:
        calls.append("denoiser")
        return argparse.Namespace(device="cpu")

    def load_picker(_settings: Settings, _device: str = "cpu") -> Any:
        calls.append("picker")
        raise loaders.ServiceError("cannot load the picker: no weights here")

    monkeypatch.setattr(loaders, "load_denoiser", load_denoiser)
    monkeypatch.setattr(loaders, "load_picker", load_picker)
    monkeypatch.setattr(service, "Service", _FakeService)
    return calls


def test_demo_does_not_load_a_disabled_picker(loads, capsys):
    from streamer.commands import demo

    settings = load_settings(overrides=["picker.enabled=false"], environ={})
    view = demo.LiveView({"stations": []}, live=False)
    svc = demo._make_service(settings, None, view)
    assert loads == ["denoiser"]
    assert svc.picker is None and svc.loaded
    assert "disabled" in view.picker_note
    assert "cannot load the picker" not in capsys.readouterr().out


def test_demo_loads_an_enabled_picker(loads):
    from streamer.commands import demo

    view = demo.LiveView({"stations": []}, live=False)
    svc = demo._make_service(load_settings(environ={}), None, view)
    assert loads == ["denoiser", "picker"]
    assert svc.picker is None and "WITHOUT picks" in view.picker_note


def test_demo_defaults_apply_when_the_user_sets_nothing(tmp_path):
    from streamer.commands import demo

    s = demo.demo_settings(_args(tmp_path, []), tmp_path, "redis://127.0.0.1:1/0", 18001)
    assert s.worker.batch_size == 8 and s.worker.max_wait_ms == 100.0
    assert s.metrics.enabled is False
    assert s.seedlink.reconnect_min_s == 0.5


@pytest.mark.parametrize(
    ("override", "read"),
    [
        ("worker.batch_size=32", lambda s: s.worker.batch_size == 32),
        ("worker.max_wait_ms=200.0", lambda s: s.worker.max_wait_ms == 200.0),
        ("metrics.enabled=true", lambda s: s.metrics.enabled is True),
        ("seedlink.reconnect_min_s=1.0", lambda s: s.seedlink.reconnect_min_s == 1.0),
    ],
)
def test_demo_override_equal_to_a_library_default_undoes_the_demo_default(tmp_path, override, read):
    from streamer.commands import demo

    s = demo.demo_settings(_args(tmp_path, [override]), tmp_path, "redis://127.0.0.1:1/0", 18001)
    assert read(s)
    assert s.worker.batch_size == 8 or override.startswith("worker.batch_size")  # other demo defaults kept
    assert s.redis.url == "redis://127.0.0.1:1/0"


def test_demo_config_file_equal_to_a_library_default_undoes_the_demo_default(tmp_path):
    from streamer.commands import demo

    toml = tmp_path / "demo.toml"
    toml.write_text("[worker]\nbatch_size = 32\n")
    s = demo.demo_settings(_args(tmp_path, [], config=toml), tmp_path, "redis://127.0.0.1:1/0", 18001)
    assert s.worker.batch_size == 32
    assert s.worker.max_wait_ms == 100.0  # the demo's value for what the file leaves unset


def test_demo_ignores_coldstream_environment_variables(tmp_path, monkeypatch):
    """A daemon host's environment (production Redis, SeedLink servers, batch size) must not leak into
    the demo, which owns its Redis, replay server and state file."""
    from streamer.commands import demo

    monkeypatch.setenv("COLDSTREAM_REDIS__URL", "redis://production:6379/0")
    monkeypatch.setenv("COLDSTREAM_WORKER__BATCH_SIZE", "64")
    monkeypatch.setenv("COLDSTREAM_METRICS__ENABLED", "true")
    for overrides in ([], ["worker.max_steps=1"]):
        s = demo.demo_settings(_args(tmp_path, overrides), tmp_path, "redis://127.0.0.1:1/0", 18001)
        assert s.redis.url == "redis://127.0.0.1:1/0"
        assert s.worker.batch_size == 8 and s.metrics.enabled is False
