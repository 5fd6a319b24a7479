"""The circuit breaker the cache, the rate limiter and the catalog share."""

from __future__ import annotations

import time

from serving.breaker import Breaker


def test_a_trip_skips_the_dependency_for_the_cooldown_only():
    breaker = Breaker(cooldown_s=0.2)
    assert not breaker.open
    breaker.trip()
    assert breaker.open
    time.sleep(0.25)
    assert not breaker.open
