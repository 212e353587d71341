"""Security properties operations relies on: no pickle of untrusted files, loopback by default,
secrets never in logs, reprs or printed configuration, warnings for world-readable secrets."""

from __future__ import annotations

import argparse
import ast
import logging
from pathlib import Path

import pytest

from streamer.config import Settings, load_settings, settings_to_toml_dict

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-do-not-log"


def python_files() -> list[Path]:
    return [p for d in ("streamer", "models", "bench") for p in sorted((REPO / d).rglob("*.py"))]


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def pickle_problems(source: str, where: str) -> list[str]:
    """Unsafe deserialisation in ``source``: pickle-family imports, ``torch.load`` without
    ``weights_only=True``, ``np.load(allow_pickle=True)``."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names if n):
                problems.append(f"{where}:{node.lineno}: imports a pickle module")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        if owner_name == "torch" and node.func.attr == "load":
            flag = _kwarg(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
        if owner_name in ("np", "numpy") and node.func.attr == "load":
            flag = _kwarg(node, "allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                problems.append(f"{where}:{node.lineno}: np.load(allow_pickle=True)")
    return problems


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import torch\ntorch.load(p)", True),
        ("import torch\ntorch.load(p, weights_only=False)", True),
        ("import torch\ntorch.load(p, map_location='cpu', weights_only=True)", False),
        ("import pickle", True),
        ("from joblib import load", True),
        ("import numpy as np\nnp.load(f, allow_pickle=True)", True),
        ("import numpy as np\nnp.load(f)", False),
    ],
)
def test_pickle_detector(source: str, bad: bool) -> None:
    assert bool(pickle_problems(source, "x.py")) is bad


def test_no_pickle_loading_anywhere() -> None:
    problems = [q for p in python_files() for q in pickle_problems(p.read_text(), str(p.relative_to(REPO)))]
    assert not problems, "\n".join(problems)


def test_network_listeners_default_to_loopback() -> None:
    assert Settings().metrics.bind_address == "127.0.0.1"
    from streamer.commands import replay_server

    parser = argparse.ArgumentParser()
    replay_server.add_arguments(parser)
    assert parser.parse_args(["x.mseed"]).host == "127.0.0.1"


def test_secret_never_in_repr_or_printed_config(tmp_path: Path) -> None:
    settings = load_settings(overrides={"redis": {"password": SECRET}}, environ={})
    assert settings.redis.resolved_password() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings_to_toml_dict(settings))


def test_world_readable_config_with_password_warns_without_the_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "coldstream.toml"
    path.write_text(f'[redis]\npassword = "{SECRET}"\n')
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="streamer.config"):
        load_settings(path, environ={})
    assert any(str(path) in r.getMessage() for r in caplog.records), "no warning for a world-readable secret"
    assert SECRET not in caplog.text


def test_world_readable_password_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="streamer.config"):
        settings = load_settings(overrides={"redis": {"password_file": str(secret_file)}}, environ={})
    assert any("redis-password" in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text
    caplog.clear()
    secret_file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="streamer.config"):
        load_settings(overrides={"redis": {"password_file": str(secret_file)}}, environ={})
    assert not caplog.records
    assert settings.redis.resolved_password() == SECRET
