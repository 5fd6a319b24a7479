"""The promotions audit trail in PostgreSQL: appended, read back, never changed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bookrec import audit


def test_record_and_read_back(clean_db: sa.engine.Engine) -> None:
    first = audit.record_decision(
        clean_db, candidate="v1", decision="promoted", reason="beats most-popular",
        actor="tester", champion_before=None, champion_after="v1",
        candidate_metrics={"ndcg@20": 0.1}, thresholds={"max_relative_drop": 0.01},
    )
    second = audit.record_decision(
        clean_db, candidate="v2", decision="rejected", reason="NDCG@20 dropped 5%",
        actor="tester", champion_before="v1", champion_after="v1",
        candidate_metrics={"ndcg@20": 0.095}, champion_metrics={"ndcg@20": 0.1},
    )
    assert second > first
    rows = audit.recent_decisions(clean_db)
    assert [(r.candidate, r.decision) for r in rows] == [("v2", "rejected"), ("v1", "promoted")]
    assert rows[0].champion_metrics == {"ndcg@20": 0.1}
    assert rows[1].thresholds == {"max_relative_drop": 0.01}
    assert rows[0].decided_at.tzinfo is not None


def test_unknown_decision_is_refused(clean_db: sa.engine.Engine) -> None:
    with pytest.raises(ValueError, match="decision must be one of"):
        audit.record_decision(clean_db, candidate="v", decision="maybe", reason="r", actor="a")
    assert audit.recent_decisions(clean_db) == []


def test_rows_cannot_be_changed_or_deleted(clean_db: sa.engine.Engine) -> None:
    audit.record_decision(clean_db, candidate="v", decision="refused", reason="r", actor="a")
    for statement in ("UPDATE promotions SET reason = 'x'", "DELETE FROM promotions"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), clean_db.begin() as conn:
            conn.execute(sa.text(statement))
    assert [r.reason for r in audit.recent_decisions(clean_db)] == ["r"]
