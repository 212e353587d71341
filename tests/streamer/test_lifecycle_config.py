"""Configuration values that would make the daemon misbehave silently must stop the start, key named."""

from __future__ import annotations

import pytest

from streamer.config import ConfigError, load_settings


@pytest.mark.parametrize(
    "override, key",
    [
        ("service.drain_timeout_s=inf", "service.drain_timeout_s"),
        ("service.watchdog_stall_s=inf", "service.watchdog_stall_s"),
        ("seedlink.state_save_interval_s=inf", "seedlink.state_save_interval_s"),
    ],
)
def test_infinite_durations_are_rejected(override: str, key: str) -> None:
    # an infinite drain or stall time means "never": no drain timeout, no watchdog, no state save
    with pytest.raises(ConfigError, match=key):
        load_settings(overrides=[override], environ={})


def test_infinite_duration_from_the_environment_is_rejected() -> None:
    with pytest.raises(ConfigError, match="service.drain_timeout_s"):
        load_settings(environ={"COLDSTREAM_SERVICE__DRAIN_TIMEOUT_S": "inf"})


def test_embedded_redis_is_not_silently_ignored() -> None:
    # the service always connects to redis.url; accepting embedded = true would write to whatever
    # answers there (or nothing) while the operator believes a private server runs
    with pytest.raises(ConfigError, match="redis.embedded"):
        load_settings(overrides=["redis.embedded=true"], environ={})
    assert load_settings(overrides=["redis.embedded=false"], environ={}).redis.embedded is False
