"""The API's least-privilege PostgreSQL role, on a real server: what it may and may not do,
that the serving code's own writes work under it, and that re-running is harmless."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bookrec import dbroles
from bookrec.settings import Settings
from cli.main import main
from serving.apilog import ApiLogWriter
from serving.metrics import Metrics

PASSWORD = "a-long-enough-test-password"


@pytest.fixture
def api_role(engine: sa.engine.Engine, clean_db) -> Iterator[str]:
    """A role of this test's own (roles are cluster-wide), dropped afterwards."""
    role = f"bookrec_api_{uuid.uuid4().hex[:8]}"
    yield role
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))


def _as(database_url: str, role: str) -> sa.engine.Engine:
    url = sa.engine.make_url(database_url).set(username=role, password=PASSWORD)
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _refused(api: sa.engine.Engine, sql: str) -> bool:
    try:
        with api.begin() as conn:
            conn.execute(sa.text(sql))
    except sa.exc.ProgrammingError as exc:
        assert "permission denied" in str(exc) or "must be owner" in str(exc), exc
        return True
    return False


def test_the_api_role_can_do_its_job_and_nothing_else(engine, database_url, api_role):
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO books (isbn, title) VALUES ('0000000001', 'A')"))
    granted = dbroles.ensure_api_role(engine, api_role, PASSWORD)
    assert granted["books"] == ["SELECT"] and granted["api_logs"] == ["INSERT"]
    api = _as(database_url, api_role)
    try:
        with api.begin() as conn:
            assert conn.execute(sa.text("SELECT title FROM books")).scalar() == "A"
            # The ratings route's upsert (INSERT ... ON CONFLICT DO UPDATE), twice.
            for rating in (7, 9):
                conn.execute(
                    sa.text(
                        "INSERT INTO ratings (user_id, isbn, rating, source) "
                        "VALUES (1, '0000000001', :r, 'api') ON CONFLICT (user_id, isbn) "
                        "DO UPDATE SET rating = EXCLUDED.rating"
                    ),
                    {"r": rating},
                )
            assert conn.execute(sa.text("SELECT rating FROM ratings")).scalar() == 9
        # The API-log writer's own insert into the partitioned table (identity included).
        writer = ApiLogWriter(Settings(), Metrics(), lambda: api)
        writer.record(
            {
                "request_id": "r1",
                "method": "GET",
                "route": "/livez",
                "path": "/livez",
                "status": 200,
                "latency_ms": 1.0,
            }
        )
        assert writer.flush() == 1
        for sql in (
            "SELECT * FROM api_logs",  # logs are written, not read, by the API
            "DELETE FROM ratings",
            "TRUNCATE ratings",
            "UPDATE books SET title = 'B'",
            "INSERT INTO books (isbn, title) VALUES ('0000000002', 'B')",
            "SELECT * FROM users",
            "SELECT * FROM promotions",
            "SELECT * FROM quarantine",
            "DROP TABLE books",
            "CREATE TABLE sneaky (x int)",
            "ALTER TABLE ratings ADD COLUMN x int",
        ):
            assert _refused(api, sql), sql
    finally:
        api.dispose()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM api_logs")).scalar() == 1


def test_rerunning_updates_the_password_and_drops_stray_privileges(engine, database_url, api_role):
    dbroles.ensure_api_role(engine, api_role, "first-password-long-enough")
    with engine.begin() as conn:
        conn.execute(sa.text(f'GRANT DELETE ON ratings, users TO "{api_role}"'))
    dbroles.ensure_api_role(engine, api_role, PASSWORD)
    api = _as(database_url, api_role)
    try:
        assert _refused(api, "DELETE FROM ratings")
        assert _refused(api, "DELETE FROM users")
    finally:
        api.dispose()
    with engine.connect() as conn:
        ok = conn.execute(
            sa.text("SELECT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = :r"),
            {"r": api_role},
        ).scalar()
    assert ok


def test_bad_names_and_short_passwords_are_refused(engine):
    with pytest.raises(dbroles.RoleError, match="role name"):
        dbroles.ensure_api_role(engine, 'x"; DROP TABLE books; --', PASSWORD)
    with pytest.raises(dbroles.RoleError, match="at least 16"):
        dbroles.ensure_api_role(engine, "bookrec_api_x", "short")


def test_cli_creates_the_role_from_the_environment(database_url, api_role, monkeypatch, capsys):
    from bookrec.settings import get_settings

    monkeypatch.setenv("BOOKREC_DATABASE_URL", database_url)
    monkeypatch.setenv("BOOKREC_API_DB_ROLE", api_role)
    monkeypatch.delenv("BOOKREC_API_DB_PASSWORD", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["db", "api-role"]) == 1
        assert "BOOKREC_API_DB_PASSWORD is not set" in capsys.readouterr().err
        monkeypatch.setenv("BOOKREC_API_DB_PASSWORD", PASSWORD)
        get_settings.cache_clear()
        assert main(["db", "api-role"]) == 0
        assert f"{api_role}: SELECT, INSERT, UPDATE on ratings" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
