"""Per-client rate limits with Flask-Limiter: Redis storage when configured, else memory.

The stock in-memory storage of ``limits`` starts a timer thread to expire keys every
10 ms, which costs a thread start on most requests; ``SweepingMemoryStorage`` expires
keys on read (as the stock one also does) and sweeps stale keys inline once a minute.
Rate-limit headers are off (they cost extra storage reads per request); a 429 carries
``Retry-After`` (``serving/errors.py``).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, request
from limits.storage import MemoryStorage

from bookrec.settings import Settings
from serving.metrics import Metrics

UNLIMITED_ENDPOINTS = ("health.livez", "health.readyz", "health.metrics", "static")
_SWEEP_EVERY_S = 60.0


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


def init_rate_limits(app: Flask, settings: Settings, metrics: Metrics) -> None:
    """Attach Flask-Limiter with ``settings.rate_limit`` per client address."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    options: dict[str, Any] = {}
    if settings.redis_url:
        timeout = settings.redis_socket_timeout_s
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    limiter = Limiter(
        key_func=get_remote_address,
        app=app,
        default_limits=[settings.rate_limit],
        storage_uri=settings.redis_url or "bookrec-memory://",
        storage_options=options,
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="bookrec",
        on_breach=lambda _limit: metrics.rate_limited.inc(),
    )
    limiter.request_filter(lambda: request.endpoint in UNLIMITED_ENDPOINTS)
