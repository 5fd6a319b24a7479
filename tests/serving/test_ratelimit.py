"""The rate limiter's shared counts against the real local Redis, and its fallback."""

from __future__ import annotations

import time

import pytest
import redis
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from bookrec.settings import Settings
from serving.metrics import Metrics
from serving.ratelimit import NAMESPACE, RateLimits, SharedCounts


def shared(redis_url: str, interval: float, timeout: float = 0.5) -> SharedCounts:
    """A worker's shared counts on ``redis_url`` (keys under ``test:``)."""
    storage = RedisStorage(redis_url, key_prefix="test", socket_timeout=timeout,
                           socket_connect_timeout=timeout)
    return SharedCounts(FixedWindowRateLimiter(storage), interval)


def redis_count(redis_url: str, limit, group: str) -> int:
    """The window's global count as Redis holds it."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.get("test:" + limit.key_for(NAMESPACE, group)) or 0)
    finally:
        client.close()


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_two_workers_share_one_limit(redis_url, interval):
    """Hits spaced beyond the interval settle one by one: the shared limit is exact."""
    limit = parse("10 per minute")
    a, b = shared(redis_url, interval), shared(redis_url, interval)
    admitted = []
    for i in range(14):
        admitted.append((a if i % 2 else b).hit(limit, "client"))
        time.sleep(interval * 1.2)
    assert admitted == [True] * 10 + [False] * 4
    assert redis_count(redis_url, limit, "client") == 14  # refused hits count too (stock)
    assert a.hit(limit, "another client")


def test_hits_between_settlements_stay_local_until_flushed(redis_url):
    limit = parse("100 per minute")
    a, b = shared(redis_url, 0.2), shared(redis_url, 0.2)
    assert all(a.hit(limit, "c") for _ in range(5))
    # the first hit settled at once; four are local to a until its next settlement
    assert redis_count(redis_url, limit, "c") == 1
    assert b.hit(limit, "c") and redis_count(redis_url, limit, "c") == 2
    time.sleep(0.5)  # a's flusher settles the four it kept
    assert redis_count(redis_url, limit, "c") == 6
    assert b.hit(limit, "c") and redis_count(redis_url, limit, "c") == 7


def test_a_burst_is_limited_across_workers_within_one_interval_each(redis_url):
    """Four workers, 50 ms settlement: a burst over the limit is refused within a margin."""
    limit = parse("40 per minute")
    workers = [shared(redis_url, 0.05) for _ in range(4)]
    admitted = 0
    for i in range(200):
        admitted += workers[i % 4].hit(limit, "greedy")
        time.sleep(0.002)
    assert 40 <= admitted <= 40 + 4 * 14  # at most one interval's hits per worker beyond
    assert workers[0].hit(limit, "other client")


def test_redis_errors_propagate_and_the_hits_are_kept_for_the_next_settlement(redis_url):
    limit = parse("10 per minute")
    broken = shared("redis://127.0.0.1:1/0", 0.05, timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        broken.hit(limit, "c")
    with pytest.raises(redis.ConnectionError):
        broken.hit(limit, "c")  # the failed settlement is retried at once
    broken.limiter = shared(redis_url, 0.05).limiter  # Redis is back
    assert broken.hit(limit, "c")
    assert redis_count(redis_url, limit, "c") == 3  # no hit was lost


def test_redis_down_falls_back_to_memory_and_counts_it():
    metrics = Metrics()
    limits = RateLimits(
        Settings(redis_url="redis://127.0.0.1:1/0", rate_limit="2 per minute"), metrics
    )
    assert [limits.hit("c")[0] for _ in range(3)] == [True, True, False]
    allowed, retry = limits.hit("c")
    assert not allowed and 1 <= retry <= 60
    assert metrics.fallbacks.labels(reason="redis_down")._value.get() >= 1


def test_without_redis_the_limit_is_per_worker_in_memory():
    limits = RateLimits(Settings(rate_limit="3 per minute"), Metrics())
    assert limits.shared is None
    assert [limits.hit("10.0.0.1")[0] for _ in range(4)] == [True, True, True, False]
    assert limits.hit("10.0.0.2") == (True, 0)
    # an IPv6 client counts by its /64
    assert [limits.hit(f"2001:db8::{i}")[0] for i in range(4)] == [True, True, True, False]


def test_an_unparseable_limit_names_the_setting():
    with pytest.raises(ValueError, match="BOOKREC_RATE_LIMIT: cannot parse 'lots'"):
        RateLimits(Settings(rate_limit="lots"), Metrics())


def test_the_limiter_uses_only_public_names_of_limits():
    """The module reaches no private or name-mangled attribute of another library."""
    import re
    from pathlib import Path

    import serving.ratelimit as module

    source = Path(module.__file__).read_text()
    assert not re.search(r"\._[A-Za-z]+__", source)  # name-mangled
    assert "storage.incr" not in source


def test_while_the_breaker_is_open_hits_are_counted_here_and_sent_later(redis_url):
    """After a Redis error the worker counts on its own (no storage call, no in-memory
    storage of ``limits``), from the global count it last settled; the hits it counted go
    to Redis with the next settlement."""
    limits = RateLimits(
        Settings(redis_url=redis_url, rate_limit="5 per minute", rate_limit_sync_s=0.05),
        Metrics(),
    )
    client = redis.Redis.from_url(redis_url)
    key = "bookrec:limits:" + limits.item.key_for(NAMESPACE, "10.0.0.9")
    try:
        assert limits.hit("10.0.0.9") == (True, 0)  # the first hit settles: Redis holds 1
        assert int(client.get(key)) == 1
        limits.breaker.trip()  # as a Redis timeout would
        answers = [limits.hit("10.0.0.9") for _ in range(5)]
        assert [allowed for allowed, _ in answers] == [True] * 4 + [False]
        assert 1 <= answers[-1][1] <= 60  # Retry-After: the window's end
        assert int(client.get(key)) == 1  # nothing was sent meanwhile
        while limits.breaker.open:
            time.sleep(0.05)
        assert limits.hit("10.0.0.9")[0] is False  # settles the 5 kept and this one
        assert int(client.get(key)) == 7
    finally:
        client.close()
