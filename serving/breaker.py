"""A circuit breaker for the serving tier's optional dependencies (Redis for the cache and
the rate limiter, PostgreSQL for the catalog): after an error the dependency is skipped for
a short cool-down, so a down service costs one timeout, not one per request."""

from __future__ import annotations

import time


class Breaker:
    """Skips a failing dependency for ``cooldown_s`` after an error (cheap, thread-safe enough)."""

    def __init__(self, cooldown_s: float = 1.0):
        self.cooldown_s = cooldown_s
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        """True while the dependency should not be tried."""
        return time.monotonic() < self._open_until

    def trip(self) -> None:
        """Record a failure: skip the dependency for a while."""
        self._open_until = time.monotonic() + self.cooldown_s
