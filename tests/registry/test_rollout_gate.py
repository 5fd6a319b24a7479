"""The promotion gate's fourth outcome, "roll out": asked for by a parameter or by
``BOOKREC_ROLLOUT_DEFAULT``, it starts a ``rollout`` flow run (a detached process on the
test harness's server) instead of moving the champion; that run decides on its own."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from bookrec import audit, gate
from bookrec.registry import Registry
from bookrec.settings import get_settings
from flows.promote import promote_flow
from tasks.registry import PromotionRefused
from tests.utils.versions import model_metrics


def test_decide_rolls_out_only_a_clean_pass():
    passed = [gate.Check("ndcg@20", True, "fine")]
    assert gate.decide(passed, roll_out=True).decision == gate.ROLLOUT
    assert gate.decide(passed).decision == gate.PROMOTED
    concern = [gate.Check("close call", False, "close")]
    assert gate.decide(passed, concern, roll_out=True).decision == gate.ASK  # a human first
    failed = [gate.Check("ndcg@20", False, "worse")]
    assert gate.decide(failed, roll_out=True).decision == gate.REJECTED


def _wait_for(engine: sa.engine.Engine, candidate: str, decision: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [d for d in audit.decisions_for(engine, candidate) if d.decision == decision]
        if rows:
            return rows[-1]
        time.sleep(1.0)
    raise AssertionError(f"no {decision} row for {candidate} after {timeout} s: "
                         f"{[d.decision for d in audit.decisions_for(engine, candidate)]}")


def test_gate_starts_a_rollout_run_that_decides_on_its_own(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine, monkeypatch
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    assert promote_flow("v1")["decision"] == "promoted"
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")

    spec = "interleave=0.5,bake_minutes=0.02,check_every_s=1,max_extensions=0"
    result = promote_flow("v2", rollout=spec)
    assert (result["decision"], result["champion"]) == ("rolling_out", "v1")
    assert reg.champion()["version"] == "v1"  # the gate did not move it
    run_id = result["rollout"]["flow_run_id"]
    assert result["rollout"]["spec"] == {"interleave": 0.5, "bake_minutes": 0.02,
                                         "check_every_s": 1.0, "max_extensions": 0}
    started = audit.decisions_for(clean_db, "v2")[-1]
    assert (started.decision, started.decided_by, started.flow_run_id) == (
        "rolling_out", "gate", run_id)
    assert started.candidate_metrics["ndcg@20"] == 0.12

    # no reader is replayed here: after its only look the rule has not seen the candidate
    # shown better, so the run rolls it back and the champion stays
    ended = _wait_for(clean_db, "v2", "rollout_rolled_back")
    assert ended.flow_run_id == run_id and ended.decided_by == "rollout"
    assert "not shown better after 0 extension(s)" in ended.reason
    rollout = ended.online_figures["rollout"]
    assert (rollout["candidate"], rollout["champion"], rollout["interleave"]) == ("v2", "v1", 0.5)
    assert ended.online_figures["checks"] and ended.online_figures["verdict"]["decision"] == (
        "rollback")
    assert reg.current_rollout() is None
    assert reg.rollout(rollout["id"])["decision"] == "rolled_back"
    assert reg.status("v2")["status"] == "rejected"
    assert reg.champion()["version"] == "v1"


def test_the_setting_asks_for_rollouts_and_a_running_one_refuses_a_second(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine, monkeypatch
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    assert promote_flow("v1")["decision"] == "promoted"
    reg.add_version(save_hybrid("v2", model_metrics(0.12), which=1), "v2")
    reg.add_version(save_hybrid("v3", model_metrics(0.12), which=1), "v3")
    running = reg.start_rollout("v3", interleave=0.2, canary=0.0, started_by="test")

    monkeypatch.setenv("BOOKREC_ROLLOUT_DEFAULT", "interleave=0.3")
    get_settings.cache_clear()
    with pytest.raises(PromotionRefused, match=f"rollout {running['id']} of v3 is running"):
        promote_flow("v2")
    assert audit.decisions_for(clean_db, "v2")[-1].decision == "refused"

    monkeypatch.setenv("BOOKREC_ROLLOUT_DEFAULT", "interleave=2")
    get_settings.cache_clear()
    with pytest.raises(PromotionRefused, match="interleave share must be in"):
        promote_flow("v2")

    # "off" overrides the setting: the gate promotes on offline metrics alone
    assert promote_flow("v2", rollout="off")["decision"] == "promoted"
    reg.end_rollout(running["id"], "stopped", "test over")
