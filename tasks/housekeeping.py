"""Prefect tasks for housekeeping: day partitions ahead and retention of the log tables."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task

from bookrec import db, partitions
from bookrec.settings import get_settings
from tasks.retries import IO_RETRIES


@task(name="ensure-partitions", **IO_RETRIES)
def ensure_partitions(table: str, days_ahead: int) -> list[str]:
    """Create ``table``'s partitions for today and the next ``days_ahead`` days."""
    return partitions.ensure_partitions(db.get_engine(get_settings()), table, days_ahead)


@task(name="apply-retention", **IO_RETRIES)
def apply_retention(table: str, retention_days: int | None = None) -> dict[str, Any]:
    """Drop ``table``'s rows older than the retention (``BOOKREC_LOG_RETENTION_DAYS``)."""
    settings = get_settings()
    days = settings.log_retention_days if retention_days is None else retention_days
    result = partitions.drop_partitions_older_than(db.get_engine(settings), table, days)
    return {**asdict(result), "retention_days": days}
