"""Bounded logs: api_logs partitioned by day (migration 0006 keeps the rows), partitions
created ahead, retention by dropping whole days, and the housekeeping flow that runs both,
on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from bookrec import db, partitions
from bookrec.settings import Settings, get_settings
from serving.apilog import ApiLogWriter
from serving.metrics import Metrics

TODAY = datetime.now(UTC).date()


@pytest.fixture(autouse=True)
def _today() -> None:
    """Each test's own today: a session that crosses midnight UTC must not see yesterday."""
    global TODAY
    TODAY = datetime.now(UTC).date()


def _at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=hour)


def _insert(conn, logged_at: datetime, request_id: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO api_logs (logged_at, request_id, method, route, path, status, latency_ms)"
            " VALUES (:t, :r, 'GET', '/livez', '/livez', 200, 1.5)"
        ),
        {"t": logged_at, "r": request_id},
    )


def _rows_by_partition(engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT tableoid::regclass::text, request_id FROM api_logs")
        ).all()
    found: dict[str, set[str]] = {}
    for part, rid in rows:
        found.setdefault(part, set()).add(rid)
    return found


@pytest.fixture
def fresh_engine(empty_database_url: str) -> Iterator[sa.engine.Engine]:
    """A database of its own, migrated to head (partition DDL must not touch the session's)."""
    engine = sa.create_engine(empty_database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_migration_0006_partitions_api_logs_and_keeps_every_row(empty_database_url):
    engine = sa.create_engine(empty_database_url)
    try:
        db.upgrade(engine, "0004")
        old_days = [TODAY - timedelta(days=40), TODAY - timedelta(days=2), TODAY]
        with engine.begin() as conn:
            for n, day in enumerate(old_days):
                _insert(conn, _at(day), f"old-{n}")
            before = conn.execute(sa.text("SELECT id, request_id FROM api_logs ORDER BY id")).all()
        db.upgrade(engine)
        with engine.begin() as conn:
            kind = conn.execute(
                sa.text("SELECT relkind FROM pg_class WHERE oid = 'api_logs'::regclass")
            ).scalar()
            assert kind == "p"  # a partitioned table
            after = conn.execute(sa.text("SELECT id, request_id FROM api_logs ORDER BY id")).all()
            assert after == before  # same rows, same ids
            assert partitions.partition_key(conn, "api_logs") == "logged_at"
            days = partitions.day_partitions(conn, "api_logs")
            # One partition per day that had rows, and a week ahead.
            assert set(old_days) | {TODAY + timedelta(days=n) for n in range(8)} == set(days)
            # New ids continue after the copied ones (the identity moved past them).
            _insert(conn, _at(TODAY), "new")
        placed = _rows_by_partition(engine)
        assert placed[partitions.partition_name("api_logs", old_days[0])] == {"old-0"}
        assert placed[partitions.partition_name("api_logs", TODAY)] == {"old-2", "new"}
        with engine.connect() as conn:
            new_id = conn.execute(
                sa.text("SELECT id FROM api_logs WHERE request_id='new'")
            ).scalar()
        assert new_id > max(i for i, _ in before)
        # And back down: one plain table with the same rows.
        db.downgrade(engine, "0004")
        with engine.connect() as conn:
            kind = conn.execute(
                sa.text("SELECT relkind FROM pg_class WHERE oid = 'api_logs'::regclass")
            ).scalar()
            ids = conn.execute(sa.text("SELECT request_id FROM api_logs ORDER BY id")).scalars()
            assert (kind, list(ids)) == ("r", ["old-0", "old-1", "old-2", "new"])
    finally:
        engine.dispose()


def test_an_insert_outside_every_day_partition_lands_in_the_default(fresh_engine):
    far = TODAY + timedelta(days=400)
    with fresh_engine.begin() as conn:
        _insert(conn, _at(far), "far-future")
    assert _rows_by_partition(fresh_engine) == {"api_logs_default": {"far-future"}}


def test_ensure_partitions_creates_ahead_once_and_moves_rows_out_of_the_default(fresh_engine):
    start = TODAY + timedelta(days=100)
    with fresh_engine.begin() as conn:
        _insert(conn, _at(start + timedelta(days=1), 3), "waiting")
        _insert(conn, _at(start + timedelta(days=9)), "later")
    created = partitions.ensure_partitions(fresh_engine, "api_logs", 2, today=start)
    assert created == [
        partitions.partition_name("api_logs", start + timedelta(days=n)) for n in range(3)
    ]
    assert partitions.ensure_partitions(fresh_engine, "api_logs", 2, today=start) == []
    placed = _rows_by_partition(fresh_engine)
    assert placed[partitions.partition_name("api_logs", start + timedelta(days=1))] == {"waiting"}
    assert placed["api_logs_default"] == {"later"}
    # Day bounds are UTC midnights: 23:59:59 belongs to the day, 00:00 to the next.
    with fresh_engine.begin() as conn:
        _insert(conn, _at(start, 0) + timedelta(hours=23, minutes=59, seconds=59), "edge-1")
        _insert(conn, _at(start + timedelta(days=1), 0), "edge-2")
    placed = _rows_by_partition(fresh_engine)
    assert "edge-1" in placed[partitions.partition_name("api_logs", start)]
    assert "edge-2" in placed[partitions.partition_name("api_logs", start + timedelta(days=1))]


def test_retention_drops_whole_old_days_and_old_default_rows(fresh_engine):
    now = _at(TODAY, 6)
    old_day, edge_day = TODAY - timedelta(days=31), TODAY - timedelta(days=30)
    partitions.ensure_partitions(fresh_engine, "api_logs", 0, today=old_day)
    partitions.ensure_partitions(fresh_engine, "api_logs", 0, today=edge_day)
    with fresh_engine.begin() as conn:
        _insert(conn, _at(old_day), "expired")
        _insert(conn, _at(edge_day, 12), "straddles-cutoff")
        _insert(conn, _at(TODAY, 1), "fresh")
        _insert(conn, _at(TODAY - timedelta(days=60)), "expired-in-default")
        _insert(conn, _at(TODAY - timedelta(days=200)), "also-in-default")
    result = partitions.drop_partitions_older_than(fresh_engine, "api_logs", 30, now=now)
    assert result.dropped == (partitions.partition_name("api_logs", old_day),)
    assert result.default_rows_deleted == 2
    remaining = set().union(*_rows_by_partition(fresh_engine).values())
    assert remaining == {"straddles-cutoff", "fresh"}
    # The next day the straddling day is wholly past the cutoff and goes too.
    later = partitions.drop_partitions_older_than(
        fresh_engine, "api_logs", 30, now=now + timedelta(days=1)
    )
    assert later.dropped == (partitions.partition_name("api_logs", edge_day),)


def test_unknown_tables_and_bad_retention_are_refused(fresh_engine):
    with pytest.raises(partitions.PartitionError, match="'ratings' is not a day-partitioned"):
        partitions.ensure_partitions(fresh_engine, "ratings", 1)
    with pytest.raises(ValueError, match="at least 1 day"):
        partitions.drop_partitions_older_than(fresh_engine, "api_logs", 0)
    with pytest.raises(ValueError):
        Settings(log_retention_days=0)


def test_api_log_writer_and_truncate_work_on_the_partitioned_table(clean_db):
    settings = Settings(api_log_batch_size=10)
    writer = ApiLogWriter(settings, Metrics(), lambda: clean_db)
    for n in range(3):
        writer.record(
            {
                "request_id": f"w-{n}",
                "method": "GET",
                "route": "/livez",
                "path": "/livez",
                "status": 200,
                "latency_ms": 0.4,
            }
        )
    assert writer.flush() == 3
    placed = _rows_by_partition(clean_db)
    assert placed == {
        partitions.partition_name("api_logs", datetime.now(UTC).date()): {"w-0", "w-1", "w-2"}
    }


def test_housekeeping_flow_creates_ahead_and_applies_the_retention(
    prefect_harness, fresh_engine, monkeypatch
):
    from flows.housekeeping import housekeeping_flow

    monkeypatch.setenv("BOOKREC_DATABASE_URL", fresh_engine.url.render_as_string(False))
    monkeypatch.setenv("BOOKREC_LOG_RETENTION_DAYS", "5")
    get_settings.cache_clear()
    try:
        expired = TODAY - timedelta(days=7)
        partitions.ensure_partitions(fresh_engine, "api_logs", 0, today=expired)
        with fresh_engine.begin() as conn:
            _insert(conn, _at(expired), "expired")
            _insert(conn, _at(TODAY), "today")
        report = housekeeping_flow(days_ahead=10)
    finally:
        get_settings.cache_clear()
        db.dispose_engines()
    assert set(report) == set(partitions.PARTITIONED_TABLES)
    api = report["api_logs"]
    # The migration made a week ahead; the flow adds the days 8..10.
    assert api["created"] == [
        partitions.partition_name("api_logs", TODAY + timedelta(days=n)) for n in (8, 9, 10)
    ]
    assert api["retention_days"] == 5
    assert list(api["dropped"]) == [partitions.partition_name("api_logs", expired)]
    assert set().union(*_rows_by_partition(fresh_engine).values()) == {"today"}
