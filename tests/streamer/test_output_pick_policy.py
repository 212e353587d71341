"""The output stage under the pick policy: the raw P that confirms is stacked beside the output's, the
acknowledgement never passes the samples the pick detector has judged, a change of policy keeps the old run's
picks, batch grouping changes nothing, and early-warning onsets in a run that ended are decided."""

from __future__ import annotations

import numpy as np
import pytest

from service_helpers import N, S, T0, Sink, window
from streamer.config import load_settings
from streamer.metrics import Metrics
from streamer.output import OutputStage
from streamer.picks import Pick
from streamer.worker import BatchResult

SID = "XX.STA."


def _result(ks: list[int], onset: int, policy: float | None, confirmed: bool = True) -> BatchResult:
    """Windows ``ks``; a denoised P of 0.4 (a Gaussian, 10 samples wide) at absolute sample ``onset`` of the run,
    with the same raw P beside it when ``confirmed``."""
    ws = [window(k) for k in ks]
    den = np.stack([w.data * 0.5 for w in ws])
    probs = np.zeros_like(den)
    probs[:, 2] = 1.0
    raw = np.zeros((len(ws), N), np.float32)
    for i, k in enumerate(ks):
        idx = onset - k * S
        lo, hi = max(0, idx - 30), min(N, idx + 31)
        if lo < hi:
            g = 0.4 * np.exp(-0.5 * ((np.arange(lo, hi) - idx) / 10.0) ** 2)
            probs[i, 0, lo:hi] = g
            if confirmed:
                raw[i, lo:hi] = g
    return BatchResult(ws, den, probs, None, 1, 1, None, 1.0, 1.0, model="m", model_version="v",
                       extra={"picker": "P", "picker_version": "1"},
                       confirm_p=None if policy is None else raw, unconfirmed_p_threshold=policy)


def _scaled_out(res: BatchResult) -> BatchResult:
    """The result as a scale-out worker sends it: one entry per window, decoded by the ingest."""
    from streamer.scaleout.codec import decode_result, encode_result

    parts = [decode_result(encode_result(res, i)) for i in range(len(res.windows))]
    first = parts[0]
    return BatchResult([p.windows[0] for p in parts], np.concatenate([p.denoised for p in parts]),
                       np.concatenate([p.probs for p in parts]), None, first.steps, first.steps_chosen, None, 0.0,
                       0.0, model=first.model, model_version=first.model_version, extra=first.extra,
                       confirm_p=None if first.confirm_p is None else np.concatenate([p.confirm_p for p in parts]),
                       unconfirmed_p_threshold=first.unconfirmed_p_threshold)


def _run(groups: list[list[int]], onset: int, policy_of, confirmed: bool = True, eew: bool = False,
         codec: bool = False):
    settings = load_settings(overrides=[f"eew.enabled={str(eew).lower()}"], environ={})
    sink = Sink()
    out = OutputStage(settings, Metrics(), sink, window_samples=N, sampling_rate_hz=100.0)
    ahead = []
    for g in groups:
        pols = {policy_of(k) for k in g}
        assert len(pols) == 1
        res = _result(g, onset, pols.pop(), confirmed)
        out.handle(_scaled_out(res) if codec else res)
        safe, until = sink.markers[-1].safe_ns.get(SID), out.detector.judged_until_ns(SID)
        if safe is not None and until is not None and safe > until:
            ahead.append(g)
    out.flush_all()
    picks = sorted(round((i.pick.time_ns - T0) / 1e7) for i in sink.items if i.kind == "pick" and i.pick.phase == "P")
    return picks, ahead, out, sink


@pytest.mark.parametrize("codec", [False, True])
@pytest.mark.parametrize(("confirmed", "expected"), [(True, [4500]), (False, [])])
def test_the_stacked_raw_p_decides_and_the_ack_waits_for_the_judgement(confirmed, expected, codec):
    # codec: the results crossed the scale-out streams' encoding, as an ingest collects them
    picks, ahead, _, _ = _run([[k] for k in range(8)], 4500, lambda k: 0.45, confirmed, codec=codec)
    assert picks == expected  # a 0.4 the raw stack confirms stands; unconfirmed it needs 0.45
    assert ahead == []  # no marker acknowledges data whose picks are not judged yet (the hold is 1.5 s)
    assert _run([[k] for k in range(8)], 4500, lambda k: None, False)[0] == [4500]  # no policy: 0.3 alone


@pytest.mark.parametrize("onset", [4960, 4990, 5020, 4500, 5500])
def test_a_change_of_policy_keeps_the_picks_of_the_old_run(onset):
    whole = _run([[k] for k in range(10)], onset, lambda k: None)[0]
    flip = _run([[k] for k in range(10)], onset, lambda k: 0.45 if k < 5 else None)[0]
    assert flip == whole == [onset]


@pytest.mark.parametrize("sizes", [[1] * 10, [3, 3, 4], [2, 5, 3], [10]])
def test_batch_grouping_does_not_change_the_picks(sizes):
    ks, groups = list(range(10)), []
    for n in sizes:
        groups.append(ks[:n])
        ks = ks[n:]
    for onset in (4500, 4990, 5020):
        picks, ahead, _, _ = _run(groups, onset, lambda k: 0.45)
        assert picks == [onset] and ahead == []


def _provisional(sample: int) -> Pick:
    return Pick("x", SID, "P", T0 + sample * 10_000_000, 0.6, "denoised", "m", "v", "P", "1", 1, 0,
                status="provisional")


@pytest.mark.parametrize(("windows", "policy_of", "onset"), [
    (list(range(9)), lambda k: 0.45 if k < 5 else None, 4900),  # a change of policy ends the run at 5000
    ([0, 1, 2, 3, 4, 8, 9, 10, 11], lambda k: None, 6900),  # a hole (windows 5-7 missing) ends it at 7000
])
def test_an_open_onset_in_the_tail_of_an_ended_run_is_decided(windows, policy_of, onset):
    settings = load_settings(overrides=["eew.enabled=true"], environ={})
    sink = Sink()
    out = OutputStage(settings, Metrics(), sink, window_samples=N, sampling_rate_hz=100.0)
    assert out.lifecycle is not None
    out.seed_open_onsets([_provisional(onset)])  # no final pick will come: no P in the probabilities
    for k in windows:
        out.handle(_result([k], 10**6, policy_of(k)))
    retracted = [i.pick.reason for i in sink.items if i.kind == "pick" and i.pick.status == "retracted"]
    assert retracted == ["not_confirmed"]  # the old run judged those samples: decided now, not at the timeout
