"""The do-no-harm gate: may a denoiser's output replace the raw input in front of a picker?

Read from a :func:`models.source_eval.evaluate_sources` result, for one method (e.g. ``"v2/1"``) against the raw
input, on every source:

harm checks (all must pass for a denoiser to be switched on by default):

- ``peak``: the median Z peak ratio output / clean within ``PEAK_RANGE`` in every mixture bin at >= 10 dB input
  (neither erased nor invented amplitude where the event is clear);
- ``recall>=raw``: P recall at every input-SNR bin >= 0 dB at least the raw input's;
- ``noise-picks<=raw``: P picks on noise-only windows no more than on the raw input;
- on real, unmixed recordings: ``real-peak`` (median Z peak ratio against the raw 1-45 Hz band at clear P
  arrivals within ``PEAK_RANGE``) and ``real-recall>=raw`` (P recall against the labels at least the raw
  input's; on unlabelled continuous data at least ``KEPT_SHARE`` of the confident raw P picks kept);

benefit check (the reason to run a denoiser at all):

- ``recall>raw below 0 dB``: P hits pooled over the bins below 0 dB more than the raw input's.

A model that zeroes its input fails ``peak`` and the recall checks; one that halves it fails ``peak``; the identity
passes the harm checks and fails the benefit check (tests show all three).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Check", "GateResult", "KEPT_SHARE", "PEAK_RANGE", "gate", "gate_markdown"]

PEAK_RANGE = (0.8, 1.25)
PEAK_MIN_SNR_DB = 10.0
KEPT_SHARE = 0.95


@dataclass(frozen=True)
class Check:
    """One comparison: ``value`` of the method against ``reference`` (the raw input's, or a bound)."""

    source: str
    name: str
    kind: str  # "harm" or "benefit"
    value: float
    reference: str
    passed: bool


@dataclass(frozen=True)
class GateResult:
    method: str
    checks: tuple[Check, ...]

    @property
    def harm_passed(self) -> bool:
        harm = [c.passed for c in self.checks if c.kind == "harm"]
        return bool(harm) and all(harm)  # nothing checked is nothing shown harmless

    @property
    def passed(self) -> bool:
        return self.harm_passed and all(c.passed for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "passed": self.passed, "harm_passed": self.harm_passed,
                "checks": [asdict(c) for c in self.checks]}


def _in_range(v: float) -> bool:
    return math.isfinite(v) and PEAK_RANGE[0] <= v <= PEAK_RANGE[1]


def gate(result: dict[str, Any], method: str, raw: str = "raw", recall_tolerance: float = 0.0) -> GateResult:
    """Apply the checks of the module docstring to ``method``; ``recall_tolerance`` (default 0) is how far below
    the raw recall a bin may fall and still pass (kept at 0 for the shipped figures)."""
    checks: list[Check] = []
    for src, e in result["sources"].items():
        mix = e.get("mixtures", {})
        if method in mix and raw in mix:
            m, r = mix[method], mix[raw]
            for lv, b in m["by_snr"].items():
                if float(lv) >= PEAK_MIN_SNR_DB:
                    v = float(b["peak_ratio_z_median"])
                    checks.append(Check(src, f"peak at {lv} dB", "harm", v, f"{PEAK_RANGE[0]}-{PEAK_RANGE[1]}",
                                        _in_range(v)))
                if float(lv) >= 0:
                    v, ref = float(b["p_recall"]), float(r["by_snr"][lv]["p_recall"])
                    checks.append(Check(src, f"recall>=raw at {lv} dB", "harm", v, f"{ref:.2f}",
                                        v >= ref - recall_tolerance))
            low = [lv for lv in m["by_snr"] if float(lv) < 0]
            if low:
                hits = sum(m["by_snr"][lv]["p_hits"] for lv in low)
                ref_hits = sum(r["by_snr"][lv]["p_hits"] for lv in low)
                n = sum(m["by_snr"][lv]["n"] for lv in low)
                checks.append(Check(src, "recall>raw below 0 dB", "benefit", hits / n if n else math.nan,
                                    f"{ref_hits / n:.2f}" if n else "–", hits > ref_hits))
            if m["noise_windows"]:
                checks.append(Check(src, "noise-picks<=raw", "harm", float(m["noise_p_picks"]),
                                    str(r["noise_p_picks"]), m["noise_p_picks"] <= r["noise_p_picks"]))
        real = e.get("real", {})
        if method in real and raw in real and real[raw]["n_arrivals"]:
            m, r = real[method], real[raw]
            v = float(m["peak_ratio_z_median"])
            checks.append(Check(src, "real-peak", "harm", v, f"{PEAK_RANGE[0]}-{PEAK_RANGE[1]}", _in_range(v)))
            v = float(m["p_recall"])
            if m["labelled"]:
                ref = float(r["p_recall"])
                checks.append(Check(src, "real-recall>=raw", "harm", v, f"{ref:.2f}", v >= ref - recall_tolerance))
            else:
                checks.append(Check(src, "real-kept>=0.95", "harm", v, f"{KEPT_SHARE}", v >= KEPT_SHARE))
    return GateResult(method, tuple(checks))


def gate_markdown(results: list[dict[str, Any]] | dict[str, Any]) -> str:
    """A table of every check for one or more gate results (``GateResult.to_dict()``)."""
    if isinstance(results, dict):
        results = [results]
    lines = ["## Do-no-harm gate", ""]
    for g in results:
        verdict = "PASS" if g["passed"] else ("harm checks pass, benefit fails" if g["harm_passed"] else "FAIL")
        lines += [f"**{g['method']}: {verdict}**", "", "| source | check | kind | value | reference | |",
                  "|---|---|---|---|---|---|"]
        for c in g["checks"]:
            v = c["value"]
            vs = f"{v:.2f}" if isinstance(v, float) and math.isfinite(v) else str(v)
            lines.append(f"| {c['source']} | {c['name']} | {c['kind']} | {vs} | {c['reference']} | "
                         f"{'ok' if c['passed'] else '**fails**'} |")
        lines.append("")
    return "\n".join(lines) + "\n"
