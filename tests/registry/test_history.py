"""The champion's history: intervals after promote, rollback and rollback --to, through the
real flows and the CLI (Prefect's test harness, PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bookrec import audit
from bookrec.registry import Registry
from cli.main import main
from flows.promote import promote_flow
from flows.rollback import rollback_flow
from tests.utils.versions import model_metrics


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_history_after_promote_rollback_and_rollback_to(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--history", "--json"]) == 0
    assert _json(capsys) == []
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")
    reg.add_version(save_hybrid("v3", model_metrics(0.01)), "v3")
    promote_flow("v1")
    promote_flow("v2")
    assert promote_flow("v3")["decision"] == "rejected"  # no interval for a rejection
    rollback_flow()  # back to v1

    history = audit.champion_history(clean_db)
    assert [(h.version, h.decision) for h in history] == [
        ("v1", "promoted"), ("v2", "promoted"), ("v1", "rolled back")]
    assert [h.decided_by for h in history[:2]] == ["gate", "gate"]
    assert "@" in history[2].decided_by
    assert all(h.flow_run_id for h in history)
    assert [h.end for h in history] == [history[1].start, history[2].start, None]
    assert history[2].reason == "rolled back from v2 to v1"

    # The middle of v2's interval: --to restores v2.
    middle = history[1].start + (history[2].start - history[1].start) / 2
    # No API runs here, so the reload fails: the pointer moves and the exit code says so.
    assert main(["rollback", "--to", middle.isoformat(), "--json"]) == 1
    out = _json(capsys)
    assert (out["target"], out["decision"], out["champion"]) == ("v2", "rolled back", "v2")
    assert out["reload"]["status"] == "failed"
    assert reg.champion()["version"] == "v2"
    # The same time again names the serving champion: refused, nothing changes.
    assert main(["rollback", "--to", middle.isoformat(), "--json"]) == 1
    assert "already the champion" in _json(capsys)["reason"]
    assert main(["rollback", "--to", (history[0].start - timedelta(days=1)).isoformat()]) == 1
    assert "before the first promotion" in capsys.readouterr().err
    assert main(["rollback", "--to", "yesterday"]) == 1
    assert "not an ISO 8601 time" in capsys.readouterr().err

    assert main(["models", "--history", "--json"]) == 0
    rows = _json(capsys)
    assert [(r["version"], r["decision"]) for r in rows] == [
        ("v1", "promoted"), ("v2", "promoted"), ("v1", "rolled back"), ("v2", "rolled back")]
    assert set(rows[0]) == {"version", "from", "to", "decision", "decided_by", "flow_run_id",
                            "reason", "actor"}
    assert [r["to"] for r in rows[:-1]] == [r["from"] for r in rows[1:]]
    assert rows[-1]["to"] is None
    assert main(["models", "--history"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("v1 ") and "promoted by gate run " in text[0]
    assert text[-2].startswith("v2 ") and "-> now" in text[-2]
    assert text[-1].strip() == "rolled back from v1 to v2"


def test_champion_at_and_history_limit(clean_db: sa.engine.Engine) -> None:
    for n, version in enumerate(["a", "b", "c"]):
        audit.record_decision(clean_db, candidate=version, decision="promoted", reason=f"r{n}",
                              actor="tests", champion_before=None, champion_after=version)
    audit.record_decision(clean_db, candidate="d", decision="rejected", reason="worse",
                          actor="tests", champion_before="c", champion_after="c")
    history = audit.champion_history(clean_db)
    assert [h.version for h in history] == ["a", "b", "c"]
    assert [h.version for h in audit.champion_history(clean_db, limit=2)] == ["b", "c"]
    assert history[-1].end is None and history[0].decided_by == "gate"  # pre-0009 rows
    assert audit.champion_at(clean_db, history[1].start).version == "b"
    assert audit.champion_at(clean_db, history[0].start - timedelta(seconds=1)) is None
