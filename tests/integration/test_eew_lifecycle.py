"""The pick lifecycle in a real Redis: one identity per onset from the first provisional report to the
final or retracted one, each state stored once and in order, also when a restarted process proposes
other ids and replays every report."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from streamer.config import RedisSettings
from streamer.metrics import Metrics
from streamer.picks import Pick, PickDetails
from streamer.publish import RedisPublisher
from streamer.records import OutputItem
from streamer.schema import StreamKeys, decode_pick

pytestmark = pytest.mark.integration

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def _pick(t_ns: int, status: str, amps: int = 0, pick_id: str = "proposed-1", phase: str = "P") -> Pick:
    d = PickDetails(latitude_deg=47.0, amplitudes=tuple((k, 1e-6, 1e-5, 1e-4, 0.4) for k in range(1, amps + 1)),
                    onset_arrival_ns=time.time_ns())
    return Pick(pick_id, "XX.STA.", phase, t_ns, 0.8, "denoised", "d", "1", "PhaseNet", "1", 1, time.time_ns(),
                status=status, details=d)


def _publish(url: str, prefix: str, picks: list[Pick]) -> RedisPublisher:
    pub = RedisPublisher(RedisSettings(url=url, stream_prefix=prefix), Metrics(), match_tolerance_s=0.5)
    pub.publish([OutputItem.of_pick(p) for p in picks])
    assert pub.flush(10)
    pub.close()
    return pub


def _stored(client, prefix: str) -> list[Pick]:  # noqa: ANN001
    return [decode_pick(f) for _i, f in client.xrange(StreamKeys(prefix).picks)]


def test_one_identity_per_onset_each_state_once_across_a_restart(redis_client, redis_url, redis_key_prefix) -> None:
    onset = T0 + 50 * NS
    run1 = [
        _pick(onset, "provisional"),
        _pick(onset + 10_000_000, "provisional", amps=1),  # an update: the first second of amplitudes
        _pick(onset + 10_000_000, "provisional", amps=1),  # nothing new: refused
        _pick(onset + 30_000_000, "provisional", amps=3),
    ]
    _publish(redis_url, redis_key_prefix, run1)
    keys = StreamKeys(redis_key_prefix)
    assert redis_client.hlen(keys.openpicks) == 1  # open until the final path decides
    # a restarted process: it proposes another id, replays its reports, then the final path picks
    run2 = [replace(p, pick_id="proposed-2") for p in run1] + [
        _pick(onset + 40_000_000, "final", pick_id="proposed-2"),
        _pick(onset + 45_000_000, "provisional", amps=3, pick_id="proposed-2"),  # too late: closed
        _pick(onset + 40_000_000, "final", pick_id="proposed-3"),  # a replayed final
    ]
    _publish(redis_url, redis_key_prefix, run2)
    stored = _stored(redis_client, redis_key_prefix)
    assert [(p.pick_id, p.status, p.update) for p in stored] == [
        ("proposed-1", "provisional", 0),
        ("proposed-1", "provisional", 1),
        ("proposed-1", "provisional", 2),
        ("proposed-1", "final", 3),
    ]
    assert [len(p.details.amplitudes) for p in stored[:3]] == [0, 1, 3]
    assert stored[-1].time_ns == onset + 40_000_000  # the final time stands in the final report
    assert redis_client.hlen(keys.openpicks) == 0


def test_retraction_is_stored_once_and_closes_the_onset(redis_client, redis_url, redis_key_prefix) -> None:
    onset = T0 + 80 * NS
    pub = RedisPublisher(RedisSettings(url=redis_url, stream_prefix=redis_key_prefix), Metrics())
    pub.publish([OutputItem.of_pick(_pick(onset, "provisional", pick_id="a"))])
    assert pub.flush(10)
    open_ = pub.read_open_picks()
    assert [(p.pick_id, p.station_id, p.phase, p.time_ns, p.update) for p in open_] == [("a", "XX.STA.", "P", onset, 0)]
    retract = replace(_pick(onset, "retracted", pick_id="a"), reason="not_confirmed")
    pub.publish([OutputItem.of_pick(retract), OutputItem.of_pick(retract),
                 OutputItem.of_pick(_pick(onset + 100_000_000, "final", pick_id="b"))])
    assert pub.flush(10)
    pub.close()
    stored = _stored(redis_client, redis_key_prefix)
    # a final pick after the retraction (a later decision, e.g. after an outage) is news: never lost
    assert [(p.pick_id, p.status, p.update, p.reason) for p in stored] == [
        ("a", "provisional", 0, ""), ("a", "retracted", 1, "not_confirmed"), ("a", "final", 2, ""),
    ]
    assert redis_client.hlen(StreamKeys(redis_key_prefix).openpicks) == 0
    # a retraction of an onset nobody reported is not stored
    _publish(redis_url, redis_key_prefix, [_pick(onset + 20 * NS, "retracted", pick_id="c")])
    assert len(_stored(redis_client, redis_key_prefix)) == 3
