"""The promotion audit trail: one append-only row per registry decision in ``promotions``.

The table (migration 0002) refuses UPDATE and DELETE with a trigger, so this module
only inserts and reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Engine

DECISIONS = ("promoted", "rejected", "rolled back", "refused")

_promotions = sa.table(
    "promotions",
    sa.column("id", sa.BigInteger),
    sa.column("decided_at", sa.DateTime(timezone=True)),
    sa.column("candidate", sa.Text),
    sa.column("champion_before", sa.Text),
    sa.column("champion_after", sa.Text),
    sa.column("candidate_metrics", pg.JSONB),
    sa.column("champion_metrics", pg.JSONB),
    sa.column("thresholds", pg.JSONB),
    sa.column("decision", sa.Text),
    sa.column("reason", sa.Text),
    sa.column("actor", sa.Text),
)


@dataclass(frozen=True)
class Decision:
    """One audit row, as recorded."""

    id: int
    decided_at: datetime
    candidate: str
    champion_before: str | None
    champion_after: str | None
    candidate_metrics: dict[str, Any] | None
    champion_metrics: dict[str, Any] | None
    thresholds: dict[str, Any] | None
    decision: str
    reason: str
    actor: str


def record_decision(
    engine: Engine,
    *,
    candidate: str,
    decision: str,
    reason: str,
    actor: str,
    champion_before: str | None = None,
    champion_after: str | None = None,
    candidate_metrics: dict[str, Any] | None = None,
    champion_metrics: dict[str, Any] | None = None,
    thresholds: dict[str, Any] | None = None,
) -> int:
    """Append one decision and return its id; an unknown decision is refused before SQL."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    stmt = (
        sa.insert(_promotions)
        .values(
            candidate=candidate,
            champion_before=champion_before,
            champion_after=champion_after,
            candidate_metrics=candidate_metrics,
            champion_metrics=champion_metrics,
            thresholds=thresholds,
            decision=decision,
            reason=reason,
            actor=actor,
        )
        .returning(_promotions.c.id)
    )
    with engine.begin() as conn:
        return int(conn.execute(stmt).scalar_one())


def recent_decisions(engine: Engine, limit: int = 50) -> list[Decision]:
    """The newest ``limit`` decisions, newest first."""
    stmt = sa.select(_promotions).order_by(_promotions.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [Decision(**row._mapping) for row in conn.execute(stmt)]
