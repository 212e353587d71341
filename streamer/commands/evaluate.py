"""``coldstream evaluate``: the science core's evaluation, with its stream cases run through the live path.

The arguments and the metrics are :mod:`models.cli_evaluate`'s; this command adds only the stream path
(:func:`streamer.offline.denoise_stream` with default settings), which ``models`` cannot import, so the
``--protocol`` figures measure the code the daemon runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from models import cli_evaluate

HELP = cli_evaluate.HELP
add_arguments = cli_evaluate.add_arguments


def offline_stream_denoiser() -> Any:
    """``(stream, denoiser, steps) -> stream`` through :func:`streamer.offline.denoise_stream`."""
    from streamer.config import load_settings
    from streamer.offline import denoise_stream

    settings = load_settings()

    def run_stream(stream: Any, denoiser: Any, steps: int) -> Any:
        return denoise_stream(stream, denoiser, settings, steps=steps).stream

    return run_stream


def run(args: argparse.Namespace) -> int:
    return cli_evaluate.run(args, denoise_stream=offline_stream_denoiser())
