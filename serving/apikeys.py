"""API keys on requests: find the key a request carries, and refuse writes without one.

``resolve_key`` runs in the rate-limit hook (a request with a valid key is limited by that
key's own rate): it reads ``Authorization: Bearer <key>``, looks the key up in PostgreSQL
and remembers the answer, valid or not, for ``BOOKREC_API_KEY_CACHE_TTL_S`` (5 s): a revoked
key stops working on every worker within that time, and a flood of one wrong key costs one
indexed query per worker per 5 s. Admin routes carry the admin token instead and are skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from flask import Request, g
from sqlalchemy.engine import Engine

from bookrec.apikeys import KeyRecord, find_key
from bookrec.db import DatabaseError
from serving.validation import ApiError

MAX_CACHED = 10_000
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bookrec"'}
_REASONS = {
    "missing": "Authorization: this call needs an API key (Authorization: Bearer <key>)",
    "malformed": "Authorization: expected 'Bearer <key>' with a key from `bookrec apikeys create`",
    "unknown": "Authorization: the API key is not valid",
    "revoked": "Authorization: the API key was revoked",
}


class KeyLookupUnavailable(RuntimeError):
    """PostgreSQL could not say whether a key is valid."""


class ApiKeys:
    """Key lookups with a short per-worker memory of the answers."""

    def __init__(self, ttl_s: float, engine: Callable[[], Engine]):
        """``engine`` is a callable returning the serving engine."""
        self.ttl_s = ttl_s
        self._engine = engine
        self._seen: dict[str, tuple[float, KeyRecord | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str) -> KeyRecord | None:
        """The key's record (possibly revoked), or None when unknown or malformed."""
        now = time.monotonic()
        hit = self._seen.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            record = find_key(self._engine(), key)
        except (sa.exc.SQLAlchemyError, DatabaseError) as exc:
            raise KeyLookupUnavailable(str(exc).splitlines()[0]) from exc
        with self._lock:
            if len(self._seen) >= MAX_CACHED:
                self._seen.clear()
            self._seen[key] = (now + self.ttl_s, record)
        return record


def resolve_key(keys: ApiKeys, req: Request) -> KeyRecord | None:
    """The valid key of this request, or None; ``g.api_key_problem`` says why not
    (missing, malformed, unknown, revoked, unavailable)."""
    header = req.environ.get("HTTP_AUTHORIZATION")
    if not header or req.blueprint == "admin":  # the read path: nothing to record
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        g.api_key_problem = "malformed"
        return None
    try:
        record = keys.lookup(token)
    except KeyLookupUnavailable:
        g.api_key_problem = "unavailable"
        return None
    if record is None or record.revoked:
        g.api_key_problem = "revoked" if record is not None else "unknown"
        return None
    g.api_key = record
    g.api_key_problem = None
    return record


def require_api_key() -> KeyRecord:
    """The request's valid key; a write calls this before it stores anything."""
    record = g.get("api_key")
    if record is not None:
        return record
    problem = g.get("api_key_problem") or "missing"
    if problem == "unavailable":
        raise ApiError(
            503,
            "auth_unavailable",
            "PostgreSQL is not answering, so the API key cannot be checked; nothing was stored",
            headers={"Retry-After": "5"},
        )
    raise ApiError(401, "unauthorized", _REASONS[problem], headers=_CHALLENGE)
