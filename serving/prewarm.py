"""Cache pre-warming before a reload swaps models.

A new model version changes every cache key, so right after a swap each hot entry is a
miss, and the requests of that moment compute them all at once (with 2 workers, each
swapping half of the capacity, the reload benchmark's p99 doubled). Before the swap the
loader thread recomputes, for the new model, the entries most recently used under the old
version (the in-process LRU holds them), hottest first, one at a time with a short pause
between them so that request threads keep their turns and for at most
``PREWARM_BUDGET_S``, and stores them locally and in Redis. A worker
that swaps later finds them in Redis. Book details come from PostgreSQL, not the model:
their bodies are carried over under the new key as they are.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from serving import bodies
from serving.cache import Cache
from serving.services import Services

log = logging.getLogger(__name__)

PREWARM_MAX_ENTRIES = 500
PREWARM_BUDGET_S = 2.0  # the swap is not held back longer than this (hottest entries first)
PREWARM_PAUSE_S = 0.001  # between entries: the loader yields the GIL to requests


def prewarm(svc: Services, model: Any, previous: str) -> int:
    """Fill the cache for ``model`` with what was recently used under ``previous``; the
    number of entries stored."""
    cache = svc.cache
    old_prefix = Cache.key(previous, "")
    stored = 0
    deadline = time.monotonic() + PREWARM_BUDGET_S
    for key in cache.memory.recent_keys(old_prefix, PREWARM_MAX_ENTRIES):
        if time.monotonic() > deadline:
            break
        kind, *parts = key[len(old_prefix) :].split(":")
        new_key = Cache.key(model.version, kind, *parts)
        if cache.get(new_key) is not None:  # another worker stored it (now in memory too)
            continue
        try:
            value = _body(svc, model, key, kind, parts)
        except (KeyError, ValueError, IndexError):  # not the model's, or a key of another shape
            continue
        if value is not None:
            cache.set(new_key, value)
            stored += 1
        time.sleep(PREWARM_PAUSE_S)
    return stored


def _body(svc: Services, model: Any, old_key: str, kind: str, parts: list[str]) -> bytes | None:
    if kind == "popular":
        return bodies.popular(model, int(parts[0]))
    if kind == "similar":
        body, cacheable = bodies.similar_body(model, parts[0], int(parts[1]), svc.catalog)
        return body if cacheable else None
    if kind == "user":
        body, cacheable, _ = bodies.user(svc, model, int(parts[0]), int(parts[1]), count=False)
        return body if cacheable else None
    if kind == "book":
        return svc.cache.memory.get(old_key)
    return None
