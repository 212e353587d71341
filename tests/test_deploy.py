"""Deployment files: the example configuration never drifts from the settings model, and the systemd
units carry the settings operations relies on and start real ``coldstream`` subcommands."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from streamer.cli import COMMANDS
from streamer.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "coldstream.example.toml"
UNITS = ["coldstream.service", "coldstream-ingest.service", "coldstream-worker@.service"]
# Units whose command sends READY=1 and watchdog pings (streamer.service.Service); the scale-out
# worker does not, so its unit is Type=exec without a watchdog.
NOTIFY_UNITS = {"coldstream.service", "coldstream-ingest.service"}
DROPINS = sorted((DEPLOY / "dropins").glob("*.conf"))


# --- example configuration -----------------------------------------------------------------------


def _model_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> default for every leaf field (lists of sub-models descend into the item model)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = field.annotation
        item = getattr(ann, "__args__", (None,))[0] if getattr(ann, "__origin__", None) is list else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_model_keys(ann, dotted + "."))
        elif isinstance(item, type) and issubclass(item, BaseModel):
            out.update(_model_keys(item, dotted + "."))
        else:
            out[dotted] = field.get_default(call_default_factory=True)
    return out


def _toml_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in data.items():
        if isinstance(v, dict):
            keys |= _toml_keys(v, f"{prefix}{k}.")
        elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
            for i in v:
                keys |= _toml_keys(i, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def _commented_keys(text: str) -> set[str]:
    """Keys shown as ``# key = example`` (unset by default) under their ``[section]``."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        m = re.match(r"^\[\[?([a-z_.]+)\]\]?\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^# ([a-z_0-9]+) = \S", line)
        if m and section:
            keys.add(f"{section}.{m.group(1)}")
    return keys


def test_example_config_lists_every_key_exactly_once() -> None:
    text = EXAMPLE.read_text()
    model = _model_keys(Settings)
    active = _toml_keys(tomllib.loads(text))
    commented = _commented_keys(text)
    unset_by_default = {k for k, v in model.items() if v is None}
    assert active | commented == set(model), (
        f"missing from the example: {sorted(set(model) - active - commented)}; "
        f"not settings: {sorted((active | commented) - set(model))}"
    )
    assert not active & commented
    # keys without a default are the commented ones, and only those
    assert commented == unset_by_default


def test_example_config_values_are_the_defaults() -> None:
    example = load_settings(EXAMPLE, environ={})
    defaults = load_settings(None, environ={})
    assert example == defaults
    assert example.model_dump() == defaults.model_dump()


def test_every_key_has_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^(# )?[a-z_0-9]+ = ", line):
            above = lines[i - 1] if i else ""
            assert above.startswith("#"), f"line {i + 1} ({line!r}) has no comment above it"


def test_commented_examples_are_valid_values() -> None:
    # un-commenting any example line must still give a valid configuration
    text = EXAMPLE.read_text()
    uncommented = re.sub(r"^# ([a-z_0-9]+ = \S.*)$", r"\1", text, flags=re.M)
    data = tomllib.loads(uncommented)
    data["redis"].pop("password_file")  # the example path does not exist here
    data["redis"].pop("tls_ca_file")
    data["model"].pop("weights")
    data["inventory"].pop("stationxml")
    settings = load_settings(overrides=data, environ={})
    assert settings.worker.torch_threads == 4


# --- systemd units -------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows repeated keys), comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.match(r"^\[(\w+)\]$", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|ms)?", value)
    assert m, value
    factor = {"s": 1.0, None: 1.0, "min": 60.0, "ms": 1e-3}[m.group(2)]
    return float(m.group(1)) * factor


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit["Service"].get("Environment", []):
        for assignment in shlex.split(value):
            k, _, v = assignment.partition("=")
            env[k] = v
    return env


def expand(value: str, tmp: Path, instance: str = "0") -> str:
    """Replace the systemd specifiers the units use with test paths."""
    table = {"%S": str(tmp / "state"), "%C": str(tmp / "cache"), "%E": str(tmp / "etc"), "%d": str(tmp / "creds"), "%i": instance}
    for spec, repl in table.items():
        value = value.replace(spec, repl)
    assert "%" not in value, f"unhandled specifier in {value!r}"
    return value


@pytest.fixture(params=UNITS)
def unit_file(request: pytest.FixtureRequest) -> Path:
    return DEPLOY / request.param


HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "DynamicUser": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "ProtectKernelModules": "yes",
    "RestrictSUIDSGID": "yes",
    "ConfigurationDirectory": "coldstream",
}


def test_unit_has_notify_watchdog_restart_and_hardening(unit_file: Path) -> None:
    unit = parse_unit(unit_file.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    svc = unit["Service"]
    notify = unit_file.name in NOTIFY_UNITS
    assert one(unit, "Service", "Type") == ("notify" if notify else "exec")
    if notify:
        assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, key
    assert "network-online.target" in one(unit, "Unit", "Wants")
    # timeouts consistent with the service defaults
    defaults = Settings()
    if notify:
        watchdog_s = seconds(one(unit, "Service", "WatchdogSec"))
        assert watchdog_s == 60
        assert watchdog_s > 2 * defaults.worker.budget_ms / 1000, "a slow healthy batch must not trip the watchdog"
    else:
        assert "WatchdogSec" not in svc, "a watchdog needs a service that pings it"
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= defaults.service.drain_timeout_s + 10
    assert seconds(one(unit, "Service", "TimeoutStartSec")) >= 120
    assert "User" in svc and one(unit, "Service", "User") == "coldstream"
    # no secrets inline
    assert not any("PASSWORD=" in v.upper() for v in svc.get("Environment", []))


def test_units_writing_state_use_the_state_directory() -> None:
    for name in ("coldstream.service", "coldstream-ingest.service"):
        unit = parse_unit((DEPLOY / name).read_text())
        assert one(unit, "Service", "StateDirectory") == "coldstream"
        assert environment(unit)["COLDSTREAM_SEEDLINK__STATE_FILE"] == "%S/coldstream/seedlink.state"
        assert one(unit, "Service", "PrivateDevices") == "yes"


def test_gpu_worker_template_sees_only_its_gpu() -> None:
    unit = parse_unit((DEPLOY / "coldstream-worker@.service").read_text())
    env = environment(unit)
    assert env["CUDA_VISIBLE_DEVICES"] == "%i"
    assert env["COLDSTREAM_WORKER__DEVICE"] == "cuda"
    # PrivateDevices would hide /dev/nvidia*: off, replaced by a closed device policy
    assert one(unit, "Service", "PrivateDevices") == "no"
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert "/dev/nvidia%i rw" in unit["Service"]["DeviceAllow"]
    assert "MemoryDenyWriteExecute" not in unit["Service"]
    # distinct metrics ports per instance
    ports = {expand(env["COLDSTREAM_METRICS__PORT"], Path("/x"), str(i)) for i in range(10)}
    assert len(ports) == 10 and all(1 <= int(p) <= 65535 for p in ports)


def _subcommand_parser(name: str) -> argparse.ArgumentParser | None:
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # the subcommand module is not written yet; its name is still checked
        raise
    parser = argparse.ArgumentParser(prog=f"coldstream {name}")
    module.add_arguments(parser)
    return parser


def test_execstart_runs_an_existing_coldstream_subcommand(unit_file: Path, tmp_path: Path) -> None:
    unit = parse_unit(unit_file.read_text())
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0].endswith("/bin/coldstream") and argv[0].startswith("/")
    sub = argv[1]
    assert sub in COMMANDS
    assert sub in {"run", "ingest", "worker"}
    assert argv[2:4] == ["--config", "%E/coldstream/coldstream.toml"]
    argv = [a.replace("%H", "host") for a in argv]
    parser = _subcommand_parser(sub)
    if parser is None:
        pytest.skip(f"streamer.commands module for {sub!r} not present yet")
    args = parser.parse_args([expand(a, tmp_path) for a in argv[2:]])
    assert Path(args.config) == tmp_path / "etc" / "coldstream" / "coldstream.toml"


@pytest.mark.parametrize("dropin", [None, *DROPINS], ids=lambda p: "no-dropin" if p is None else p.name)
def test_unit_environment_is_valid_configuration(unit_file: Path, dropin: Path | None, tmp_path: Path) -> None:
    text = unit_file.read_text() + ("\n" + dropin.read_text() if dropin else "")
    env = {k: expand(v, tmp_path) for k, v in environment(parse_unit(text)).items()}
    assert all(k.startswith(("COLDSTREAM_", "CUDA_", "PYTHON", "XDG_", "MPL")) for k in env)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-password").write_text("s3cret\n")
    (creds / "redis-password").chmod(0o400)
    settings = load_settings(None, environ=env)
    if dropin is not None and dropin.name == "redis-password.conf":
        assert settings.redis.resolved_password() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_dropins_only_touch_known_keys() -> None:
    assert {p.name for p in DROPINS} == {"redis-password.conf", "gpu.conf"}
    creds = parse_unit((DEPLOY / "dropins" / "redis-password.conf").read_text())
    assert creds["Service"]["LoadCredential"] == ["redis-password:/etc/coldstream/redis-password"]
    assert environment(creds) == {"COLDSTREAM_REDIS__PASSWORD_FILE": "%d/redis-password"}


# --- systemd's own parser, when installed ----------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_units(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "coldstream"
    if not exe.exists():
        pytest.skip("coldstream entry point not installed in this environment")
    names = []
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace("/opt/coldstream/.venv/bin/coldstream", str(exe))
        for dropin in DROPINS:  # a drop-in's sections merge into the unit's
            if name == "coldstream.service" or dropin.name == "redis-password.conf":
                text += "\n" + dropin.read_text()
        target = name.replace("@.", "@0.")
        (tmp_path / target).write_text(text)
        names.append(f"./{target}")
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0")
    proc = subprocess.run(
        ["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
    )
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "coldstream" in line]
    assert proc.returncode == 0 and not ours, "\n".join(ours) or proc.stderr
