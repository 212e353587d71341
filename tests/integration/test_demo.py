"""`coldstream demo` end to end at high replay speed: embedded Redis, replay, service, summary, PNG."""

from __future__ import annotations

import argparse
import json

import pytest

from pipeline_helpers import weights_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_and_writes_picks_and_png(tmp_path, capsys, monkeypatch):
    from streamer.commands import demo

    weights = weights_path(tmp_path)
    overrides = [f'model.weights="{weights}"'] if weights is not None else []
    args = argparse.Namespace(speed=40.0, out_dir=tmp_path / "out", config=None, overrides=overrides,
                              no_live=True, log_level=None)
    assert demo.run(args) == 0
    out = capsys.readouterr().out
    assert "catalogue P/S against published picks" in out
    png = tmp_path / "out" / "raw_vs_denoised.png"
    assert png.stat().st_size > 10_000
    picks = json.loads((tmp_path / "out" / "picks.json").read_text())
    if "WITHOUT picks" in out:
        assert picks == []
    else:
        assert picks and all(p["pick_id"] and p["phase"] in ("P", "S") for p in picks)
    assert "segments published: 138" in out  # 6 stations x (22 strides + the flushed tail)
