"""The housekeeping flow: keep every day-partitioned log table bounded.

Scheduled daily by prefect.yaml. For each table of ``bookrec.partitions.PARTITIONED_TABLES``
it creates the partitions of the coming days (so rows land in their day's partition, not
the default one) and drops the days older than the retention.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from bookrec.partitions import PARTITIONED_TABLES
from tasks.housekeeping import apply_retention, ensure_partitions


@flow(name="housekeeping")
def housekeeping_flow(retention_days: int | None = None, days_ahead: int = 7) -> dict[str, Any]:
    """Create the next ``days_ahead`` days' log partitions and drop the expired ones.

    ``retention_days`` overrides ``BOOKREC_LOG_RETENTION_DAYS`` (default 30) for this run.
    Returns, per table, the partitions created and what retention removed.
    """
    logger = get_run_logger()
    report: dict[str, Any] = {}
    for table in PARTITIONED_TABLES:
        created = ensure_partitions(table, days_ahead)
        retained = apply_retention(table, retention_days)
        report[table] = {"created": created, **retained}
        logger.info(
            "%s: created %s; dropped %s and %d rows of the default partition (keeping %d days)",
            table,
            created or "none",
            list(retained["dropped"]) or "none",
            retained["default_rows_deleted"],
            retained["retention_days"],
        )
    return report
