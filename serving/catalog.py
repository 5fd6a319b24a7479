"""The serving tier's PostgreSQL queries: book details, title/author search, ratings.

The engine comes from ``bookrec.db.get_engine`` with a short connect timeout and a
statement timeout, so a database that is down or slow costs a request little; callers
catch ``CatalogUnavailable`` and answer from the model or with a 503.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bookrec import columns as C
from bookrec import db, online
from bookrec.settings import Settings
from serving.cache import Breaker

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 3000
SEARCH_LIMIT = 20

_BOOK_COLUMNS = ", ".join(C.BOOK_COLUMNS)
_GET_BOOK = sa.text(f"SELECT {_BOOK_COLUMNS} FROM books WHERE {C.ISBN} = :isbn")
# Prefix matches first, then shorter titles; ILIKE is served by trigram indexes when the
# schema has them (pg_trgm), and stays a bounded scan otherwise.
_SEARCH = sa.text(
    f"SELECT {_BOOK_COLUMNS} FROM books "
    f"WHERE {C.TITLE} ILIKE :pattern OR {C.AUTHOR} ILIKE :pattern "
    f"ORDER BY ({C.TITLE} ILIKE :prefix) DESC, length({C.TITLE}), {C.TITLE}, {C.ISBN} "
    "LIMIT :limit"
)
_UPSERT_RATING = sa.text(
    "INSERT INTO ratings (user_id, isbn, rating, source, updated_at) "
    "VALUES (:user_id, :isbn, :rating, 'api', now()) "
    "ON CONFLICT (user_id, isbn) DO UPDATE "
    "SET rating = EXCLUDED.rating, source = 'api', updated_at = now()"
)
# Both read the primary key (user_id, isbn): one index range per reader.
_USER_RATINGS = sa.text("SELECT isbn, rating FROM ratings WHERE user_id = :user_id")
_USER_STAMP = sa.text(
    "SELECT count(*), coalesce(max(updated_at), 'epoch') FROM ratings WHERE user_id = :user_id"
)


class CatalogUnavailable(RuntimeError):
    """PostgreSQL could not answer (down, unreachable or too slow)."""


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Catalog:
    """Book and rating queries against PostgreSQL, created lazily on first use."""

    def __init__(self, settings: Settings):
        """Remember the settings; no connection is made until a query runs."""
        self.settings = settings
        self.breaker = Breaker(cooldown_s=1.0)
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The pooled engine with serving timeouts (the URL comes from the settings)."""
        with self._lock:
            if self._engine is None:
                url = sa.engine.make_url(db.database_url(self.settings)).update_query_dict(
                    {
                        "connect_timeout": str(CONNECT_TIMEOUT_S),
                        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                    }
                )
                self._engine = db.get_engine(
                    self.settings, url=url.render_as_string(hide_password=False)
                )
            return self._engine

    def after_fork(self) -> None:
        """Forget pooled connections inherited from the parent process (never close them)."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    def _run(self, statement: sa.TextClause, params: dict[str, Any]):
        return self._transaction(
            lambda conn: conn.execute(statement, params).mappings().all(), write=False
        )

    def _transaction(self, work: Callable[[Connection], Any], *, write: bool = True) -> Any:
        """``work(conn)`` in one transaction (or a plain connection when not ``write``), with
        database failures turned into ``CatalogUnavailable``."""
        if self.breaker.open:
            raise CatalogUnavailable("PostgreSQL is unavailable (recent failure)")
        try:
            if write:
                with self.engine().begin() as conn:
                    return work(conn)
            with self.engine().connect() as conn:
                return work(conn)
        except sa.exc.ProgrammingError as exc:
            # e.g. a database that answers but was never migrated: degrade, and say how to fix
            self.breaker.trip()
            first = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
            raise CatalogUnavailable(
                f"{first} (is the schema applied? `bookrec db upgrade`)"
            ) from exc
        except (sa.exc.DBAPIError, db.DatabaseError) as exc:
            self.breaker.trip()
            raise CatalogUnavailable(str(exc).splitlines()[0]) from exc

    def book(self, isbn: str) -> dict[str, Any] | None:
        """The catalogue row for ``isbn``, or None."""
        rows = self._run(_GET_BOOK, {"isbn": isbn})
        return dict(rows[0]) if rows else None

    def search(self, text: str, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
        """Books whose title or author contains ``text`` (case-insensitive)."""
        if not text:
            return []
        escaped = _escape_like(text)
        rows = self._run(
            _SEARCH, {"pattern": f"%{escaped}%", "prefix": f"{escaped}%", "limit": limit}
        )
        return [dict(r) for r in rows]

    def record_rating(
        self,
        user_id: int,
        isbn: str,
        rating: int,
        *,
        api_key_id: int | None = None,
        request_id: str | None = None,
    ) -> online.Attribution:
        """Insert or update a rating with ``source='api'`` (the next training run reads it)
        and, in the same transaction, its rating event, attributed to a shown list if one
        matches (``bookrec.online``)."""
        window_s = self.settings.attribution_window_days * 86400.0

        def write(conn: Connection) -> online.Attribution:
            conn.execute(_UPSERT_RATING, {"user_id": user_id, "isbn": isbn, "rating": rating})
            return online.record_rating_event(
                conn,
                user_id=user_id,
                isbn=isbn,
                rating=rating,
                api_key_id=api_key_id,
                request_id=request_id,
                window_s=window_s,
            )

        return self._transaction(write)

    def user_ratings(self, user_id: int) -> dict[str, int]:
        """The reader's ratings as they are now (ISBN -> 0..10): what fold-in scores."""
        return {r["isbn"]: int(r["rating"]) for r in self._run(_USER_RATINGS, {"user_id": user_id})}

    def ratings_stamp(self, user_id: int) -> str:
        """A token that changes whenever the reader's ratings change (count and newest
        ``updated_at``): the freshness check of cached lists when there is no Redis."""
        row = self._run(_USER_STAMP, {"user_id": user_id})[0]
        count, newest = row.values()
        return f"{count}-{newest.timestamp():.6f}"
