"""Per-client rate limits with the ``limits`` library, through its public API only.

Without Redis, ``limits``' own fixed-window strategy on its in-memory storage. With Redis,
the counts are shared by every worker and instance, but a worker does not ask Redis on every
request: ``SharedCounts`` counts a client's hits locally and settles them with Redis (one
``FixedWindowRateLimiter.hit`` with ``cost`` = the hits since the last settlement, then
``get_window_stats`` for the global count) at most every ``BOOKREC_RATE_LIMIT_SYNC_S``
(default 50 ms) per client. A client can so exceed its limit by what the other workers
admitted in one interval, a rounding error for per-minute limits (a daemon thread settles
the hits of clients that went quiet on a worker); a Redis call on every
request cost ~120 us of worker CPU, half a cached request (measured in
bench/bench_serving.py, see docs/serving.md). ``BOOKREC_RATE_LIMIT_SYNC_S=0`` asks Redis on
every request. When Redis errors, the worker counts on its own for a second
(``fallbacks{reason="redis_down"}``): a client's hits are admitted while the global count
as last settled plus the hits counted here stays within the limit, and those hits are sent
with the next settlement; the request never fails. (The in-memory storage of ``limits``,
used without Redis, starts a timer thread every 10 ms while it is used: ~10% of a worker's
GIL samples when Redis timeouts under load opened the breaker.)

No rate-limit headers on every response (they would cost storage reads); a 429 carries
``Retry-After``, the seconds until the client's window resets.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, request
from limits import RateLimitItem
from limits.strategies import FixedWindowRateLimiter

from bookrec.apikeys import KeyRecord
from bookrec.settings import Settings
from serving.apikeys import ApiKeys, resolve_key
from serving.breaker import Breaker
from serving.fastpath import RATE_VERDICT
from serving.metrics import Metrics
from serving.validation import ApiError

UNLIMITED_ENDPOINTS = ("health.livez", "health.readyz", "health.metrics", "static")
NAMESPACE = "api"  # the first identifier of every limit's storage key
_SWEEP_ABOVE = 40_000  # windows remembered before expired ones are swept on a new client
_MAX_WINDOWS = 100_000  # beyond this (after a sweep) all are forgotten at once


@functools.lru_cache(maxsize=65_536)
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


@dataclass
class _Window:
    """What this worker knows of one client's current window."""

    item: RateLimitItem
    group: str
    base: int  # the global count at the last settlement (our settled hits included)
    pending: int  # hits counted here since then
    expires: float  # monotonic end of the window
    synced: float  # monotonic time of the last settlement


class SharedCounts:
    """Fixed-window counts kept in ``limiter``'s (Redis) storage, settled in batches.

    Each client's hits are counted here and sent to the shared limiter with one
    ``hit(cost=n)`` when the client's last settlement is ``sync_interval_s`` old (so its
    first hit settles at once); in between, a hit is admitted when the global count as last
    settled plus the hits counted here stays within the limit. A daemon thread settles the
    hits of clients that went quiet here, so other workers learn of them within an interval.
    Storage errors propagate with the hits kept, so the caller can fall back and the next
    settlement sends them.
    """

    def __init__(self, limiter: FixedWindowRateLimiter, sync_interval_s: float):
        """``limiter`` is the shared fixed-window limiter; ``sync_interval_s`` bounds how
        long hits stay local."""
        self.limiter = limiter
        self.sync_interval_s = sync_interval_s
        self._windows: dict[str, _Window] = {}
        self._keys: dict[tuple[int, str], tuple[RateLimitItem, str]] = {}  # storage keys
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None

    def hit(self, item: RateLimitItem, group: str) -> bool:
        """Count one hit of ``group`` against ``item``; whether it is within the limit."""
        if self.sync_interval_s <= 0:
            return self.limiter.hit(item, NAMESPACE, group)
        key = self._key(item, group)
        now = time.monotonic()
        with self._lock:
            window = self._current_window(key, item, group, now)
            window.pending += 1
            if now - window.synced < self.sync_interval_s:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name="ratelimit-flush", daemon=True
                    )
                    self._flusher.start()
                return window.base + window.pending <= item.amount
        return self._settle(window, now)

    def _current_window(self, key: str, item: RateLimitItem, group: str, now: float):
        """The window of ``key`` now (a new one when there is none or it ended); call with
        the lock held."""
        window = self._windows.get(key)
        if window is None or now >= window.expires:
            window = self._new_window(key, item, group, now)
        return window

    def _key(self, item: RateLimitItem, group: str) -> str:
        """The storage key of ``group``'s window of ``item`` (remembered)."""
        cached = self._keys.get((id(item), group))
        if cached is None:  # the item is kept with its key, so its id is not reused
            if len(self._keys) >= _MAX_WINDOWS:
                self._keys.clear()
            cached = self._keys[id(item), group] = (item, item.key_for(NAMESPACE, group))
        return cached[1]

    def hit_local(self, item: RateLimitItem, group: str, count: bool = True) -> tuple[bool, float]:
        """While the storage is unavailable: count a hit of ``group`` here only (``count``;
        False for a hit a failed settlement already kept). Whether the global count as last
        settled plus the hits counted here stays within the limit, and the seconds until
        the window ends. The hits are sent with the next settlement."""
        key = self._key(item, group)
        now = time.monotonic()
        with self._lock:
            window = self._current_window(key, item, group, now)
            if count:
                window.pending += 1
            return window.base + window.pending <= item.amount, window.expires - now

    def _settle(self, window: _Window, now: float) -> bool:
        """Send the window's hits counted here to the shared storage; whether the global
        count is within the limit."""
        item, group = window.item, window.group
        with self._lock:
            flush, window.pending, window.synced = window.pending, 0, now
        if not flush:
            return True
        try:
            allowed = self.limiter.hit(item, NAMESPACE, group, cost=flush)
            stats = self.limiter.get_window_stats(item, NAMESPACE, group) if allowed else None
        except Exception:
            with self._lock:  # keep the hits; the next settlement sends them
                window.pending += flush
                window.synced = -float("inf")
            raise
        with self._lock:
            if stats is None:  # over the limit: refuse here until the next settlement
                window.base = item.amount
            else:
                window.base = item.amount - stats.remaining
                window.expires = now + max(0.0, stats.reset_time - time.time())
        return allowed

    def _flush_loop(self) -> None:
        """Settle the hits of clients not seen here for an interval (until the process ends)."""
        while True:
            time.sleep(self.sync_interval_s)
            now = time.monotonic()
            with self._lock:
                stale = [
                    w
                    for w in self._windows.values()
                    if w.pending and now - w.synced >= self.sync_interval_s and now < w.expires
                ]
            for window in stale:
                try:
                    self._settle(window, now)
                except Exception:  # noqa: BLE001 - Redis down: the request path falls back
                    break

    def _new_window(self, key: str, item: RateLimitItem, group: str, now: float) -> _Window:
        """A fresh window for ``key`` (the lock is held); bounds how many are remembered."""
        if len(self._windows) >= _SWEEP_ABOVE:
            for stale in [k for k, w in self._windows.items() if now >= w.expires]:
                del self._windows[stale]
            if len(self._windows) >= _MAX_WINDOWS:
                self._windows.clear()
        window = _Window(item, group, 0, 0, now + item.get_expiry(), -float("inf"))
        self._windows[key] = window
        return window


class RateLimits:
    """Per-client fixed-window limits, checked in one ``before_request`` hook.

    Built on ``limits`` (the library under Flask-Limiter) directly: Flask-Limiter's
    per-request limit resolution (route, blueprint and default limits, exemption scopes,
    context bookkeeping) cost about 110 us of a 260 us cached request here, and the API has
    one limit for every route but health checks.
    """

    def __init__(self, settings: Settings, metrics: Metrics):
        """Parse the limit (``BOOKREC_RATE_LIMIT``, e.g. ``600 per minute``) and connect lazily."""
        from limits import parse
        from limits.errors import ConfigurationError
        from limits.storage import MemoryStorage, RedisStorage

        try:
            self.item = parse(settings.rate_limit)
        except (ValueError, ConfigurationError) as exc:
            raise ValueError(
                f"BOOKREC_RATE_LIMIT: cannot parse {settings.rate_limit!r} ({exc})"
            ) from exc
        self.metrics = metrics
        self.memory = FixedWindowRateLimiter(MemoryStorage())
        self.shared: SharedCounts | None = None
        if settings.redis_url:
            timeout = settings.redis_socket_timeout_s
            storage = RedisStorage(
                settings.redis_url,
                key_prefix="bookrec:limits",
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self.shared = SharedCounts(
                FixedWindowRateLimiter(storage), settings.rate_limit_sync_s
            )
        self.breaker = Breaker(cooldown_s=1.0)
        self._key_items: dict[int, RateLimitItem] = {}  # an API key's rate -> its limit

    def key_limit(self, key: KeyRecord) -> tuple[str, Any]:
        """The (client, limit) of an API key: its own per-minute rate, apart from addresses."""
        from limits import RateLimitItemPerMinute

        item = self._key_items.get(key.rate_per_minute)
        if item is None:
            item = self._key_items[key.rate_per_minute] = RateLimitItemPerMinute(
                key.rate_per_minute
            )
        return f"key:{key.id}", item

    def hit(self, client: str, item: RateLimitItem | None = None) -> tuple[bool, int]:
        """Count one request of ``client`` against ``item`` (default: the per-client limit):
        (allowed, seconds until its window resets)."""
        item = item or self.item
        group = client_group(client)
        shared = self.shared
        limiter = self.memory
        if shared is None:
            allowed = self.memory.hit(item, NAMESPACE, group)
        elif not self.breaker.open:
            try:
                allowed = shared.hit(item, group)
                limiter = shared.limiter
            except Exception:  # noqa: BLE001 - any storage error: count here for a while
                self.breaker.trip()
                self.metrics.fallbacks.labels(reason="redis_down").inc()
                # a failed settlement kept this hit; the per-request path (interval 0) did not
                allowed, reset_in = shared.hit_local(item, group, shared.sync_interval_s <= 0)
                return (True, 0) if allowed else (False, max(1, int(reset_in + 0.999)))
        else:
            allowed, reset_in = shared.hit_local(item, group)
            return (True, 0) if allowed else (False, max(1, int(reset_in + 0.999)))
        if allowed:
            return True, 0
        try:
            reset = limiter.get_window_stats(item, NAMESPACE, group).reset_time
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
        verdict = req.environ.get(RATE_VERDICT)  # counted by serving/fastpath.py already
        key = None if verdict is not None else resolve_key(keys, req)
        if key is not None:
            allowed, retry = limits.hit(*limits.key_limit(key))
            limit = f"{key.rate_per_minute} per minute for API key {key.id}"
        else:
            allowed, retry = verdict or limits.hit(req.remote_addr or "unknown")
            limit = description
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
