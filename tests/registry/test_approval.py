"""Approval of close calls against a real Prefect server (the test harness): the gate asks,
a separate approval run waits paused with its input form, and `bookrec approve` /
`bookrec reject` or the timeout decide. The approval runs in its own process, as it does
outside tests when no approval deployment exists."""

from __future__ import annotations

import json
import time
from uuid import UUID

import pytest
import sqlalchemy as sa

from bookrec import audit
from bookrec.registry import Registry
from bookrec.settings import get_settings
from cli.main import main
from flows.promote import promote_flow
from tests.utils.versions import model_metrics


@pytest.fixture
def approvals(flow_env, monkeypatch: pytest.MonkeyPatch):
    """Short deadlines and polls, so a run left waiting by a failed test ends soon."""
    monkeypatch.setenv("BOOKREC_APPROVAL_TIMEOUT_S", "120")
    monkeypatch.setenv("BOOKREC_APPROVAL_POLL_S", "1")
    get_settings.cache_clear()
    return flow_env


def _state(run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).state


def wait_for(run_id: str, predicate, what: str, timeout: float = 120.0):
    """Poll the flow run's state until ``predicate(state)``; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = _state(run_id)
        if state is not None and predicate(state):
            return state
        time.sleep(0.5)
    pytest.fail(f"approval run {run_id} never {what}; last state {state}")


def wait_paused(run_id: str):
    return wait_for(run_id, lambda s: s.is_paused(), "paused")


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def _rows(engine: sa.engine.Engine) -> list[tuple]:
    return [(r.candidate, r.decision, r.decided_by, r.champion_after)
            for r in reversed(audit.recent_decisions(engine))]


def test_require_approval_then_approve_from_the_cli(
    approvals, reg: Registry, save_hybrid, clean_db, capsys: pytest.CaptureFixture[str]
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    assert promote_flow("v1")["decision"] == "promoted"
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")  # +20 %: no close call

    assert main(["promote", "v2", "--require-approval", "--json"]) == 0
    out = _json(capsys)
    assert (out["candidate"], out["decision"], out["champion"]) == ("v2", "awaiting_approval",
                                                                    "v1")
    approval = out["approval"]
    assert approval["url"].endswith(f"/runs/flow-run/{approval['flow_run_id']}")
    assert "requested" in out["reason"]
    assert reg.champion()["version"] == "v1"  # nothing moves before the answer
    status = reg.status("v2")
    assert status["status"] == "awaiting_approval"
    assert status["flow_run_id"] == approval["flow_run_id"]
    assert main(["promote", "--json"]) == 1  # an awaiting version is no candidate
    assert "every complete version" in _json(capsys)["reason"]

    state = wait_paused(approval["flow_run_id"])
    assert state.state_details.run_input_keyset  # the input form is registered

    from prefect import get_client

    with get_client(sync_client=True) as client:
        page = client.read_artifacts()
    request = [a for a in page if a.key == "approval-request"]
    assert request, "no approval-request artifact"
    text = request[-1].data
    assert "| ndcg@20 | 0.12000 | 0.10000 | +20.00% |" in text
    assert "5 sample readers" in text and "| 11676 |" in text

    assert main(["approve", "v2", "--reason", "looks right", "--json"]) == 0
    out = _json(capsys)
    assert (out["decision"], out["champion"]) == ("promoted", "v2")
    assert "approved by" in out["reason"] and "looks right" in out["reason"]
    assert "@" in out["decided_by"]
    assert reg.champion()["version"] == "v2" and reg.champion()["previous"] == ["v1"]
    assert wait_for(approval["flow_run_id"], lambda s: s.is_final(), "finished").is_completed()
    rows = _rows(clean_db)
    # the refused `promote` with nothing to promote is recorded too, with no candidate
    assert [r[:2] for r in rows] == [("v1", "promoted"), ("v2", "awaiting_approval"),
                                     (None, "refused"), ("v2", "promoted")]
    assert rows[0][2] == "gate" and rows[1][2] == "gate" and "@" in rows[3][2]
    awaiting = audit.decisions_for(clean_db, "v2")[0]
    assert awaiting.flow_run_id == approval["flow_run_id"]
    assert awaiting.candidate_metrics["ndcg@20"] == 0.12


def test_reject_and_timeout(
    approvals, reg: Registry, save_hybrid, clean_db, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    promote_flow("v1")
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")
    asked = promote_flow("v2", require_approval=True)["approval"]
    wait_paused(asked["flow_run_id"])
    with pytest.raises(SystemExit) as refused:  # a rejection needs a reason
        main(["reject", "v2", "--json"])
    assert refused.value.code == 2 and "--reason" in capsys.readouterr().err
    assert main(["reject", "v2", "--reason", "segment lists look odd", "--json"]) == 0
    out = _json(capsys)
    assert (out["decision"], out["champion"]) == ("rejected", "v1")
    assert "segment lists look odd" in out["reason"]
    assert reg.status("v2")["status"] == "rejected" and reg.champion()["version"] == "v1"
    assert main(["approve", "v2"]) == 1  # answered already
    assert "not awaiting approval (rejected)" in capsys.readouterr().err

    monkeypatch.setenv("BOOKREC_APPROVAL_TIMEOUT_S", "3")
    get_settings.cache_clear()
    reg.add_version(save_hybrid("v3", model_metrics(0.13)), "v3")
    asked = promote_flow("v3", require_approval=True)["approval"]
    final = wait_for(asked["flow_run_id"], lambda s: s.is_final(), "finished")
    assert not final.is_completed()  # Prefect marks a pause that was never resumed as failed
    assert reg.status("v3")["status"] == "rejected" and reg.champion()["version"] == "v1"
    assert "no answer by" in reg.status("v3")["reason"]
    last = audit.decisions_for(clean_db, "v3")[-1]
    assert (last.decision, last.decided_by, last.flow_run_id) == (
        "rejected", "timeout", asked["flow_run_id"])
    assert [r[:3] for r in _rows(clean_db)][-4:] == [
        ("v2", "awaiting_approval", "gate"), ("v2", "rejected", out_by(clean_db, "v2")),
        ("v3", "awaiting_approval", "gate"), ("v3", "rejected", "timeout")]


def out_by(engine: sa.engine.Engine, version: str) -> str:
    """Who decided ``version`` last (the CLI's user@host)."""
    return audit.decisions_for(engine, version)[-1].decided_by


def test_close_call_asks_and_two_approvals_cannot_both_win(
    approvals, reg: Registry, save_hybrid, clean_db, capsys: pytest.CaptureFixture[str]
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    promote_flow("v1")
    reg.add_version(save_hybrid("v2", model_metrics(0.1003), which=1), "v2")  # +0.3 %
    reg.add_version(save_hybrid("v3", model_metrics(0.20)), "v3")
    first = promote_flow("v2")
    assert first["decision"] == "awaiting_approval"
    assert "within the approval band of 0.50%" in first["reason"]
    second = promote_flow("v3", require_approval=True)
    assert second["decision"] == "awaiting_approval"
    wait_paused(first["approval"]["flow_run_id"])
    wait_paused(second["approval"]["flow_run_id"])

    assert main(["approve", "v3", "--json"]) == 0
    assert _json(capsys)["champion"] == "v3"
    assert main(["approve", "v2", "--reason", "also fine", "--json"]) == 1
    out = _json(capsys)
    assert (out["decision"], out["champion"]) == ("refused", "v3")
    assert "champion changed from v1 to v3" in out["reason"]
    assert reg.champion()["version"] == "v3"
    assert reg.status("v2")["status"] == "rejected"
