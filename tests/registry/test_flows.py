"""The promote and rollback flows under Prefect's test harness, against PostgreSQL and both
stores, with real (small) hybrid models loaded by the serving loader in a subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec import audit
from bookrec.registry import POINTER_KEY, Registry
from bookrec.settings import get_settings
from bookrec.smoke import run_smoke
from flows.promote import promote_flow
from flows.rollback import rollback_flow
from tasks.registry import PromotionRefused
from tests.registry.conftest import FaultOnce
from tests.utils.versions import make_version_folder, model_metrics


def _decisions(engine: sa.engine.Engine) -> list[tuple[str, str, str | None, str | None]]:
    rows = reversed(audit.recent_decisions(engine))
    return [(r.candidate, r.decision, r.champion_before, r.champion_after) for r in rows]


@pytest.mark.parametrize("flow_store", ["local", "s3"], indirect=True)
def test_first_model_promoted_then_worse_rejected_then_better_promoted(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10, popular=0.05)), "v1")
    result = promote_flow()
    assert {k: result[k] for k in ("candidate", "decision", "champion")} == {
        "candidate": "v1", "decision": "promoted", "champion": "v1"}
    assert "first model" in result["reason"]
    pointer = reg.champion()
    assert pointer["version"] == "v1" and pointer["action"] == "promoted"
    assert result["reload"]["status"] == "failed"  # no admin token: serving refuses the call

    reg.add_version(save_hybrid("v2", model_metrics(0.095)), "v2")  # -5 %
    result = promote_flow()
    assert (result["candidate"], result["decision"], result["champion"]) == ("v2", "rejected",
                                                                             "v1")
    assert "may not drop more than 1.00%" in result["reason"]
    assert reg.champion()["version"] == "v1"
    assert reg.status("v2")["status"] == "rejected"
    assert reg.store.list("models/v2/")  # kept in the store

    reg.add_version(save_hybrid("v3", model_metrics(0.0993), which=1), "v3")  # -0.7 %
    assert promote_flow()["decision"] == "promoted"
    assert reg.champion()["version"] == "v3" and reg.champion()["previous"] == ["v1"]

    rows = audit.recent_decisions(clean_db)
    assert _decisions(clean_db) == [
        ("v1", "promoted", None, "v1"),
        ("v2", "rejected", "v1", "v1"),
        ("v3", "promoted", "v1", "v3"),
    ]
    assert rows[1].candidate_metrics["ndcg@20"] == 0.095
    assert rows[1].champion_metrics["ndcg@20"] == 0.10
    assert rows[1].thresholds["max_relative_drop"] == 0.01
    assert "tests" not in rows[0].actor and "@" in rows[0].actor


@pytest.mark.parametrize("flow_store", ["local", "s3"], indirect=True)
@pytest.mark.parametrize(
    ("suffix", "after_write"),
    [("v1.status.json", False), ("champion.json", True)],
    ids=["status-write-fails", "swap-answer-lost"],
)
def test_a_promotion_that_happened_is_recorded_promoted_despite_a_fault_after_the_swap(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine, monkeypatch, suffix, after_write
) -> None:
    """A transient store failure after the compare-and-swap (the status write fails, or the
    swap's own answer is lost) is retried by Prefect and ends in 'promoted', not 'refused'."""
    import tasks.registry

    reg.add_version(save_hybrid("v1", model_metrics(0.10, popular=0.05)), "v1")
    flaky = Registry(FaultOnce(reg.store, suffix, after_write=after_write))
    monkeypatch.setattr(tasks.registry, "_registry", lambda: flaky)
    result = promote_flow("v1")
    assert flaky.store.tripped == 1  # the fault did fire
    assert (result["decision"], result["champion"], result["status_write"]) == (
        "promoted", "v1", "written")
    assert reg.champion()["version"] == "v1"
    assert reg.status("v1")["status"] == "promoted"
    assert reg.status("v1")["at"] == reg.champion()["promoted_at"]
    assert _decisions(clean_db) == [("v1", "promoted", None, "v1")]


def test_thresholds_come_from_settings(
    reg: Registry, save_hybrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    promote_flow()
    reg.add_version(save_hybrid("v2", model_metrics(0.097)), "v2")  # -3 %
    monkeypatch.setenv("BOOKREC_GATE_THRESHOLDS", json.dumps({"max_relative_drop": 0.05}))
    get_settings.cache_clear()
    assert promote_flow("v2")["decision"] == "promoted"
    reg.add_version(save_hybrid("v3", model_metrics(0.2, coverage=0.01)), "v3")
    monkeypatch.setenv("BOOKREC_GATE_THRESHOLDS", json.dumps({"coverage_floor": 0.02}))
    get_settings.cache_clear()
    result = promote_flow("v3")
    assert result["decision"] == "rejected" and "floor 0.0200" in result["reason"]


def test_first_model_that_does_not_beat_most_popular_is_rejected(
    reg: Registry, save_hybrid
) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.04, popular=0.05)), "v1")
    result = promote_flow("v1")
    assert result["decision"] == "rejected" and "must beat most_popular" in result["reason"]
    assert reg.champion() is None and not reg.store.exists(POINTER_KEY)


def test_serving_check_rejects_unloadable_or_over_budget(
    reg: Registry, save_hybrid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = make_version_folder(tmp_path / "f", "foreign", metrics=model_metrics(0.2))
    reg.add_version(foreign, "foreign")
    result = promote_flow("foreign")
    assert result["decision"] == "rejected"
    assert "smoke test failed" in result["reason"] and "expected 'hybrid'" in result["reason"]

    reg.add_version(save_hybrid("slow", model_metrics(0.2)), "slow")
    monkeypatch.setenv("BOOKREC_GATE_THRESHOLDS", json.dumps({"max_p99_ms": 0.0001}))
    get_settings.cache_clear()
    result = promote_flow("slow")
    assert result["decision"] == "rejected" and "budget 0.0001 ms" in result["reason"]
    assert reg.champion() is None


def test_tampered_candidate_is_rejected(reg: Registry, save_hybrid) -> None:
    reg.add_version(save_hybrid("v1", model_metrics(0.2)), "v1")
    key = next(k for k in reg.store.list("models/v1/") if k.endswith(".npy"))
    data = bytearray(reg.store.get(key))
    data[-1] ^= 0xFF
    reg.store.put(key, bytes(data))
    result = promote_flow("v1")
    assert result["decision"] == "rejected"
    assert "verification failed" in result["reason"]
    assert "does not match its manifest" in result["reason"]
    assert reg.champion() is None


def test_refusals_fail_the_run_and_are_recorded(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine
) -> None:
    with pytest.raises(PromotionRefused, match="no candidate") as info:
        promote_flow()
    assert info.value.payload == {"candidate": None, "decision": "refused",
                                  "reason": info.value.payload["reason"], "champion": None}
    folder = save_hybrid("half", model_metrics(0.2))
    reg.store.put_file("models/half/params.json", folder / "params.json")
    with pytest.raises(PromotionRefused, match="did not finish"):
        promote_flow("half")
    reg.add_version(save_hybrid("v1", model_metrics(0.2)), "v1")
    promote_flow("v1")
    with pytest.raises(PromotionRefused, match="already the champion"):
        promote_flow("v1")
    assert _decisions(clean_db) == [
        (None, "refused", None, None),  # nothing to promote: recorded with no candidate
        ("half", "refused", None, None),
        ("v1", "promoted", None, "v1"),
        ("v1", "refused", "v1", "v1"),
    ]


@pytest.mark.parametrize("flow_store", ["local", "s3"], indirect=True)
def test_rollback_restores_the_previous_champion_and_its_answers(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine, tmp_path: Path
) -> None:
    reg.add_version(save_hybrid("a", model_metrics(0.10), which=0), "a")
    promote_flow("a")
    answers_a = run_smoke(reg.fetch_version("a", tmp_path / "serve-a"))["answers_sha256"]
    reg.add_version(save_hybrid("b", model_metrics(0.12), which=1), "b")
    promote_flow("b")
    answers_b = run_smoke(reg.fetch_version("b", tmp_path / "serve-b"))["answers_sha256"]
    assert answers_a != answers_b

    result = rollback_flow()  # its duration is measured by bench/rollback.py, not here
    assert {k: result[k] for k in ("target", "decision", "champion")} == {
        "target": "a", "decision": "rolled back", "champion": "a"}
    pointer = reg.champion()
    assert (pointer["version"], pointer["action"], pointer["previous"]) == ("a", "rolled back", [])
    after = run_smoke(reg.fetch_version("a", tmp_path / "serve-after"))["answers_sha256"]
    assert after == answers_a
    assert _decisions(clean_db)[-1] == ("a", "rolled back", "b", "a")
    with pytest.raises(PromotionRefused, match="no earlier promoted version") as info:
        rollback_flow()
    assert set(info.value.payload) == {"target", "decision", "reason", "champion"}
    assert rollback_flow("b")["champion"] == "b"  # forward again to a promoted version


def test_rollback_to_deleted_or_tampered_version_is_refused(
    reg: Registry, save_hybrid, clean_db: sa.engine.Engine
) -> None:
    for name, ndcg, which in (("a", 0.10, 0), ("b", 0.12, 1)):
        reg.add_version(save_hybrid(name, model_metrics(ndcg), which=which), name)
        promote_flow(name)
    pointer_before = reg.store.get(POINTER_KEY)
    victim = next(k for k in reg.store.list("models/a/") if k.endswith(".npy"))
    saved = reg.store.get(victim)
    reg.store.delete(victim)
    with pytest.raises(PromotionRefused, match="failed verification") as info:
        rollback_flow()
    assert info.value.payload["champion"] == "b" and info.value.payload["target"] == "a"
    assert reg.store.get(POINTER_KEY) == pointer_before
    assert _decisions(clean_db)[-1] == ("a", "refused", "b", "b")

    # The manifest rewritten to match a swapped file: checksums pass, the pin does not.
    reg.store.put(victim, saved)
    manifest = json.loads(reg.manifest_bytes("a"))
    manifest["metrics"]["ndcg@20"] = 0.99
    reg.store.put("models/a/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(PromotionRefused, match="changed after upload"):
        rollback_flow("a")
    assert reg.store.get(POINTER_KEY) == pointer_before


def test_promote_publishes_artifacts(reg: Registry, save_hybrid) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    reg.add_version(save_hybrid("v1", model_metrics(0.10)), "v1")
    promote_flow("v1")
    reg.add_version(save_hybrid("v2", model_metrics(0.05)), "v2")
    state = promote_flow("v2", return_state=True)
    assert state.result()["decision"] == "rejected"
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"promote-decision", "promote-candidate-vs-champion"}
    assert "**Decision:** rejected" in by_key["promote-decision"].data
    table = json.loads(by_key["promote-candidate-vs-champion"].data)
    ndcg = next(row for row in table if row["metric"] == "ndcg@20")
    assert (ndcg["candidate"], ndcg["champion"], ndcg["change"]) == (0.05, 0.10, "-50.00%")


def test_promotion_emits_the_promoted_event(reg: Registry, save_hybrid) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    reg.add_version(save_hybrid("ev1", model_metrics(0.10)), "ev1")
    promote_flow("ev1")
    wanted = EventFilter(event=EventNameFilter(name=["bookrec.model.promoted"]),
                         resource=EventResourceFilter(id=["bookrec.model.ev1"]))
    events = []
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while not events and time.monotonic() < deadline:
            events = client.read_events(filter=wanted, limit=50).events
            time.sleep(0.5)
    assert len(events) == 1
    assert events[0].payload["version"] == "ev1" and events[0].payload["action"] == "promoted"
