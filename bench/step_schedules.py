"""Do other step lists make the sampler's steps pay? The validation split scored with explicit step lists.

The denoiser runs k > 1 network calls over ``make_step_list(T, k)`` (evenly spaced, the lists v2 was trained
on: ``[8, 4, 0]``, ``[8, 6, 4, 2, 0]``). This script scores other lists of the same weights with ``coldstream
evaluate`` on the validation split (one evaluation per list, the list swapped in for the evaluation's
duration), then prints one Markdown row per list: P recall by input SNR on the first source, noise-only P
picks on every source, SNR gain and the P residual. A list ``T,0`` is the direct prediction.

    .venv/bin/python bench/step_schedules.py --data DATA --picker-cache DIR --out runs/sched \\
        --lists 8,0 8,4,0 8,2,0 8,6,0 8,1,0 8,5,3,0 8,2,1,0 8,6,4,2,0 8,3,2,1,0

Selection figures only: this is the validation split (``--split val``), never the test split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SNRS = ("-15", "-10", "-5", "0", "5", "10", "20")


def parse_list(text: str) -> list[int]:
    """``"8,4,0"`` -> ``[8, 4, 0]``; strictly decreasing and ending at 0, else ValueError."""
    steps = [int(s) for s in text.split(",")]
    if len(steps) < 2 or steps[-1] != 0 or any(b >= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"step list {text!r} must be strictly decreasing and end at 0")
    return steps


@contextlib.contextmanager
def use_step_list(steps: Sequence[int]) -> Iterator[None]:
    """While active, every k-call denoising runs over ``steps`` instead of the evenly spaced list (the
    sampler still checks that it starts at the weights' T)."""
    import models.denoiser as denoiser_module

    original = denoiser_module.make_step_list
    denoiser_module.make_step_list = lambda n_train_steps, n_calls: list(steps)  # type: ignore[assignment]
    try:
        yield
    finally:
        denoiser_module.make_step_list = original  # type: ignore[assignment]


def summarize(reports: dict[str, dict[str, Any]]) -> str:
    """One Markdown table from ``coldstream evaluate``'s ``sources.json`` per step list (label -> report)."""
    first = next(iter(reports.values()))
    sources = list(first["sources"])
    lead = sources[0]
    head = (f"| step list | {lead} P recall " + " / ".join(SNRS) + " dB | noise P picks ("
            + " + ".join(sources) + f") | SNR gain (dB) | {lead} P residual (s) |")
    rows = [head, "|---|---|---|---|---|"]

    def row(label: str, method: str, report: dict[str, Any]) -> str:
        m = report["sources"][lead]["mixtures"][method]
        rec = " / ".join(f"{m['by_snr'][s]['p_recall']:.2f}" for s in SNRS if s in m["by_snr"])
        noise = " + ".join(str(report["sources"][s]["mixtures"][method]["noise_p_picks"]) for s in sources)
        gain = " / ".join(f"{report['sources'][s]['mixtures'][method]['snr_gain_db']:.1f}" for s in sources)
        res = f"{m['p_residual_mean_s']:.3f}±{m['p_residual_std_s']:.3f}"
        return f"| {label} | {rec} | {noise} | {gain} | {res} |"

    chosen: dict[str, str] = {}
    for label, report in reports.items():
        methods = [k for k in report["sources"][lead]["mixtures"] if k not in ("raw", "bandpass")]
        if len(methods) != 1:
            raise ValueError(f"{label}: expected one denoiser in the report, found {methods}")
        chosen[label] = methods[0]
    rows.append(row("raw input", "raw", first))
    rows += [row(label, chosen[label], report) for label, report in reports.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the data folder holding the source folders")
    ap.add_argument("--sources", nargs="+", default=["phasenet-ncedc", "seisdae-stead"])
    ap.add_argument("--weights", default="models/weights/coldstream-cdiffsd-v2.pt")
    ap.add_argument("--lists", nargs="+", required=True, help="step lists, e.g. 8,4,0 8,2,1,0")
    ap.add_argument("--noise-windows", type=int, default=1000)
    ap.add_argument("--picker-cache", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from streamer.cli import main as coldstream

    reports: dict[str, dict[str, Any]] = {}
    for text in args.lists:
        steps = parse_list(text)
        out = args.out / ("s" + "_".join(map(str, steps)))
        cmd = ["evaluate", "--data", args.data, "--sources", *args.sources, "--split", "val",
               "--weights", args.weights, "--steps", str(len(steps) - 1),
               "--snr-levels", *SNRS, "--noise-windows", str(args.noise_windows), "--out", str(out)]
        if args.picker_cache:
            cmd += ["--picker-cache", args.picker_cache]
        with use_step_list(steps):
            rc = coldstream(cmd)
        if rc:
            return rc
        reports[text.replace(",", ", ").join("[]")] = json.loads((out / "sources.json").read_text())
    print(summarize(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
