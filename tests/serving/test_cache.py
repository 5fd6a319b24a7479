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
