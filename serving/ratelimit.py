"""Per-client rate limits with ``limits``: Redis storage when configured, else memory.

The stock in-memory storage of ``limits`` starts a timer thread to expire keys every
10 ms, which costs a thread start on most requests; ``SweepingMemoryStorage`` expires
keys on read (as the stock one also does) and sweeps stale keys inline once a minute.
No rate-limit headers on every response (they cost storage reads); a 429 carries
``Retry-After``, the seconds until the client's window resets.

With Redis, ``BatchedRedisStorage`` keeps the counts shared by every worker and instance
without a round trip per request: each worker counts hits locally and settles them with
Redis (one ``INCRBY`` script returning the window's global count and TTL) at most every
``SYNC_INTERVAL_S`` per client key. A client can so exceed its limit by what the other
workers admitted in the last interval, which for per-minute limits is a rounding error;
in exchange the limiter costs one Redis call per client per interval instead of per
request (measured in bench/bench_serving.py).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, request
from limits.storage import MemoryStorage, RedisStorage

from bookrec.apikeys import KeyRecord
from bookrec.settings import Settings
from serving.apikeys import ApiKeys, resolve_key
from serving.cache import Breaker
from serving.metrics import Metrics
from serving.validation import ApiError

UNLIMITED_ENDPOINTS = ("health.livez", "health.readyz", "health.metrics", "static")
_SWEEP_EVERY_S = 60.0
SYNC_INTERVAL_S = 0.05
_MAX_CLIENT_KEYS = 100_000  # remembered storage keys; forgotten all at once beyond this
_BATCHED_PREFIX = "bookrec-"
_FORGET_EXPIRED_ABOVE = 40_000  # windows kept before expired ones are swept on a new key

# INCRBY the window's counter, start its expiry on the first hit, and return the global
# count with the milliseconds left in the window.
_INCR_EXPIRE_TTL = """
local current = redis.call("incrby", KEYS[1], tonumber(ARGV[2]))
if tonumber(current) == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("pttl", KEYS[1])}
"""


class SweepingMemoryStorage(MemoryStorage):
    """``memory://`` without the per-request timer thread (scheme ``bookrec-memory://``)."""

    STORAGE_SCHEME = ["bookrec-memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any):
        """Same as the stock memory storage; remembers when it last swept."""
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._last_sweep = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - overrides a private hook
        """Sweep expired keys inline, at most once a minute, instead of in a new thread."""
        now = time.monotonic()
        if now - self._last_sweep >= _SWEEP_EVERY_S:
            self._last_sweep = now
            self._MemoryStorage__expire_events()


@dataclass
class _Window:
    """What this worker knows of one client's current window."""

    base: int  # the global count at the last settlement (our settled hits included)
    pending: int  # hits admitted here since then
    expires: float  # monotonic end of the window
    synced: float  # monotonic time of the last settlement


class BatchedRedisStorage(RedisStorage):
    """Redis storage whose fixed-window counters are settled in batches (see module doc).

    Takes a plain Redis URL; its own schemes ``bookrec-redis://`` and ``bookrec-rediss://``
    keep the ``limits`` storage registry's ``redis://`` on the stock class. ``incr`` and
    ``get`` are batched, ``clear`` and ``reset`` also forget the local windows; expiry and
    the moving and sliding windows are the stock Redis storage. A Redis error propagates,
    so the caller (``RateLimits``) falls back to its in-memory counter.
    """

    STORAGE_SCHEME = ["bookrec-redis", "bookrec-rediss"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any):
        """``sync_interval_s`` (option) bounds how long hits stay local."""
        self.sync_interval_s = float(options.pop("sync_interval_s", SYNC_INTERVAL_S))
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        super().__init__(
            uri.removeprefix(_BATCHED_PREFIX), wrap_exceptions=wrap_exceptions, **options
        )
        self._settle = self.get_connection().register_script(_INCR_EXPIRE_TTL)
        self._flusher: threading.Thread | None = None

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count ``amount`` hits; settle with Redis when this key was not settled lately."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now >= window.expires:
                window = _Window(0, 0, now + expiry, -float("inf"))
                self._windows[key] = window
                if len(self._windows) > _FORGET_EXPIRED_ABOVE:
                    self._forget_expired(now)
            window.pending += amount
            if now - window.synced < self.sync_interval_s:
                if self._flusher is None:
                    self._start_flusher()
                return window.base + window.pending
        return self._settle_window(key, window, expiry, now)

    def _settle_window(self, key: str, window: _Window, expiry: int, now: float) -> int:
        """Send this worker's unsettled hits of ``key`` to Redis; the new global count."""
        with self._lock:
            flush, window.pending, window.synced = window.pending, 0, now
        try:
            count, ttl_ms = self._settle([self.prefixed_key(key)], [expiry, flush])
        except Exception:
            with self._lock:  # keep the hits; the next call settles them (or the fallback)
                window.pending += flush
                window.synced = -float("inf")
            raise
        with self._lock:
            window.base = int(count)
            if int(ttl_ms) >= 0:
                window.expires = now + int(ttl_ms) / 1000.0
            return window.base + window.pending

    def _start_flusher(self) -> None:
        """A daemon thread that settles hits a client left behind when it went quiet here."""
        self._flusher = threading.Thread(
            target=self._flush_loop, name="ratelimit-flush", daemon=True
        )
        self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.sync_interval_s)
            now = time.monotonic()
            with self._lock:
                stale = [
                    (key, w)
                    for key, w in self._windows.items()
                    if w.pending and now - w.synced >= self.sync_interval_s and now < w.expires
                ]
            for key, window in stale:
                expiry = max(1, round(window.expires - now))
                try:
                    self._settle_window(key, window, expiry, now)
                except Exception:  # noqa: BLE001 - Redis down: the request path falls back
                    break

    def get(self, key: str) -> int:
        """The global count as last settled plus this worker's unsettled hits."""
        with self._lock:
            window = self._windows.get(key)
            pending = window.pending if window and time.monotonic() < window.expires else 0
        return super().get(key) + pending

    def clear(self, key: str) -> None:
        """Forget the key here and in Redis."""
        with self._lock:
            self._windows.pop(key, None)
        super().clear(key)

    def reset(self) -> int | None:
        """Forget every key here and in Redis."""
        with self._lock:
            self._windows.clear()
        return super().reset()

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now >= w.expires]:
            del self._windows[key]



def client_group(address: str) -> str:
    """The rate-limit bucket of a client address: an IPv4 address as is, an IPv6 address
    by its /64 (one subscriber or host usually holds a whole /64, and would otherwise get
    2**64 buckets). IPv4-mapped IPv6 addresses count as their IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RateLimits:
    """Per-client fixed-window limits, checked in one ``before_request`` hook.

    Built on ``limits`` (the library under Flask-Limiter) directly: Flask-Limiter's
    per-request limit resolution (route, blueprint and default limits, exemption scopes,
    context bookkeeping) cost about 110 us of a 260 us cached request here, and the API has
    one limit for every route but health checks. Storage: ``BatchedRedisStorage`` when
    Redis is configured, else ``SweepingMemoryStorage``. When Redis errors, the check
    falls back to an in-memory counter for a second (``fallbacks{reason="redis_down"}``)
    and never fails the request.
    """

    def __init__(self, settings: Settings, metrics: Metrics):
        """Parse the limit (``BOOKREC_RATE_LIMIT``, e.g. ``600 per minute``) and connect lazily."""
        from limits import parse
        from limits.errors import ConfigurationError
        from limits.strategies import FixedWindowRateLimiter

        try:
            self.item = parse(settings.rate_limit)
        except (ValueError, ConfigurationError) as exc:
            raise ValueError(
                f"BOOKREC_RATE_LIMIT: cannot parse {settings.rate_limit!r} ({exc})"
            ) from exc
        self.metrics = metrics
        self.memory = FixedWindowRateLimiter(SweepingMemoryStorage("bookrec-memory://"))
        self.shared = None
        if settings.redis_url:
            timeout = settings.redis_socket_timeout_s
            storage = BatchedRedisStorage(
                settings.redis_url,
                key_prefix="bookrec:limits",
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self.shared = FixedWindowRateLimiter(storage)
        self.breaker = Breaker(cooldown_s=1.0)
        self._expiry = self.item.get_expiry()
        self._keys: dict[str, str] = {}  # client -> storage key
        self._key_items: dict[int, Any] = {}  # an API key's rate -> its limit

    def _hit(self, strategy: Any, client: str, item: Any) -> bool:
        """``FixedWindowRateLimiter.hit`` with each client's storage key built once (its
        ``key_for`` was a few microseconds of every request)."""
        key = self._keys.get(client)
        if key is None:
            if len(self._keys) >= _MAX_CLIENT_KEYS:
                self._keys.clear()
            key = self._keys[client] = item.key_for("api", client_group(client))
        expiry = self._expiry if item is self.item else item.get_expiry()
        return strategy.storage.incr(key, expiry, amount=1) <= item.amount

    def key_limit(self, key: KeyRecord) -> tuple[str, Any]:
        """The (client, limit) of an API key: its own per-minute rate, apart from addresses."""
        from limits import RateLimitItemPerMinute

        item = self._key_items.get(key.rate_per_minute)
        if item is None:
            item = self._key_items[key.rate_per_minute] = RateLimitItemPerMinute(
                key.rate_per_minute
            )
        return f"key:{key.id}", item

    def _strategy(self):
        if self.shared is not None and not self.breaker.open:
            return self.shared
        return self.memory

    def hit(self, client: str, item: Any = None) -> tuple[bool, int]:
        """Count one request of ``client`` against ``item`` (default: the per-client limit):
        (allowed, seconds until its window resets)."""
        item = item or self.item
        strategy = self._strategy()
        try:
            allowed = self._hit(strategy, client, item)
        except Exception:  # noqa: BLE001 - any storage error: count in memory for a while
            self.breaker.trip()
            self.metrics.fallbacks.labels(reason="redis_down").inc()
            strategy = self.memory
            allowed = self._hit(strategy, client, item)
        if allowed:
            return True, 0
        try:
            reset = strategy.get_window_stats(item, "api", client_group(client)).reset_time
            retry = max(1, int(reset - time.time() + 0.999))
        except Exception:  # noqa: BLE001 - the header is best effort
            retry = item.get_expiry()
        return False, retry


def init_rate_limits(
    app: Flask, settings: Settings, metrics: Metrics, keys: ApiKeys
) -> RateLimits:
    """Check ``settings.rate_limit`` per client before every request but health checks (the
    client is ``remote_addr``: the peer, or what ``BOOKREC_TRUSTED_PROXIES`` hops saw); a
    request with a valid API key is limited by that key's own rate instead."""
    limits = RateLimits(settings, metrics)
    description = str(settings.rate_limit)

    def check() -> None:
        req = request._get_current_object()
        if req.endpoint in UNLIMITED_ENDPOINTS:
            return
        key = resolve_key(keys, req)
        if key is None:
            allowed, retry = limits.hit(req.remote_addr or "unknown")
            limit = description
        else:
            allowed, retry = limits.hit(*limits.key_limit(key))
            limit = f"{key.rate_per_minute} per minute for API key {key.id}"
        if not allowed:
            metrics.rate_limited.inc()
            raise ApiError(
                429,
                "too_many_requests",
                f"rate limit exceeded ({limit}); retry later",
                headers={"Retry-After": str(retry)},
            )

    app.before_request(check)
    app.extensions["bookrec_rate_limits"] = limits
    return limits
