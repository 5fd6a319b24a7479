"""Cache-aside for API responses: Redis when configured, an in-process LRU otherwise.

Values are the serialised JSON bodies, so a hit costs one lookup and no encoding. Keys
carry the model version, so a promotion never serves results of the previous model.
Redis is reached with short socket timeouts and no retries; when it errors or is slow the
request is answered from the in-process cache (computing the value if needed), a metric
counts it, and Redis is left alone for a second before it is tried again. With Redis, a
short-lived in-process copy (5 s) sits in front of it so hot keys cost no round trip.
A reader's lists are keyed by their generation as well (``user_generation``): a posted
rating bumps it, so no worker anywhere serves the old list (see serving/recommendations.py);
each worker keeps the generations it read, and the rating's POST makes every worker drop
its copy before it answers (``serving/generations.py``).

Under gunicorn (``start()``) a computed value is stored in the worker's memory at once and
written to Redis by a background thread, a pipeline per batch, instead of a round trip on
the request path (~50 us of worker CPU with redis-py, plus the wait): another worker that
asks for the same key within those milliseconds computes the same value itself. The queue
is bounded (``FILL_QUEUE_MAX``); when it is full the request writes its value itself.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable

from bookrec.settings import Settings
from serving.breaker import Breaker
from serving.generations import LocalGenerations
from serving.metrics import Metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "bookrec:api:"
GENERATION_PREFIX = "bookrec:ugen:"  # per-reader generation of their lists (Redis)
LOCAL_TTL_S = 5.0  # in-process copy in front of Redis: hot keys skip the round trip
LOCAL_MAX_ENTRIES = 2_000  # that copy holds hot keys only (a worker's memory is shared)
MEMORY_MAX_ENTRIES = 10_000  # without Redis the in-process LRU is the whole cache
FILL_QUEUE_MAX = 10_000  # values waiting for the background writer
FILL_BATCH = 500  # values per pipeline
FILL_GATHER_S = 0.002  # after a wake-up, how long the writer lets a batch gather


class MemoryCache:
    """A thread-safe LRU with per-entry expiry."""

    def __init__(self, maxsize: int = 10_000):
        self.maxsize = maxsize
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires < time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` for ``ttl_s`` seconds, evicting the least recently used and a few
        expired entries from the cold end (so memory follows the live entries)."""
        now = time.monotonic()
        with self._lock:
            data = self._data
            data[key] = (now + ttl_s, value)
            data.move_to_end(key)
            while len(data) > self.maxsize:
                data.popitem(last=False)
            for _ in range(4):
                oldest = next(iter(data.values()))
                if oldest[0] >= now:
                    break
                data.popitem(last=False)

    def recent_keys(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` live keys starting with ``prefix``, most recently used first."""
        now = time.monotonic()
        with self._lock:
            found = []
            for key in reversed(self._data):
                if key.startswith(prefix) and self._data[key][0] >= now:
                    found.append(key)
                    if len(found) >= limit:
                        break
            return found

    def delete(self, keys: list[str]) -> None:
        """Drop these keys if present."""
        with self._lock:
            for key in keys:
                self._data.pop(key, None)


class Cache:
    """Cache-aside front: ``get_or_compute(kind, key, compute)``."""

    def __init__(self, settings: Settings, metrics: Metrics):
        """Connect lazily to Redis when ``settings.redis_url`` is set."""
        self.ttl_s = settings.cache_ttl_s
        self.redis_url = settings.redis_url
        self.metrics = metrics
        self.memory = MemoryCache(LOCAL_MAX_ENTRIES if settings.redis_url else MEMORY_MAX_ENTRIES)
        self.breaker = Breaker()
        self.redis = None
        self._fills: deque[tuple[str, bytes]] = deque()
        self._fill_wake = threading.Event()
        self._fill_stop = threading.Event()
        self._filler: threading.Thread | None = None
        self.generations: LocalGenerations | None = None  # with Redis, once started
        self._writes = None  # a client for rating writes (waits longer than a lookup)
        if settings.redis_url:
            self.generations = LocalGenerations(
                settings.redis_url, settings.redis_socket_timeout_s
            )
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            timeout = settings.redis_socket_timeout_s
            self.redis = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )

    @staticmethod
    def key(version: str, *parts: object) -> str:
        """A cache key scoped to a model version."""
        return KEY_PREFIX + version + ":" + ":".join(str(p) for p in parts)

    def _redis_failed(self, exc: Exception) -> None:
        self.breaker.trip()
        self.metrics.fallbacks.labels(reason="redis_down").inc()
        log.warning("redis unavailable, answering from memory: %s", exc)

    def get(self, key: str) -> bytes | None:
        """The cached value from Redis (or memory when Redis is down or not configured)."""
        if self.redis is None or self.breaker.open:
            if self.redis is not None:
                self.metrics.fallbacks.labels(reason="redis_down").inc()
            return self.memory.get(key)
        local = self.memory.get(key)
        if local is not None:
            return local
        import redis

        try:
            value = self.redis.get(key)
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return None
        if value is not None:
            self.memory.set(key, value, min(LOCAL_TTL_S, self.ttl_s))
        return value

    def set(self, key: str, value: bytes) -> None:
        """Store a value (in memory as well when Redis is unavailable); with the background
        writer running, Redis gets it a few milliseconds later."""
        if self.redis is None or self.breaker.open:
            self.memory.set(key, value, self.ttl_s)
            return
        if self._filler is not None and len(self._fills) < FILL_QUEUE_MAX:
            self.memory.set(key, value, min(LOCAL_TTL_S, self.ttl_s))
            self._fills.append((key, value))
            self._fill_wake.set()
            return
        import redis

        try:
            self.redis.set(key, value, ex=self.ttl_s)
        except redis.RedisError as exc:
            self._redis_failed(exc)
            self.memory.set(key, value, self.ttl_s)
            return
        self.memory.set(key, value, min(LOCAL_TTL_S, self.ttl_s))

    def delete(self, keys: list[str]) -> None:
        """Forget some entries (a user's results after a new rating)."""
        self.flush_fills()  # a queued value must not land in Redis after its deletion
        self.memory.delete(keys)
        if self.redis is None or self.breaker.open or not keys:
            return
        import redis

        try:
            self.redis.delete(*keys)
        except redis.RedisError as exc:
            self._redis_failed(exc)

    def held(self, key: str) -> bytes | None:
        """The value from this worker's memory alone (no Redis call), or None; None also
        while Redis is configured but bypassed by its breaker (``get`` counts that)."""
        if self.redis is not None and self.breaker.open:
            return None
        return self.memory.get(key)

    def held_user_generation(self, user_id: int) -> str | None:
        """The reader's generation from this worker's copy alone (no Redis call), or None:
        without Redis, while it is bypassed, or when the copy is not held or not usable."""
        generations = self.generations
        if self.redis is None or self.breaker.open or generations is None:
            return None
        return generations.get(user_id) if generations.started else None

    def user_generation(self, user_id: int) -> str | None:
        """The reader's list generation ("0" before their first posted rating), or None
        without Redis or when it fails (the caller checks PostgreSQL instead). With the
        background threads running, from this worker's copy when it holds a usable one
        (``serving/generations.py``), else from Redis (and then kept)."""
        if self.redis is None or self.breaker.open:
            return None
        kept = self.held_user_generation(user_id)
        if kept is not None:
            return kept
        generations = self.generations
        mark = generations.mark() if generations is not None and generations.started else None
        import redis

        try:
            value = self.redis.get(GENERATION_PREFIX + str(user_id))
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return None
        generation = value.decode() if value is not None else "0"
        if mark is not None:
            generations.put(user_id, generation, mark)
        return generation

    def bump_user_generation(self, user_id: int) -> bool:
        """Give the reader a new, unique generation (after a rating is stored), so every
        cached list of theirs, in Redis or in any worker's memory, is missed from now on.
        It lives twice the cache TTL: by then every entry keyed by an older one expired.
        Then every worker's copy of the old generation is dropped (or made unusable)
        before this returns (``LocalGenerations.invalidate``)."""
        if self.redis is None:
            return False
        import redis

        try:
            if self._writes is None:
                # BLPOP waits up to 0.5 s for acknowledgements: longer than a lookup's timeout
                self._writes = redis.Redis.from_url(
                    self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
                    health_check_interval=0,
                )
            self._writes.set(
                GENERATION_PREFIX + str(user_id), uuid.uuid4().hex[:16], ex=2 * self.ttl_s
            )
            self.generations.invalidate(self._writes, user_id)
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return False
        return True

    def get_or_compute(
        self, kind: str, key: str, compute: Callable[[], tuple[bytes, bool]]
    ) -> bytes:
        """Cache-aside: the cached body, or ``compute()`` -> (body, cacheable) stored if cacheable.

        Degraded answers (a store was down) are returned but not cached.
        """
        value = self.get(key)
        if value is not None:
            self.metrics.cache_lookup(kind, True)
            return value
        self.metrics.cache_lookup(kind, False)
        value, cacheable = compute()
        if cacheable:
            self.set(key, value)
        return value

    # -- background writes to Redis ----------------------------------------------------------
    def start(self) -> None:
        """Write computed values to Redis from a background thread from now on, and keep
        readers' generations in memory (both with Redis)."""
        if self.redis is None:
            return
        self.generations.start()
        if self._filler is not None and self._filler.is_alive():
            return
        self._fill_stop.clear()
        self._filler = threading.Thread(target=self._fill_loop, name="cache-writer", daemon=True)
        self._filler.start()

    def _fill_loop(self) -> None:
        while not self._fill_stop.is_set():
            if not self._fill_wake.wait(1.0):
                continue
            time.sleep(FILL_GATHER_S)  # let a batch gather: one pipeline for many requests
            self._fill_wake.clear()
            self.flush_fills()

    def flush_fills(self) -> int:
        """Write the queued values to Redis now (pipelines of ``FILL_BATCH``); how many were
        written. When Redis fails they stay in this worker's memory for the full TTL."""
        import redis

        written = 0
        while self._fills:
            batch = []
            while self._fills and len(batch) < FILL_BATCH:
                batch.append(self._fills.popleft())
            if not self.breaker.open:
                try:
                    pipe = self.redis.pipeline(transaction=False)
                    for key, value in batch:
                        pipe.set(key, value, ex=self.ttl_s)
                    pipe.execute()
                    written += len(batch)
                    continue
                except redis.RedisError as exc:
                    self._redis_failed(exc)
            for key, value in batch:
                self.memory.set(key, value, self.ttl_s)
        return written

    def close(self) -> None:
        """Stop the background writer (writing what it holds) and close the connection pool."""
        if self._filler is not None:
            self._fill_stop.set()
            self._fill_wake.set()
            self._filler.join(timeout=5)
            self._filler = None
        if self.generations is not None and self.generations.started:
            self.generations.stop()
        if self.redis is not None:
            self.flush_fills()
            self.redis.close()
        if self._writes is not None:
            self._writes.close()
