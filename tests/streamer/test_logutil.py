"""The rate-limited log: one line per key and interval, the repeats counted in the next line."""

from __future__ import annotations

import logging
import math

import pytest

from streamer.logutil import RateLimitedLog

LOGGER = "tests.logutil"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_one_line_per_interval_with_the_count_held_back(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rl = RateLimitedLog(logging.getLogger(LOGGER), 10.0, clock_s=clock)
    assert rl.warning("k", "shed %d windows", 3)
    for _ in range(4):
        clock.now_s += 2.0
        assert not rl.warning("k", "shed %d windows", 3)
    assert rl.suppressed("k") == 4
    clock.now_s += 2.0  # 10 s after the first line
    assert rl.warning("k", "shed %d windows", 5)
    assert messages(caplog) == ["shed 3 windows", "shed 5 windows (4 similar suppressed)"]
    assert rl.suppressed("k") == 0


def test_keys_are_independent(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rl = RateLimitedLog(logging.getLogger(LOGGER), 10.0, clock_s=clock)
    rl.warning("a", "a")
    rl.warning("b", "b")
    rl.warning("a", "a")
    assert messages(caplog) == ["a", "b"]


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_any_level(level: int, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    RateLimitedLog(logging.getLogger(LOGGER), clock_s=clock).log("k", level, "x")
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [level]


def test_infinite_interval_logs_each_key_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rl = RateLimitedLog(logging.getLogger(LOGGER), math.inf, clock_s=clock)
    for _ in range(3):
        rl.warning(("XX.AAA.00", "rate"), "once")
        clock.now_s += 1e9
    assert messages(caplog) == ["once"]


def test_past_max_keys_new_keys_are_not_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rl = RateLimitedLog(logging.getLogger(LOGGER), 10.0, max_keys=2, clock_s=clock)
    for key in ("a", "b", "c"):
        rl.warning(key, key)
    clock.now_s += 10.0
    rl.warning("a", "a again")
    assert messages(caplog) == ["a", "b", "a again"]


def test_custom_suffix_and_explicit_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rl = RateLimitedLog(logging.getLogger(LOGGER), 60.0, suffix=" ({n} more gaps)")
    rl.log("s", logging.INFO, "gap", now_s=0.0)
    rl.log("s", logging.INFO, "gap", now_s=30.0)
    rl.log("s", logging.INFO, "gap", now_s=60.0)
    assert messages(caplog) == ["gap", "gap (1 more gaps)"]
