"""The promotion audit trail: one append-only row per registry decision in ``promotions``.

The table (migration 0002) refuses UPDATE and DELETE with a trigger, so this module
only inserts and reads. Since migration 0009 a row also says who or what decided
(``decided_by``: "gate", an approver, "timeout") and in which Prefect flow run; the
champion's history is read back from the rows that moved the pointer. Since migration 0013
a rollout (issue 17) records ``rolling_out`` when it starts and, when it ends, ``promoted``
(the champion moved) or ``rollout_rolled_back`` (the champion stayed), with the online
figures the rule judged in ``online_figures``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Engine

DECISIONS = ("promoted", "rejected", "rolled back", "refused", "awaiting_approval",
             "rolling_out", "rollout_rolled_back")
CHAMPION_MOVES = ("promoted", "rolled back")
HISTORY_MAX = 1000

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
    sa.column("decided_by", sa.Text),
    sa.column("flow_run_id", sa.Text),
    sa.column("online_figures", pg.JSONB),
)


@dataclass(frozen=True)
class Decision:
    """One audit row, as recorded."""

    id: int
    decided_at: datetime
    candidate: str | None
    champion_before: str | None
    champion_after: str | None
    candidate_metrics: dict[str, Any] | None
    champion_metrics: dict[str, Any] | None
    thresholds: dict[str, Any] | None
    decision: str
    reason: str
    actor: str
    decided_by: str | None = None
    flow_run_id: str | None = None
    online_figures: dict[str, Any] | None = None


def record_decision(
    engine: Engine,
    *,
    candidate: str | None,
    decision: str,
    reason: str,
    actor: str,
    champion_before: str | None = None,
    champion_after: str | None = None,
    candidate_metrics: dict[str, Any] | None = None,
    champion_metrics: dict[str, Any] | None = None,
    thresholds: dict[str, Any] | None = None,
    decided_by: str | None = None,
    flow_run_id: str | None = None,
    online_figures: dict[str, Any] | None = None,
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
            decided_by=decided_by,
            flow_run_id=flow_run_id,
            online_figures=online_figures,
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


def decisions_for(engine: Engine, candidate: str) -> list[Decision]:
    """Every decision about ``candidate``, oldest first."""
    stmt = (sa.select(_promotions).where(_promotions.c.candidate == candidate)
            .order_by(_promotions.c.id))
    with engine.connect() as conn:
        return [Decision(**row._mapping) for row in conn.execute(stmt)]


@dataclass(frozen=True)
class ChampionInterval:
    """One version's time as the champion: ``to`` is None while it still serves."""

    version: str
    start: datetime
    end: datetime | None
    decision: str  # promoted | rolled back
    decided_by: str
    flow_run_id: str | None
    reason: str
    actor: str

    def to_json(self) -> dict[str, Any]:
        """The shape ``bookrec models --history --json`` and the admin endpoint print."""
        out = asdict(self)
        out["from"], out["to"] = out.pop("start").isoformat(), out.pop("end")
        out["to"] = out["to"].isoformat() if out["to"] else None
        return out


def champion_history(engine: Engine, limit: int = 100) -> list[ChampionInterval]:
    """The newest ``limit`` champion intervals (at most ``HISTORY_MAX``), oldest first.

    Each promotion or rollback starts an interval and ends the one before. Rows recorded
    before migration 0009 have no ``decided_by``: a promotion then was the gate's, a
    rollback the actor's.
    """
    limit = max(1, min(int(limit), HISTORY_MAX))
    p = _promotions.c
    stmt = (
        sa.select(_promotions)
        .where(p.decision.in_(CHAMPION_MOVES), p.champion_after.is_not(None))
        .order_by(p.decided_at.desc(), p.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = [Decision(**row._mapping) for row in conn.execute(stmt)]
    intervals, end = [], None
    for row in rows:  # newest first: each row ends where the next newer one started
        intervals.append(_interval(row, end))
        end = row.decided_at
    return intervals[::-1]


def _interval(row: Decision, end: datetime | None) -> ChampionInterval:
    by = row.decided_by or ("gate" if row.decision == "promoted" else row.actor)
    return ChampionInterval(row.champion_after or "", row.decided_at, end, row.decision, by,
                            row.flow_run_id, row.reason, row.actor)


def champion_at(engine: Engine, when: datetime) -> ChampionInterval | None:
    """The champion interval that contains ``when`` (None before the first promotion)."""
    p = _promotions.c
    stmt = (
        sa.select(_promotions)
        .where(p.decision.in_(CHAMPION_MOVES), p.champion_after.is_not(None),
               p.decided_at <= when)
        .order_by(p.decided_at.desc(), p.id.desc())
        .limit(1)
    )
    later = (
        sa.select(sa.func.min(p.decided_at))
        .where(p.decision.in_(CHAMPION_MOVES), p.champion_after.is_not(None),
               p.decided_at > when)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
        end = conn.execute(later).scalar()
    return None if row is None else _interval(Decision(**row._mapping), end)
