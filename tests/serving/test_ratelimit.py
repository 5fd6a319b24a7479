"""The batched Redis storage of the rate limiter, against the real local Redis."""

from __future__ import annotations

import time

import pytest
import redis
from limits import parse
from limits.strategies import FixedWindowRateLimiter

from serving.ratelimit import BatchedRedisStorage


def storage(redis_url: str, interval: float) -> BatchedRedisStorage:
    return BatchedRedisStorage(
        "bookrec-" + redis_url, sync_interval_s=interval, key_prefix="test", socket_timeout=0.5
    )


def test_two_workers_share_one_limit_when_settling_every_hit(redis_url):
    limit = parse("10 per minute")
    a = FixedWindowRateLimiter(storage(redis_url, 0.0))
    b = FixedWindowRateLimiter(storage(redis_url, 0.0))
    admitted = [(a if i % 2 else b).hit(limit, "client") for i in range(14)]
    assert admitted == [True] * 10 + [False] * 4
    assert a.storage.get(limit.key_for("client")) == 14  # refused hits count too (stock)


def test_batched_counts_settle_within_the_interval(redis_url):
    limit = parse("100 per minute")
    key = limit.key_for("client")
    server = redis.Redis.from_url(redis_url)
    a, b = storage(redis_url, 0.2), storage(redis_url, 0.2)
    assert [a.incr(key, 60) for _ in range(5)] == [1, 2, 3, 4, 5]
    # the first hit settled at once; four are local to a until its next settlement
    assert int(server.get("test:" + key)) == 1
    assert b.incr(key, 60) == 2
    time.sleep(0.5)  # a's flusher settles the four it kept
    assert int(server.get("test:" + key)) == 6
    assert b.incr(key, 60) == 7  # b settles again and sees a's hits
    assert 0 < server.ttl("test:" + key) <= 60
    server.close()


def test_a_heavy_client_is_limited_across_workers(redis_url):
    """Four workers, 50 ms settlement: a burst over the limit is refused within a margin."""
    limit = parse("40 per minute")
    workers = [FixedWindowRateLimiter(storage(redis_url, 0.05)) for _ in range(4)]
    admitted = 0
    for i in range(200):
        admitted += workers[i % 4].hit(limit, "greedy")
        time.sleep(0.002)
    assert 40 <= admitted <= 40 + 4 * 14  # at most one interval's hits per worker beyond
    assert workers[0].hit(limit, "other client")


def test_redis_errors_propagate_and_keep_the_hits(redis_url):
    broken = BatchedRedisStorage(
        "bookrec-redis://127.0.0.1:1/0",
        sync_interval_s=0.0,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
    )
    with pytest.raises(redis.ConnectionError):
        broken.incr("k", 60)
    assert broken._windows["k"].pending == 1


def test_redis_down_falls_back_to_memory_and_counts_it():
    from bookrec.settings import Settings
    from serving.metrics import Metrics
    from serving.ratelimit import RateLimits

    metrics = Metrics()
    limits = RateLimits(
        Settings(redis_url="redis://127.0.0.1:1/0", rate_limit="2 per minute"), metrics
    )
    assert [limits.hit("c")[0] for _ in range(3)] == [True, True, False]
    allowed, retry = limits.hit("c")
    assert not allowed and 1 <= retry <= 60
    assert metrics.fallbacks.labels(reason="redis_down")._value.get() >= 1


def test_an_unparseable_limit_names_the_setting():
    from bookrec.settings import Settings
    from serving.metrics import Metrics
    from serving.ratelimit import RateLimits

    with pytest.raises(ValueError, match="BOOKREC_RATE_LIMIT: cannot parse 'lots'"):
        RateLimits(Settings(rate_limit="lots"), Metrics())
