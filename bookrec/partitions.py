"""Daily partitions of the tables that grow with traffic, and their retention.

Each table in ``PARTITIONED_TABLES`` is range-partitioned by day (UTC) on a timestamptz
column, with one partition per day named ``<table>_pYYYYMMDD`` and a ``<table>_default``
partition that catches any row no day partition covers, so an insert never fails even
when housekeeping has not run. Retention drops whole day partitions (cheap, no vacuum
debt) and deletes expired rows from the default partition. The ``housekeeping`` flow runs
both for every table of the tuple once a day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# The tables partitioned by day and retained for BOOKREC_LOG_RETENTION_DAYS.
PARTITIONED_TABLES: tuple[str, ...] = ("api_logs", "impressions", "rating_events")

# One housekeeping at a time per database (two workers, or a manual run beside the schedule).
_LOCK_KEY = 72210006
_DAY_SUFFIX = re.compile(r"_p(\d{8})$")


class PartitionError(RuntimeError):
    """A table is not one of the day-partitioned tables, or its partitions are not as expected."""


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass removed from one table."""

    table: str
    dropped: tuple[str, ...]
    default_rows_deleted: int


def partition_name(table: str, day: date) -> str:
    """The partition of ``table`` that holds the rows of ``day`` (UTC)."""
    return f"{table}_p{day:%Y%m%d}"


def default_partition_name(table: str) -> str:
    """The partition that holds rows no day partition covers."""
    return f"{table}_default"


def _today() -> date:
    return datetime.now(UTC).date()


def _check(table: str) -> str:
    if table not in PARTITIONED_TABLES:
        raise PartitionError(f"{table!r} is not a day-partitioned table {PARTITIONED_TABLES}")
    return table


def _bound(day: date) -> str:
    return f"{day.isoformat()} 00:00:00+00"


def partition_key(conn: Connection, table: str) -> str:
    """The partition key column of ``table`` (a single column, by range)."""
    key = conn.execute(
        sa.text(
            "SELECT a.attname FROM pg_partitioned_table p "
            "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
            "WHERE p.partrelid = to_regclass(:t) AND p.partstrat = 'r' AND p.partnatts = 1"
        ),
        {"t": table},
    ).scalar()
    if key is None:
        raise PartitionError(f"{table} is not range-partitioned on one column")
    return key


def day_partitions(conn: Connection, table: str) -> dict[date, str]:
    """The existing day partitions of ``table``, by day."""
    names = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    ).scalars()
    found: dict[date, str] = {}
    for name in names:
        match = _DAY_SUFFIX.search(name)
        if match and name == partition_name(table, datetime.strptime(match[1], "%Y%m%d").date()):
            found[datetime.strptime(match[1], "%Y%m%d").date()] = name
    return found


def create_day_partition(conn: Connection, table: str, day: date) -> bool:
    """Create the partition of ``day`` unless it exists; True if it was created.

    Rows of that day already in the default partition (written before the partition
    existed) are moved into it, since PostgreSQL refuses to create a partition whose
    range the default partition holds rows for.
    """
    name = partition_name(table, day)
    if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return False
    key = partition_key(conn, table)
    default = default_partition_name(table)
    lo, hi = _bound(day), _bound(day + timedelta(days=1))
    has_default = conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": default}).scalar()
    moved = f"_bookrec_moved_{name}"
    if has_default:
        conn.execute(
            sa.text(
                f'CREATE TEMP TABLE "{moved}" ON COMMIT DROP AS WITH d AS ('
                f'DELETE FROM "{default}" WHERE "{key}" >= :lo AND "{key}" < :hi RETURNING *) '
                "SELECT * FROM d"
            ),
            {"lo": lo, "hi": hi},
        )
    conn.execute(
        sa.text(
            f"CREATE TABLE \"{name}\" PARTITION OF \"{table}\" FOR VALUES FROM ('{lo}') TO ('{hi}')"
        )
    )
    if has_default:
        conn.execute(
            sa.text(f'INSERT INTO "{table}" OVERRIDING SYSTEM VALUE SELECT * FROM "{moved}"')
        )
        conn.execute(sa.text(f'DROP TABLE "{moved}"'))
    return True


def _lock(conn: Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    # DDL on a partitioned table waits for a lock on the parent: give up rather than queue
    # the API's log inserts behind a long-running query for long.
    conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))


def ensure_partitions(
    engine: Engine, table: str, days_ahead: int = 7, *, today: date | None = None
) -> list[str]:
    """Create the partitions of today and the next ``days_ahead`` days (UTC) and the
    default partition where missing; returns the names created."""
    _check(table)
    if days_ahead < 0:
        raise ValueError(f"days_ahead must be >= 0, not {days_ahead}")
    today = today or _today()
    created: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        default = default_partition_name(table)
        if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": default}).scalar() is None:
            conn.execute(sa.text(f'CREATE TABLE "{default}" PARTITION OF "{table}" DEFAULT'))
            created.append(default)
        for offset in range(days_ahead + 1):
            day = today + timedelta(days=offset)
            if create_day_partition(conn, table, day):
                created.append(partition_name(table, day))
    return created


def drop_partitions_older_than(
    engine: Engine, table: str, days: int, *, now: datetime | None = None
) -> RetentionResult:
    """Drop the day partitions whose whole day is more than ``days`` days old and delete
    such rows from the default partition.

    Retention is by whole days: rows are kept at least ``days`` days and at most one day
    longer (the partition straddling the cutoff stays until its day has passed it).
    """
    _check(table)
    if days < 1:
        raise ValueError(f"retention must be at least 1 day, not {days}")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    dropped: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        key = partition_key(conn, table)
        for day, name in sorted(day_partitions(conn, table).items()):
            end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
            if end <= cutoff:
                conn.execute(sa.text(f'DROP TABLE "{name}"'))
                dropped.append(name)
        deleted = 0
        default = default_partition_name(table)
        if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": default}).scalar() is not None:
            deleted = conn.execute(
                sa.text(f'DELETE FROM "{default}" WHERE "{key}" < :cutoff'), {"cutoff": cutoff}
            ).rowcount
    return RetentionResult(table=table, dropped=tuple(dropped), default_rows_deleted=deleted)
