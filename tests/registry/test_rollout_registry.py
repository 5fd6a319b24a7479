"""The rollout record in the registry, on both stores: start refuses what it must, one
rollout at a time by compare-and-swap, end clears it and keeps the record readable."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest

from bookrec.registry import (
    ROLLOUT_KEY,
    IncompleteVersion,
    Registry,
    RegistryError,
    RolloutConflict,
    RolloutRefused,
    RolloutRunning,
    VersionNotFound,
)
from tests.utils.versions import make_version_folder


@pytest.fixture
def rollout_registry(registry: Registry, tmp_path: Path) -> Registry:
    """Versions v1 (the champion) and v2, v3 (candidates)."""
    for n, version in enumerate(("v1", "v2", "v3")):
        registry.add_version(make_version_folder(tmp_path / "build", version, seed=n), version)
    registry.promote("v1", by="tests", reason="fixture")
    return registry


def test_start_writes_the_record_and_end_keeps_it(rollout_registry: Registry) -> None:
    reg = rollout_registry
    assert reg.current_rollout() is None
    record = reg.start_rollout(
        "v2", interleave=0.3, canary=0.1, started_by="tests", flow_run_id="run-1"
    )
    assert len(record["id"]) == 32 and int(record["id"], 16) >= 0
    assert record["candidate"] == "v2" and record["champion"] == "v1"
    assert (record["interleave"], record["canary"]) == (0.3, 0.1)
    assert record["started_by"] == "tests" and record["flow_run_id"] == "run-1"
    assert len(record["salt"]) == 16
    assert datetime.fromisoformat(record["started_at"]).tzinfo is not None
    assert record["candidate_manifest_sha256"] == reg.check_complete("v2")
    assert reg.current_rollout() == record
    assert reg.rollout(record["id"]) == record
    # The champion is untouched by a rollout.
    assert reg.champion()["version"] == "v1"

    ended = reg.end_rollout(record["id"], "rolled_back", "hit rate lower")
    assert reg.current_rollout() is None
    assert ended["decision"] == "rolled_back" and ended["reason"] == "hit rate lower"
    assert datetime.fromisoformat(ended["ended_at"]) >= datetime.fromisoformat(
        record["started_at"]
    )
    assert reg.rollout(record["id"]) == ended
    assert reg.champion()["version"] == "v1"
    # Retrying the same end is a success; another decision for it is a conflict.
    assert reg.end_rollout(record["id"], "rolled_back", "retry") == ended
    with pytest.raises(RolloutConflict):
        reg.end_rollout(record["id"], "promoted", "too late")
    # A new rollout may start now, with a new id and salt.
    second = reg.start_rollout("v3", interleave=0.0, canary=0.5, started_by="tests")
    assert second["id"] != record["id"] and second["salt"] != record["salt"]
    assert second["flow_run_id"] is None
    assert reg.rollout(record["id"]) == ended  # the ended record is still there
    assert reg.end_rollout(record["id"], "rolled_back", "late retry") == ended
    with pytest.raises(RolloutConflict):
        reg.end_rollout(record["id"], "promoted", "not running any more")
    assert reg.current_rollout() == second
    # A lost write of the ended record is repaired by the retry.
    ended2 = reg.end_rollout(second["id"], "promoted", "better")
    reg.store.put(f"rollouts/{second['id']}.json", b'{"id": "stale"}')
    assert reg.end_rollout(second["id"], "promoted", "retry") == ended2
    assert reg.rollout(second["id"]) == ended2


def test_start_refuses_a_second_rollout_and_bad_arguments(
    rollout_registry: Registry, tmp_path: Path
) -> None:
    reg = rollout_registry
    for interleave, canary in ((0.6, 0.5), (-0.1, 0.2), (0.2, -0.01), (1.5, 0.0)):
        with pytest.raises(ValueError):
            reg.start_rollout("v2", interleave=interleave, canary=canary, started_by="tests")
    with pytest.raises(VersionNotFound):
        reg.start_rollout("v9", interleave=0.5, canary=0.0, started_by="tests")
    with pytest.raises(RolloutRefused, match="already the champion"):
        reg.start_rollout("v1", interleave=0.5, canary=0.0, started_by="tests")
    # An interrupted upload (files, no manifest) is not a stored version.
    reg.store.put("models/v4/array_0.npy", b"partial")
    with pytest.raises(IncompleteVersion):
        reg.start_rollout("v4", interleave=0.5, canary=0.0, started_by="tests")
    assert reg.current_rollout() is None

    first = reg.start_rollout("v2", interleave=0.5, canary=0.5, started_by="tests")
    with pytest.raises(RolloutRunning):
        reg.start_rollout("v3", interleave=0.5, canary=0.0, started_by="tests")
    assert isinstance(RolloutRunning("x"), RegistryError)
    assert reg.current_rollout() == first
    with pytest.raises(RolloutConflict):
        reg.end_rollout("0" * 32, "rolled_back", "not this one")
    with pytest.raises(RolloutRefused):
        reg.end_rollout("../champion", "rolled_back", "bad id")
    assert reg.current_rollout() == first


def test_no_rollout_without_a_champion(registry: Registry, tmp_path: Path) -> None:
    registry.add_version(make_version_folder(tmp_path / "build", "v1"), "v1")
    with pytest.raises(RolloutRefused, match="no champion"):
        registry.start_rollout("v1", interleave=0.5, canary=0.0, started_by="tests")


def test_racing_starts_exactly_one_wins(rollout_registry: Registry) -> None:
    reg = rollout_registry
    barrier = threading.Barrier(6)
    won: list[dict] = []
    lost: list[Exception] = []

    def start(candidate: str) -> None:
        barrier.wait()
        try:
            won.append(reg.start_rollout(candidate, interleave=0.5, canary=0.0, started_by="t"))
        except RolloutRunning as exc:
            lost.append(exc)

    threads = [threading.Thread(target=start, args=("v2" if n % 2 else "v3",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 5
    assert reg.current_rollout() == won[0]


def test_racing_ends_exactly_one_decides(rollout_registry: Registry) -> None:
    reg = rollout_registry
    record = reg.start_rollout("v2", interleave=0.5, canary=0.0, started_by="t")
    barrier = threading.Barrier(4)
    decided: list[dict] = []
    refused: list[Exception] = []

    def end(decision: str) -> None:
        barrier.wait()
        try:
            decided.append(reg.end_rollout(record["id"], decision, "race"))
        except RolloutConflict as exc:
            refused.append(exc)

    threads = [threading.Thread(target=end, args=(d,)) for d in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(decided) == 1 and len(refused) == 3
    assert reg.rollout(record["id"])["decision"] == decided[0]["decision"]
    assert reg.current_rollout() is None
    assert ROLLOUT_KEY.startswith("rollouts/")
    # Rollout keys never show up as versions.
    assert {r.version for r in reg.list_versions()} == {"v1", "v2", "v3"}
