"""API keys for writes: create, list, revoke, and look one up by the key a client sent.

A key is ``bk_<prefix>_<secret>``: 8 public hex characters that find the row, then 43
URL-safe characters (256 random bits). Only the SHA-256 of the whole key is stored: the key
has full entropy, so a slow password hash would add nothing but latency, and the digests
are compared in constant time. The key is shown once, when it is created.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.engine import Engine

KEY_SHAPE = re.compile(r"^bk_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
DEFAULT_RATE_PER_MINUTE = 60
MAX_RATE_PER_MINUTE = 1_000_000

_INSERT = (
    "INSERT INTO api_keys (name, prefix, key_sha256, rate_per_minute, user_ids) "
    "VALUES (:name, :prefix, :digest, :rate, :user_ids) "
    "ON CONFLICT (prefix) DO NOTHING RETURNING id, created_at"
)
_LIST = (
    "SELECT id, name, prefix, rate_per_minute, user_ids, created_at, revoked_at "
    "FROM api_keys ORDER BY id"
)
_REVOKE = (
    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = :id "
    "RETURNING revoked_at"
)
_BY_PREFIX = (
    "SELECT id, name, key_sha256, rate_per_minute, user_ids, revoked_at IS NOT NULL AS revoked "
    "FROM api_keys WHERE prefix = :prefix"
)


@functools.cache
def _sql(statement: str):
    """``statement`` as SQLAlchemy text. SQLAlchemy is imported here, not with the module:
    every ``bookrec`` command registers the ``apikeys`` verbs (and reads the defaults
    above), and importing SQLAlchemy costs ~0.2 s of each command's start."""
    import sqlalchemy as sa

    return sa.text(statement)


class ApiKeyError(ValueError):
    """A refused key operation (bad name or rate, unknown id)."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: int
    name: str
    prefix: str
    rate_per_minute: int
    user_ids: list[int] | None
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields (timestamps as ISO 8601)."""
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["revoked_at"] = self.revoked_at.isoformat() if self.revoked_at else None
        return out


@dataclass(frozen=True)
class KeyRecord:
    """What the API needs of a presented key: who it is, its rate, whether it may write."""

    id: int
    name: str
    rate_per_minute: int
    user_ids: frozenset[int] | None
    revoked: bool

    def may_write_for(self, user_id: int) -> bool:
        """True when the key is not bound to readers, or bound to this one."""
        return self.user_ids is None or user_id in self.user_ids


def digest(key: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    engine: Engine,
    name: str,
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE,
    user_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Store a new key and return ``{"id", "name", "key", "rate_per_minute", "user_ids"}``
    (the only time the key itself is available)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ApiKeyError("name: must be 1 to 200 characters")
    if not 1 <= rate_per_minute <= MAX_RATE_PER_MINUTE:
        raise ApiKeyError(f"rate_per_minute: must be between 1 and {MAX_RATE_PER_MINUTE}")
    if user_ids is not None:
        bad = [u for u in user_ids if not 1 <= u <= 2**31 - 1]
        if bad or not user_ids:
            raise ApiKeyError(f"user_ids: must be positive 32-bit reader ids (got {bad or []})")
        user_ids = sorted(set(user_ids))
    for _ in range(10):  # a prefix collision (1 in 4 billion per existing key): draw again
        prefix = secrets.token_hex(4)
        key = f"bk_{prefix}_{secrets.token_urlsafe(32)}"
        params = {
            "name": name,
            "prefix": prefix,
            "digest": digest(key),
            "rate": rate_per_minute,
            "user_ids": user_ids,
        }
        with engine.begin() as conn:
            row = conn.execute(_sql(_INSERT), params).first()
        if row is not None:
            return {
                "id": int(row.id),
                "name": name,
                "key": key,
                "rate_per_minute": rate_per_minute,
                "user_ids": user_ids,
            }
    raise ApiKeyError("could not draw an unused key prefix")  # pragma: no cover


def list_keys(engine: Engine) -> list[ApiKey]:
    """Every key, oldest first, without secrets."""
    with engine.connect() as conn:
        return [
            ApiKey(
                id=int(r.id),
                name=r.name,
                prefix=r.prefix,
                rate_per_minute=int(r.rate_per_minute),
                user_ids=list(r.user_ids) if r.user_ids is not None else None,
                created_at=r.created_at,
                revoked_at=r.revoked_at,
            )
            for r in conn.execute(_sql(_LIST))
        ]


def revoke_key(engine: Engine, key_id: int) -> datetime:
    """Revoke a key (idempotent); returns when it was revoked. Unknown id: ``ApiKeyError``."""
    with engine.begin() as conn:
        row = conn.execute(_sql(_REVOKE), {"id": key_id}).first()
    if row is None:
        raise ApiKeyError(f"id: no API key {key_id}")
    return row.revoked_at


def find_key(engine: Engine, key: str) -> KeyRecord | None:
    """The record of a presented key, or None when it is malformed or unknown (revoked keys
    are returned, marked). Raises SQLAlchemy errors when the database cannot answer."""
    match = KEY_SHAPE.match(key)
    if match is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(_sql(_BY_PREFIX), {"prefix": match.group(1)}).first()
    if row is None or not hmac.compare_digest(row.key_sha256, digest(key)):
        return None
    return KeyRecord(
        id=int(row.id),
        name=row.name,
        rate_per_minute=int(row.rate_per_minute),
        user_ids=frozenset(row.user_ids) if row.user_ids is not None else None,
        revoked=bool(row.revoked),
    )
