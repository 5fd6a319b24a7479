"""The serving tier's PostgreSQL queries: book details, title/author search, ratings.

The engine comes from ``bookrec.db.get_engine`` with a short connect timeout and a
statement timeout, so a database that is down or slow costs a request little; callers
catch ``CatalogUnavailable`` and answer from the model or with a 503.

The breaker (PostgreSQL skipped for a second) opens on connection-level failures only:
a lost or refused connection, or a schema that is missing. A statement that times out,
or any other error of one statement, fails that request alone (``QueryFailed``).

Search: every word of the text must be a word of the title or author, the last one as a
prefix; at most ``SEARCH_CANDIDATES`` matches are ranked (titles starting with the text,
then word-match rank, then shorter titles), so a common word costs a bounded amount of
work. Given the worker's in-memory index (``bookrec.search``, kept by
``serving.search_index``), the index finds and orders the books and PostgreSQL only reads
those rows by primary key; without it (not built yet, or its build failed) the full-text
query runs in PostgreSQL (migration 0011's stored ``search_doc`` vector and its GIN index).
Either way search has its own, shorter statement timeout.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bookrec import columns as C
from bookrec import db, online
from bookrec.search import SearchIndex
from bookrec.settings import Settings
from serving.breaker import Breaker

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 3000
SEARCH_STATEMENT_TIMEOUT_MS = 500
SEARCH_LIMIT = 20
SEARCH_CANDIDATES = 200
_WORD = re.compile(r"[^\W_]+")

_BOOK_COLUMNS = ", ".join(C.BOOK_COLUMNS)
_GET_BOOK = sa.text(f"SELECT {_BOOK_COLUMNS} FROM books WHERE {C.ISBN} = :isbn")
_SEARCH_SELECT = (
    f"SELECT {_BOOK_COLUMNS} FROM ("
    f"SELECT {_BOOK_COLUMNS}, search_doc FROM books "
    "WHERE search_doc @@ to_tsquery('simple', :tsquery) LIMIT :candidates) AS found "
    f"ORDER BY ({C.TITLE} ILIKE :prefix) DESC, "
    "ts_rank(search_doc, to_tsquery('simple', :tsquery)) DESC, "
    f"length({C.TITLE}), {C.TITLE}, {C.ISBN} LIMIT :limit"
)


@functools.lru_cache(maxsize=4)
def _search_statement(timeout_ms: int) -> sa.TextClause:
    """The search with its own statement timeout, set for its transaction in the same round
    trip (psycopg2 sends both statements at once; the result is the SELECT's). Sequential
    scans are off for it: with ``LIMIT`` and no order the planner took a scan of the whole
    table that stops at 200 matches as cheaper (its prefix-match estimate is thousands of
    rows), 385-510 ms for a rare word against 30-40 ms from the index, measured on the
    full catalogue on a loaded machine."""
    return sa.text(
        f"SET LOCAL statement_timeout = {int(timeout_ms)}; SET LOCAL enable_seqscan = off; "
        f"{_SEARCH_SELECT}"
    )


def _rows_sql(timeout_ms: int) -> str:
    """The rows of the ISBNs the index chose, with the search's statement timeout (sent as
    one message in autocommit mode: PostgreSQL runs it as one implicit transaction, in which
    ``SET LOCAL`` holds for the SELECT only)."""
    return (
        f"SET LOCAL statement_timeout = {int(timeout_ms)}; "
        f"SELECT {_BOOK_COLUMNS} FROM books WHERE {C.ISBN} = ANY(%(isbns)s)"
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


class QueryFailed(CatalogUnavailable):
    """One statement failed (a statement timeout, say) on a database that is up."""


def _connection_failure(exc: sa.exc.DBAPIError) -> bool:
    """True for errors that say the database is unreachable, not that one statement failed."""
    from psycopg2 import errors

    if exc.connection_invalidated:
        return True
    if isinstance(exc.orig, errors.QueryCanceled):  # statement_timeout: this query only
        return False
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


def tsquery(text: str) -> str:
    """The ``to_tsquery`` text for a search: every word of ``text`` must match, the last
    as a prefix (``dragon sa`` -> ``'dragon' & 'sa':*``); empty if it has no word."""
    words = _WORD.findall(text.casefold())
    if not words:
        return ""
    quoted = [f"'{w}'" for w in words]
    quoted[-1] += ":*"
    return " & ".join(quoted)


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
        # Search row reads: one autocommit connection per request thread, outside the pool.
        self._local = threading.local()
        self._thread_conns: list[Any] = []
        self._inherited: list[Any] = []

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
        # Closing (or even freeing) the parent's connections here would end its sessions.
        self._inherited.extend(self._thread_conns)
        self._thread_conns = []
        self._local = threading.local()

    def close(self) -> None:
        """Close the search threads' connections."""
        with self._lock:
            conns, self._thread_conns = self._thread_conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def _thread_connection(self) -> tuple[Any, bool]:
        """This thread's autocommit connection (opened on first use), and whether it is one
        that served before (it may have been closed by the server while idle)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn, True
        engine = self.engine()
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        import psycopg2

        conn = psycopg2.connect(*cargs, **cparams)
        conn.autocommit = True
        self._local.conn = conn
        with self._lock:
            self._thread_conns.append(conn)
        return conn, False

    def _forget_thread_connection(self, conn: Any) -> None:
        self._local.conn = None
        with self._lock, contextlib.suppress(ValueError):
            self._thread_conns.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def _search_rows(self, isbns: list[str]) -> list[dict[str, Any]]:
        """The rows of ``isbns`` on this thread's connection: one round trip, no pool
        checkout, ping or rollback (measured here: 0.3 ms of client and server CPU against
        0.6 ms through the pool). Failures map as in ``_transaction``: a statement timeout
        or another statement error fails this request (``QueryFailed``); a connection that
        cannot be made or is lost trips the breaker, except that a connection which had
        served before and is found dead is replaced once, as the pool's ping would."""
        import psycopg2
        from psycopg2 import errors

        if self.breaker.open:
            raise CatalogUnavailable("PostgreSQL is unavailable (recent failure)")
        sql = _rows_sql(SEARCH_STATEMENT_TIMEOUT_MS)
        for attempt in (1, 2):
            conn = None
            try:
                conn, reused = self._thread_connection()
                with conn.cursor() as cur:
                    cur.execute(sql, {"isbns": isbns})
                    names = [d.name for d in cur.description]
                    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            except errors.QueryCanceled as exc:  # statement_timeout: this query only
                raise QueryFailed(str(exc).splitlines()[0]) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if conn is not None:
                    self._forget_thread_connection(conn)
                if attempt == 1 and conn is not None and reused:
                    continue  # a connection that died while idle: once more on a new one
                self.breaker.trip()
                raise CatalogUnavailable(str(exc).splitlines()[0]) from exc
            except psycopg2.ProgrammingError as exc:
                self.breaker.trip()
                first = str(exc).splitlines()[0]
                raise CatalogUnavailable(
                    f"{first} (is the schema applied? `bookrec db upgrade`)"
                ) from exc
            except psycopg2.Error as exc:
                raise QueryFailed(str(exc).splitlines()[0]) from exc
        raise AssertionError("unreachable")

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
        except sa.exc.DBAPIError as exc:
            first = str(exc).splitlines()[0]
            if not _connection_failure(exc):
                raise QueryFailed(first) from exc
            self.breaker.trip()
            raise CatalogUnavailable(first) from exc
        except (db.DatabaseError, sa.exc.TimeoutError) as exc:  # no server, or no pooled slot
            self.breaker.trip()
            raise CatalogUnavailable(str(exc).splitlines()[0]) from exc

    def book(self, isbn: str) -> dict[str, Any] | None:
        """The catalogue row for ``isbn``, or None."""
        rows = self._run(_GET_BOOK, {"isbn": isbn})
        return dict(rows[0]) if rows else None

    def search(
        self, text: str, limit: int = SEARCH_LIMIT, index: SearchIndex | None = None
    ) -> list[dict[str, Any]]:
        """Books whose title and author hold every word of ``text`` (the last as a prefix):
        found by ``index`` when given, else by the full-text query."""
        if index is not None:
            isbns = index.search(text, limit, SEARCH_CANDIDATES)
            if not isbns:
                return []
            rows = self._search_rows(isbns)
            by_isbn = {r[C.ISBN]: r for r in rows}
            # A book deleted since the index was built is left out.
            return [dict(by_isbn[i]) for i in isbns if i in by_isbn]
        query = tsquery(text)
        if not query:
            return []
        params = {
            "tsquery": query,
            "prefix": f"{_escape_like(text)}%",
            "candidates": SEARCH_CANDIDATES,
            "limit": limit,
        }
        rows = self._run(_search_statement(SEARCH_STATEMENT_TIMEOUT_MS), params)
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
