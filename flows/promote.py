"""The promote flow: gate a candidate against the champion and move the pointer if it passes.

Checks: metrics against the champion's (or most-popular for the first model), then a
serving smoke test in a separate process. A pass moves the champion pointer by
compare-and-swap, emits ``bookrec.model.promoted`` and runs the reload flow; a failure
marks the candidate rejected (it stays in the store). Either way one row goes to the
``promotions`` audit table and the decision is published as Prefect artifacts. A refusal
(no candidate, incomplete version, lost race) fails the run with ``PromotionRefused``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from prefect import flow, get_run_logger

from bookrec.artifacts import ArtifactError
from bookrec.registry import RegistryError
from tasks.registry import (
    PromotionRefused,
    announce_champion,
    choose_candidate,
    current_actor,
    fetch_version,
    judge_candidate,
    mark_rejected,
    move_champion,
    publish_decision,
    read_champion,
    read_manifest,
    record_decision,
    smoke_test,
    write_champion_status,
)


def run_reload(version: str) -> dict[str, Any]:
    """Signal the serving tier (the reload flow) as a subflow; its failure is reported, not
    raised, because the pointer already moved and serving also polls it."""
    from flows.reload import reload_flow

    state = reload_flow(version=version, return_state=True)
    if state.is_completed():
        return {"status": "ok", "result": state.result()}
    return {"status": "failed", "error": str(state.result(raise_on_failure=False))}


def refuse(
    version: str | None, champion: str | None, reason: str, actor: str, key: str = "candidate"
) -> NoReturn:
    """Record a refusal (when there is a version to name) and fail the run with it."""
    if version:
        record_decision(candidate=version, decision="refused", reason=reason, actor=actor,
                        champion_before=champion, champion_after=champion)
    raise PromotionRefused(
        {key: version, "decision": "refused", "reason": reason, "champion": champion}
    )


@flow(name="promote")
def promote_flow(version: str | None = None) -> dict[str, Any]:
    """Gate ``version`` (default: the newest unpromoted candidate) and promote or reject it.

    Returns ``{"candidate", "decision", "reason", "champion"}`` (plus ``reload`` and
    ``status_write``: "written", or why the new champion's status object was not).
    """
    logger = get_run_logger()
    actor = current_actor()
    champion = read_champion()
    before = champion["pointer"]["version"] if champion["pointer"] else None
    if version is not None and version == before:
        refuse(version, before, f"{version} is already the champion", actor)
    try:
        candidate = choose_candidate(version)
    except RegistryError as exc:
        refuse(version, before, str(exc), actor)

    candidate_manifest = read_manifest(candidate)
    champion_manifest = read_manifest(before)
    fetched = fetch_version(candidate)
    report = smoke_test(fetched)
    verdict = judge_candidate(candidate_manifest, champion_manifest, report)

    after = before
    reload = None
    status = None
    if verdict["decision"] == "promoted":
        details = {k: report.get(k) for k in ("answers_sha256", "golden_sha256", "latency_ms",
                                              "peak_rss_mb", "load_s")}
        try:
            pointer = move_champion(candidate, champion, manifest_sha256=fetched["manifest_sha256"],
                                    reason=verdict["reason"], actor=actor, action="promoted")
        except (RegistryError, ArtifactError) as exc:
            refuse(candidate, before, str(exc), actor)
        after = candidate
        status = write_champion_status(pointer, details)
        if status != "written":
            logger.warning("%s is the champion but its status object was not written (%s)",
                           candidate, status)
    else:
        mark_rejected(candidate, verdict["reason"], actor)
    record_decision(
        candidate=candidate, decision=verdict["decision"], reason=verdict["reason"], actor=actor,
        champion_before=before, champion_after=after,
        candidate_metrics=verdict["candidate_metrics"],
        champion_metrics=verdict["champion_metrics"], thresholds=verdict["thresholds"],
    )
    result = {"candidate": candidate, "decision": verdict["decision"],
              "reason": verdict["reason"], "champion": after}
    publish_decision("promote", candidate, result, verdict)
    if after != before:
        announce_champion(candidate, "promoted", before, actor)
        reload = run_reload(candidate)
    logger.info("candidate %s %s: %s", candidate, verdict["decision"], verdict["reason"])
    return {**result, "reload": reload, "status_write": status}
