"""Rate-limited logging: one line per key and interval, with the count of the repeats it held back.

A flood of identical problems (a station sending garbage, a queue shedding every batch) must not flood
the log; the metrics count every occurrence, the log says that it happens and how often.

Limitations: keys are kept in memory; past ``max_keys`` distinct keys, new keys are not logged at all
(a flood of bogus station codes costs bounded memory). Not thread-safe: use one instance per thread,
or accept that a race may log one extra line or miss one count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

__all__ = ["RateLimitedLog"]

DEFAULT_SUPPRESSED_SUFFIX = " ({n} similar suppressed)"


class RateLimitedLog:
    """Logs through ``logger`` at most once per ``interval_s`` per key.

    The next line that does get through ends with ``suffix`` (formatted with ``n``, the number of
    repeats held back since the last line for that key). ``interval_s=math.inf`` logs each key once.
    ``clock_s`` is a monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        *,
        suffix: str = DEFAULT_SUPPRESSED_SUFFIX,
        max_keys: int = 100_000,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = float(interval_s)
        self.suffix = suffix
        self.max_keys = int(max_keys)
        self.clock_s = clock_s
        self._last_s: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def log(self, key: Hashable, level: int, msg: str, *args: object, now_s: float | None = None) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than ``interval_s`` ago
        (``now_s`` replaces the clock for this call). Returns True when the line was written."""
        now = self.clock_s() if now_s is None else now_s
        last = self._last_s.get(key)
        if last is None and len(self._last_s) >= self.max_keys:
            return False
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        n = self._suppressed.pop(key, 0)
        self._last_s[key] = now
        self.logger.log(level, msg + (self.suffix.format(n=n) if n else ""), *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(key, logging.WARNING, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(key, logging.INFO, msg, *args)

    def suppressed(self, key: Hashable) -> int:
        """Repeats of ``key`` held back since its last line."""
        return self._suppressed.get(key, 0)

