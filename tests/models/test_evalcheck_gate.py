"""The gate passes nothing it has not checked: a method with no comparison in the result (a typo, a method
scored nowhere) does not pass."""

from __future__ import annotations

import numpy as np

from models.gate import gate


def _result():
    by = {"-5": {"n": 2, "p_recall": 0.5, "p_hits": 1, "peak_ratio_z_median": 1.0},
          "0": {"n": 2, "p_recall": 1.0, "p_hits": 2, "peak_ratio_z_median": 1.0},
          "10": {"n": 2, "p_recall": 1.0, "p_hits": 2, "peak_ratio_z_median": 1.0}}
    m = {"by_snr": by, "noise_windows": 3, "noise_p_picks": 0}
    return {"sources": {"syn": {"mixtures": {"raw": m, "model/1": m}, "real": {}}}}


def test_a_method_without_checks_does_not_pass():
    g = gate(_result(), "modle/1")
    assert not g.checks
    assert not g.harm_passed and not g.passed


def test_a_checked_method_is_still_judged_by_its_checks():
    g = gate(_result(), "model/1")
    assert g.harm_passed and not g.passed  # no benefit: equal to raw
    assert np.isfinite([c.value for c in g.checks if c.kind == "harm"]).all()
