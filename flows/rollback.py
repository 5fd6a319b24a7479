"""The rollback flow: point the champion back at a version that was promoted before.

Retrains nothing: it verifies the target's checksums (and that its manifest is the one
recorded at its promotion), loads it with the serving loader (in this process: it passed
the isolated smoke test when it was promoted) and checks that it answers the golden
queries exactly as it did then, then
moves the pointer by compare-and-swap, records 'rolled back', emits
``bookrec.model.promoted`` and reloads serving (tasks of this run). Any failed check refuses the
rollback and leaves the champion unchanged.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from bookrec.artifacts import ArtifactError
from bookrec.registry import RegistryError
from tasks.registry import (
    announce_champion,
    choose_rollback_target,
    current_actor,
    fetch_version,
    move_champion,
    publish_decision,
    read_champion,
    record_decision,
    refuse,
    smoke_test,
    write_champion_status,
)
from tasks.reload import run_reload


@flow(name="rollback")
def rollback_flow(version: str | None = None) -> dict[str, Any]:
    """Roll the champion back to ``version`` (default: the champion before the current one).

    Returns ``{"target", "decision", "reason", "champion"}`` (plus ``reload`` and
    ``status_write``).
    """
    logger = get_run_logger()
    actor = current_actor()
    champion = read_champion()
    before = champion["pointer"]["version"] if champion["pointer"] else None
    try:
        target = choose_rollback_target(version)
    except RegistryError as exc:
        refuse(version, before, str(exc), actor, key="target")
    name = target["version"]
    fetched = fetch_version(name, target["manifest_sha256"])
    if fetched["error"]:
        refuse(name, before, f"{name} failed verification: {fetched['error']}", actor, key="target")
    report = smoke_test(fetched, isolated=False)  # it passed the isolated test when promoted
    if not report.get("ok"):
        refuse(name, before, f"{name} does not load: {report.get('error')}", actor, key="target")
    recorded = target["answers_sha256"]
    if recorded and target["golden_sha256"] == report.get("golden_sha256") and (
        report.get("answers_sha256") != recorded
    ):
        refuse(
            name, before, f"{name} no longer answers the golden queries as when promoted", actor,
            key="target",
        )
    reason = f"rolled back from {before} to {name}"
    try:
        pointer = move_champion(name, champion, manifest_sha256=fetched["manifest_sha256"],
                                reason=reason, actor=actor, action="rolled back")
    except (RegistryError, ArtifactError) as exc:
        refuse(name, before, str(exc), actor, key="target")
    status = write_champion_status(pointer)
    if status != "written":
        logger.warning("%s is the champion but its status object was not written (%s)",
                       name, status)
    record_decision(candidate=name, decision="rolled back", reason=reason, actor=actor,
                    champion_before=before, champion_after=name, decided_by=actor)
    result = {"target": name, "decision": "rolled back", "reason": reason, "champion": name}
    publish_decision("rollback", name, {**result, "candidate": name})
    announce_champion(name, "rolled back", before, actor)
    reload = run_reload(name)
    logger.info(reason)
    return {**result, "reload": reload, "status_write": status}

