"""The promote flow: gate a candidate against the champion and move the pointer if it passes.

Checks: metrics against the champion's (or most-popular for the first model), then a
serving smoke test in a separate process. A pass moves the champion pointer by
compare-and-swap, emits ``bookrec.model.promoted`` and reloads serving (the reload steps,
as tasks of this run); a failure marks the candidate rejected (it stays in the store). A
close call (or ``require_approval``) starts the ``approval`` flow run, which waits for a
human, and returns at once with ``awaiting_approval``: the champion does not move until
approval. When online judgement is asked for (the ``rollout`` parameter, e.g. ``"interleave=0.5"``,
or the ``BOOKREC_ROLLOUT_DEFAULT`` setting when the parameter is not given; ``"off"``
overrides the setting), a candidate that passes with no concern gets the outcome
``rolling_out``: the flow starts a ``rollout`` flow run (its deployment, or a detached
process) and returns; live readers decide there. Every outcome is one row of the
``promotions`` audit table and Prefect artifacts. A refusal (no candidate, incomplete
version, lost race, a rollout already running) fails the run with ``PromotionRefused``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from bookrec import rollout_rule
from bookrec.artifacts import ArtifactError
from bookrec.gate import ASK, ROLLOUT
from bookrec.registry import RegistryError
from bookrec.settings import get_settings
from tasks.approval import (
    expire_overdue_approvals,
    mark_awaiting,
    publish_approval_request,
    start_approval_run,
)
from tasks.registry import (
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
    refuse,
    smoke_test,
    write_champion_status,
)
from tasks.reload import run_reload

_SMOKE_DETAILS = ("answers_sha256", "golden_sha256", "latency_ms", "peak_rss_mb", "load_s")


def ask_for_approval(
    candidate: str, champion: dict[str, Any], fetched: dict[str, Any], report: dict[str, Any],
    verdict: dict[str, Any], actor: str,
) -> dict[str, Any]:
    """Start the waiting ``approval`` run, mark the candidate, record and publish the ask."""
    before = champion["pointer"]["version"] if champion["pointer"] else None
    details = {k: report.get(k) for k in _SMOKE_DETAILS}
    approval = start_approval_run({
        "candidate": candidate, "champion": champion, "reason": verdict["reason"],
        "manifest_sha256": fetched["manifest_sha256"], "details": details,
    })
    mark_awaiting(candidate, {**approval, "reason": verdict["reason"],
                              "champion_at_gate": before, "by": actor})
    record_decision(
        candidate=candidate, decision="awaiting_approval", reason=verdict["reason"],
        actor=actor, champion_before=before, champion_after=before,
        candidate_metrics=verdict["candidate_metrics"],
        champion_metrics=verdict["champion_metrics"], thresholds=verdict["thresholds"],
        decided_by="gate", flow_run_id=approval["flow_run_id"],
    )
    champion_report = None
    if before is not None:
        champion_report = smoke_test(fetch_version(before, champion["pointer"].get(
            "manifest_sha256")))
    publish_approval_request(candidate, before, verdict, approval, champion_report, report)
    return approval


def roll_out(
    candidate: str, before: str | None, verdict: dict[str, Any], spec: dict[str, Any],
    actor: str,
) -> dict[str, Any]:
    """Start the ``rollout`` run for ``candidate`` (refused if one runs), record the gate's
    ``rolling_out`` decision with that run's id, publish it; the run's id and address."""
    from tasks.rollout import running_rollout, start_rollout_run

    running = running_rollout()
    if running is not None:
        refuse(candidate, before, f"rollout {running['id']} of {running['candidate']} is "
               "running; a second one cannot start (`bookrec rollout --status`)", actor)
    started = start_rollout_run({"version": candidate, **spec, "smoke": False,
                                 "record_start": False})
    record_decision(
        candidate=candidate, decision=ROLLOUT, reason=verdict["reason"], actor=actor,
        champion_before=before, champion_after=before,
        candidate_metrics=verdict["candidate_metrics"],
        champion_metrics=verdict["champion_metrics"], thresholds=verdict["thresholds"],
        decided_by="gate", flow_run_id=started["flow_run_id"],
        online_figures={"spec": spec, "rollout_run": started},
    )
    return {**started, "spec": spec}


@flow(name="promote")
def promote_flow(version: str | None = None, require_approval: bool = False,
                 rollout: str | None = None) -> dict[str, Any]:
    """Gate ``version`` (default: the newest unpromoted candidate) and promote or reject it,
    or ask a human (a close call, a regressing reader segment, or ``require_approval``),
    or roll it out to live readers (``rollout``: a spec such as ``"interleave=0.5"``;
    default ``BOOKREC_ROLLOUT_DEFAULT``; ``"off"``: never).

    Returns ``{"candidate", "decision", "reason", "champion"}`` (plus ``reload`` and
    ``status_write``: "written", or why the new champion's status object was not; or
    ``approval``: the waiting run's id, UI address and deadline; or ``rollout``: the
    rollout run's id and address).
    """
    logger = get_run_logger()
    actor = current_actor()
    expire_overdue_approvals()
    champion = read_champion()
    before = champion["pointer"]["version"] if champion["pointer"] else None
    try:
        spec = rollout_rule.parse_spec(
            rollout if rollout is not None else get_settings().rollout_default)
    except rollout_rule.RuleConfigError as exc:
        refuse(version, before, str(exc), actor)
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
    verdict = judge_candidate(candidate_manifest, champion_manifest, report, require_approval,
                              roll_out=spec is not None and before is not None)
    if verdict["decision"] == ROLLOUT:
        started = roll_out(candidate, before, verdict, spec, actor)
        result = {"candidate": candidate, "decision": ROLLOUT, "reason": verdict["reason"],
                  "champion": before}
        publish_decision("promote", candidate, result, verdict)
        logger.info("candidate %s rolls out in flow run %s (%s)", candidate,
                    started["flow_run_id"], started["url"])
        return {**result, "rollout": started, "reload": None}
    if verdict["decision"] == ASK:
        approval = ask_for_approval(candidate, champion, fetched, report, verdict, actor)
        logger.info("candidate %s awaits approval in flow run %s (%s): %s", candidate,
                    approval["flow_run_id"], approval["url"], verdict["reason"])
        return {"candidate": candidate, "decision": ASK, "reason": verdict["reason"],
                "champion": before, "approval": approval, "reload": None}

    after = before
    reload = None
    status = None
    if verdict["decision"] == "promoted":
        details = {k: report.get(k) for k in _SMOKE_DETAILS}
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
        decided_by="gate",
    )
    result = {"candidate": candidate, "decision": verdict["decision"],
              "reason": verdict["reason"], "champion": after}
    publish_decision("promote", candidate, result, verdict)
    if after != before:
        announce_champion(candidate, "promoted", before, actor)
        reload = run_reload(candidate)
    logger.info("candidate %s %s: %s", candidate, verdict["decision"], verdict["reason"])
    return {**result, "reload": reload, "status_write": status}
