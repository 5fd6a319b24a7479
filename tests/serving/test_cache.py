"""The in-process LRU behind (or instead of) Redis."""

from __future__ import annotations

import time

from bookrec.settings import Settings
from serving.cache import LOCAL_MAX_ENTRIES, MEMORY_MAX_ENTRIES, Cache, MemoryCache
from serving.metrics import Metrics


def test_lru_evicts_the_least_recently_used():
    cache = MemoryCache(maxsize=3)
    for key in "abc":
        cache.set(key, key.encode(), 60)
    assert cache.get("a") == b"a"  # a is now the most recent
    cache.set("d", b"d", 60)
    assert [cache.get(k) for k in "abcd"] == [b"a", None, b"c", b"d"]


def test_expired_entries_are_dropped_from_the_cold_end_on_writes():
    cache = MemoryCache(maxsize=100)
    for i in range(8):
        cache.set(f"old{i}", b"x" * 1000, 0.01)
    time.sleep(0.02)
    assert cache.get("old7") is None  # expired on read
    cache.set("new1", b"n", 60)
    cache.set("new2", b"n", 60)
    assert len(cache._data) == 2  # every stale entry left without being read again
    assert cache.get("new1") == cache.get("new2") == b"n"


def test_local_copy_is_small_when_redis_holds_the_cache(redis_url):
    metrics = Metrics()
    assert Cache(Settings(redis_url=redis_url), metrics).memory.maxsize == LOCAL_MAX_ENTRIES
    assert Cache(Settings(redis_url=None), metrics).memory.maxsize == MEMORY_MAX_ENTRIES


def test_background_writer_fills_redis_for_other_workers(redis_url, redis_server):
    import redis

    metrics = Metrics()
    worker = Cache(Settings(redis_url=redis_url), metrics)
    other = Cache(Settings(redis_url=redis_url), metrics)  # another worker: its own memory
    client = redis.Redis.from_url(redis_url)
    worker.start()
    try:
        body = worker.get_or_compute("popular", "bookrec:api:v1:popular:10", lambda: (b"[1]", True))
        assert body == b"[1]"
        assert worker.memory.get("bookrec:api:v1:popular:10") == b"[1]"  # at once, here
        deadline = time.monotonic() + 5
        while client.get("bookrec:api:v1:popular:10") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("bookrec:api:v1:popular:10") == b"[1]"  # in Redis, with its TTL
        assert 0 < client.ttl("bookrec:api:v1:popular:10") <= worker.ttl_s
        assert (
            other.get_or_compute("popular", "bookrec:api:v1:popular:10", lambda: (b"no", True))
            == b"[1]"
        )
    finally:
        worker.close()
        other.close()
        client.close()

    # Redis gone: a queued value stays in the worker's memory for the full TTL, and no
    # request waits on the writes.
    down = Cache(Settings(redis_url=redis_server["url"]), metrics)
    down.start()
    try:
        redis_server["proc"].terminate()
        redis_server["proc"].wait(timeout=10)
        started = time.monotonic()
        for i in range(50):
            down.set(f"bookrec:api:v1:book:{i}", b"x")
        assert time.monotonic() - started < 0.5
        down.flush_fills()
        assert down.breaker.open
        assert down.memory._data["bookrec:api:v1:book:0"][0] > time.monotonic() + 60  # full TTL
        assert all(down.memory.get(f"bookrec:api:v1:book:{i}") == b"x" for i in range(50))
    finally:
        down.close()
