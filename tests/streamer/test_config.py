"""The typed configuration: layering, unknown keys, bad values, secrets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from streamer.config import ConfigError, load_settings, parse_override, settings_to_toml_dict


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load_without_file() -> None:
    s = load_settings(environ={})
    assert s.windows.stride_s == 10.0
    assert s.metrics.bind_address == "127.0.0.1"


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[worker]\nbatch_size = 4\nmax_steps = 6\n[windows]\nstride_s = 5.0\n")
    env = {"COLDSTREAM_WORKER__BATCH_SIZE": "8", "COLDSTREAM_WORKER__MAX_WAIT_MS": "50"}
    s = load_settings(cfg, ["worker.batch_size=16"], environ=env)
    assert s.worker.batch_size == 16  # CLI wins
    assert s.worker.max_wait_ms == 50  # env over default
    assert s.worker.max_steps == 6  # file over default, untouched by env in the same section
    assert s.windows.stride_s == 5.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"overrides": ["worker.batchsize=4"]}, "worker.batchsize: unknown key"),
        ({"overrides": ["nosuch.key=1"]}, "nosuch: unknown key"),
        ({"environ": {"COLDSTREAM_WORKER__BATCHSIZE": "3"}}, "COLDSTREAM_WORKER__BATCHSIZE"),
        ({"environ": {"COLDSTREAM_NOPE": "3"}}, "COLDSTREAM_NOPE"),
        ({"overrides": ["worker.batch_size=0"]}, "worker.batch_size"),
        ({"overrides": ["worker.device=tpu"]}, "worker.device"),
        ({"overrides": ["worker.min_steps=9", "worker.max_steps=2"]}, "min_steps must be <= max_steps"),
        ({"overrides": ["redis.url=http://x"]}, "redis.url"),
        ({"overrides": ["seedlink.servers=[{host='a', prot=1}]"]}, "seedlink.servers.0.prot: unknown key"),
        ({"overrides": ["model.residual_mix_band_hz=[20, 1]"]}, "model.residual_mix_band_hz"),
        ({"overrides": ["model.residual_mix_band_hz=[1]"]}, "model.residual_mix_band_hz"),
    ],
)
def test_bad_keys_and_values_are_named(kwargs: dict, needle: str) -> None:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    assert needle in str(info.value)


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[buffers]\nhorizon_s = 100\nhorizon = 3\n")
    with pytest.raises(ConfigError, match=r"buffers\.horizon: unknown key"):
        load_settings(cfg, environ={})


def test_missing_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[worker\n"), environ={})


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(Exception):
        s.worker.batch_size = 3  # type: ignore[misc]


def test_override_values_parse_as_toml() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=cpu") == ("a.b", "cpu")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ConfigError):
        parse_override("nokey")


def test_password_never_in_repr_or_dump(tmp_path: Path) -> None:
    s = load_settings(overrides=["redis.password=hunter2"], environ={})
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(settings_to_toml_dict(s))
    assert s.redis.resolved_password() == "hunter2"


def test_password_file_and_world_readable_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING):
        s = load_settings(overrides=[f'redis.password_file="{secret}"'], environ={})
    assert s.redis.resolved_password() == "s3cret"
    assert "readable by every user" in caplog.text
    assert "s3cret" not in caplog.text
    caplog.clear()
    os.chmod(secret, 0o600)
    with caplog.at_level(logging.WARNING):
        load_settings(overrides=[f'redis.password_file="{secret}"'], environ={})
    assert "readable by every user" not in caplog.text


def test_missing_password_file_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(overrides=[f'redis.password_file="{tmp_path / "absent"}"'], environ={})


def test_world_readable_config_with_password_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = write(tmp_path, '[redis]\npassword = "pw"\n')
    os.chmod(cfg, 0o644)
    with caplog.at_level(logging.WARNING):
        load_settings(cfg, environ={})
    assert "readable by every user" in caplog.text


def test_cli_config_command_reports_bad_key(capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cli import main

    assert main(["config", "--set", "worker.nope=1"]) == 2
    assert "worker.nope: unknown key" in capsys.readouterr().err


def test_shared_dir_variable_is_not_a_setting() -> None:
    s = load_settings(environ={"COLDSTREAM_SHARED_DIR": "/somewhere"})
    assert s.windows.stride_s == 10.0


def test_password_in_redis_url_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cli import main

    url = "redis://app:hunter2@db.example:6379/0"
    s = load_settings(overrides={"redis": {"url": url}}, environ={})
    assert s.redis.url == url  # the client still gets it
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.redis)
    assert settings_to_toml_dict(s)["redis"]["url"] == "redis://***@db.example:6379/0"
    assert main(["config", "--set", f'redis.url="{url}"']) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "db.example:6379" in out


@pytest.mark.parametrize("spec", ["XX.DEM01", "XX DEM01", "DEM01", "XX_DEM01:HHZZ", "XX_DEM01:", "XX_*:HH?,EH?"])
def test_bad_stream_selectors_fail_with_the_key_named(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"seedlink": {"servers": [{"port": 18000, "streams": ["XX_*", spec]}]}}, environ={})
    text = str(info.value)
    assert "seedlink.servers.0.streams" in text and repr(spec) in text


@pytest.mark.parametrize("spec", ["*_*", "XX_DEM01", "XX_*:HH? EH?", "NC_* :HH?", "BK_CMB:00HHZ !LH? --HHZ HHZ.D .D"])
def test_good_stream_selectors_load(spec: str) -> None:
    s = load_settings(overrides={"seedlink": {"servers": [{"streams": [spec]}]}}, environ={})
    assert s.seedlink.servers[0].streams == [spec]


@pytest.mark.parametrize(
    ("streams", "station"),
    [
        (["XX_A:HHZ", "XX_A:BHZ"], "XX_A"),  # the same station twice with other selectors
        (["XX_A", "XX_*", "XX_A:HH?"], "XX_A"),  # every channel, then some: neither is read as the other's subset
        (["xx_a:HHZ", "XX_A :HHZ"], "XX_A"),  # the same after normalisation (case, spaces)
        (["XX_*:HH?", "XX_* :EH?"], "XX_*"),  # a wildcard pattern twice is just as ambiguous
    ],
)
def test_a_station_listed_twice_for_one_server_is_refused(streams: list[str], station: str) -> None:
    """On resume the client asks for a station by name with one entry's selectors (the first one's),
    while the first connection sent every entry: a station named twice would change its channels
    across a restart. The config refuses it, naming the key, the station and both entries."""
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"seedlink": {"servers": [{"port": 18000, "streams": streams}]}}, environ={})
    text = str(info.value)
    assert "seedlink.servers.0.streams" in text
    assert f"station {station} is listed twice" in text
    dup = [s for s in streams if s.partition(":")[0].strip().upper() == station]
    assert repr(dup[0]) in text and repr(dup[1]) in text


def test_the_same_station_on_two_servers_loads() -> None:
    """Resume points and selectors are kept per server, so each server's entry stands on its own."""
    servers = [{"port": 18000, "streams": ["XX_A:HHZ", "XX_*"]}, {"port": 18001, "streams": ["XX_A:BHZ", "XX_*"]}]
    s = load_settings(overrides={"seedlink": {"servers": servers}}, environ={})
    assert [srv.streams for srv in s.seedlink.servers] == [["XX_A:HHZ", "XX_*"], ["XX_A:BHZ", "XX_*"]]


def test_residual_mix_band_override_reaches_the_denoiser() -> None:
    """Unset: the shipped weights' own band (above 1 Hz); an operator's [0, 50] restores the mix at every
    frequency (the earlier releases' output) without another weights file."""
    from streamer.loaders import load_denoiser

    own = load_denoiser(load_settings(environ={}))
    assert own.residual_mix_band_hz == (1.0, 50.0)  # type: ignore[attr-defined]
    every = load_denoiser(load_settings(environ={}, overrides=["model.residual_mix_band_hz=[0, 50]"]))
    assert every.residual_mix_band_hz == (0.0, 50.0) and every._mix_sos is None  # type: ignore[attr-defined]
