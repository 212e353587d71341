"""The test harness itself: the Redis fixture is a real server, metrics scrape over HTTP."""

from __future__ import annotations

import urllib.request

import pytest

from streamer.metrics import Metrics, serve_metrics


@pytest.mark.integration
def test_redis_fixture_is_a_real_server(redis_client) -> None:
    info = redis_client.info("server")
    assert "redis_version" in info
    # Streams with explicit IDs behave as Redis does: a repeated ID is refused.
    redis_client.xadd("h:s", {"a": "1"}, id="5-0")
    with pytest.raises(Exception, match="equal or smaller"):
        redis_client.xadd("h:s", {"a": "2"}, id="5-0")


@pytest.mark.integration
def test_metrics_scrape_over_http(metrics: Metrics) -> None:
    metrics.records_received.labels(station=metrics.station("NC.ABC.")).inc(3)
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'coldstream_records_received_total{station="NC.ABC."} 3.0' in body


def test_station_labels_are_bounded(registry) -> None:
    m = Metrics(registry, max_station_labels=2)
    assert [m.station(s) for s in ("A", "B", "C", "A")] == ["A", "B", "other", "A"]
