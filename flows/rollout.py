"""The rollout flow: judge a candidate by live readers, then promote it or roll it back.

Started by the promotion gate (its "roll out" outcome) or by hand (``bookrec rollout
VERSION``). It starts the variant in the registry (a share of readers sees a team-draft
interleaving of champion and candidate, a share the candidate alone) and signals serving
(the reload steps, which wait until every worker of every instance holds the candidate),
then bakes: every ``check_every_s`` it reads the online figures and
rolls back at once on an error-rate or latency breach. At the end of the baking period it
applies the rule of ``bookrec.rollout_rule`` (bootstrap intervals, Bonferroni over the
looks): promote, roll back, or extend by ``extend_minutes`` (at most ``max_extensions``
times). Promotion moves the champion by compare-and-swap from the champion the rollout
started with (with its history, status object, event and reload); a rollback leaves the
champion and marks the candidate rejected. Either way the rollout ends in the registry,
one row of ``promotions`` records the decision with the online figures, and the
``rollout-figures`` / ``rollout-decision`` artifacts show the figures per variant at
every check. If the flow fails midway, the rollout is ended (rolled back) before it
fails, so serving never keeps a half-judged variant.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from bookrec import rollout_rule
from bookrec.artifacts import ArtifactError
from bookrec.registry import RegistryError
from tasks.registry import (
    announce_champion,
    current_actor,
    fetch_version,
    mark_rejected,
    move_champion,
    read_champion,
    read_manifest,
    record_decision,
    refuse,
    smoke_test,
    write_champion_status,
)
from tasks.reload import run_reload
from tasks.rollout import (
    MAX_CHECKS_KEPT,
    breach,
    end_variant,
    figures_task,
    judge_rollout,
    publish_rollout,
    rollout_state,
    start_variant,
    summary,
)

PROMOTED, ROLLED_BACK, STOPPED = "promoted", "rolled_back", "stopped"
AUDIT_ROLLED_BACK = "rollout_rolled_back"


def _online(rollout: dict[str, Any], checks: list[dict[str, Any]],
            verdict: dict[str, Any] | None, rule: dict[str, Any]) -> dict[str, Any]:
    """What the audit row keeps: the rollout, the newest checks' figures, the verdict."""
    return {"rollout": rollout, "checks": checks[-MAX_CHECKS_KEPT:], "verdict": verdict,
            "rule": rollout_rule.RuleConfig(**rule).to_json()}


@flow(name="rollout", flow_run_name="rollout-{version}")
def rollout_flow(
    version: str,
    interleave: float = 0.5,
    canary: float = 0.0,
    bake_minutes: float = 30.0,
    check_every_s: float = 60.0,
    max_extensions: int = 2,
    extend_minutes: float | None = None,
    alpha: float = 0.05,
    min_readers: int = 200,
    min_informative: int = 30,
    min_requests: int = 200,
    max_error_rate: float = 0.02,
    max_error_excess: float = 0.01,
    max_p95_ms: float = 1000.0,
    max_p95_ratio: float = 2.0,
    bootstrap: int = 2000,
    smoke: bool = True,
    record_start: bool = True,
) -> dict[str, Any]:
    """Roll ``version`` out beside the champion and decide by the readers' response.

    ``interleave`` / ``canary``: shares of readers (stable hash) who see the interleaved
    list / the candidate alone. ``bake_minutes``: how long before the first decision;
    ``extend_minutes`` (default: ``bake_minutes``) each extension. The rule's thresholds
    are documented in ``bookrec.rollout_rule``. ``smoke``: verify and smoke-test the
    candidate first (the gate already did; it passes False). ``record_start``: record the
    ``rolling_out`` row (the gate records its own).

    Returns ``{"candidate", "decision" (promoted | rolled_back | stopped), "reason",
    "champion", "rollout_id", "verdict", "checks", "elapsed_s", "readers", "reload"}``.
    """
    logger = get_run_logger()
    actor = current_actor()
    rule = {"alpha": alpha, "min_readers": min_readers, "min_informative": min_informative,
            "max_extensions": max_extensions, "bootstrap": bootstrap,
            "min_requests": min_requests, "max_error_rate": max_error_rate,
            "max_error_excess": max_error_excess, "max_p95_ms": max_p95_ms,
            "max_p95_ratio": max_p95_ratio}
    champion = read_champion()
    before = champion["pointer"]["version"] if champion["pointer"] else None
    try:
        rollout_rule.RuleConfig(**rule)
        rollout_rule.check_shares(interleave, canary)
    except rollout_rule.RuleConfigError as exc:
        refuse(version, before, str(exc), actor)
    if before is None:
        refuse(version, before, "there is no champion to roll a candidate out against", actor)
    if version == before:
        refuse(version, before, f"{version} is already the champion", actor)
    fetched = None
    if smoke:
        fetched = fetch_version(version)
        report = smoke_test(fetched)
        if not report.get("ok"):
            refuse(version, before, f"{version} failed verification or its smoke test: "
                   f"{report.get('error')}", actor)
    try:
        rollout = start_variant(version, interleave, canary, actor)
    except RegistryError as exc:
        refuse(version, before, str(exc), actor)
    started = time.monotonic()
    logger.info("rollout %s of %s vs %s started (interleave %.2f, canary %.2f)",
                rollout["id"], version, before, interleave, canary)
    checks: list[dict[str, Any]] = []
    try:
        if record_start:
            record_decision(candidate=version, decision="rolling_out",
                            reason=f"rollout {rollout['id']} started: interleave "
                                   f"{interleave:.0%}, canary {canary:.0%}, bake "
                                   f"{bake_minutes:g} min", actor=actor,
                            champion_before=before, champion_after=before,
                            thresholds=rollout_rule.RuleConfig(**rule).to_json(),
                            decided_by="rollout", online_figures={"rollout": rollout})
        # Every worker holds the candidate before the bake's clock runs.
        run_reload(before, check_rollout=True, rollout=rollout["id"])
        verdict, figures, stopped = _bake(rollout, rule, checks, bake_minutes, extend_minutes,
                                          check_every_s, max_extensions, interleave, canary)
    except BaseException as exc:
        _abort(rollout, f"rollout flow failed: {type(exc).__name__}: {exc}", before)
        raise
    elapsed = time.monotonic() - started
    readers = {name: v.get("readers") for name, v in (figures.get("variants") or {}).items()}
    base = {"candidate": version, "rollout_id": rollout["id"], "checks": len(checks),
            "elapsed_s": round(elapsed, 1), "readers": readers}
    if stopped is not None:
        reason = f"stopped: {stopped.get('reason') or stopped.get('decision')}"
        logger.info("rollout %s was ended outside the flow: %s", rollout["id"], reason)
        outcome = {**base, "decision": STOPPED, "reason": reason, "champion": before,
                   "verdict": verdict, "reload": None}
        publish_rollout(rollout, checks, verdict, outcome)
        return outcome

    cand_manifest, champ_manifest = read_manifest(version), read_manifest(before)
    metrics = {"candidate_metrics": (cand_manifest or {}).get("metrics"),
               "champion_metrics": (champ_manifest or {}).get("metrics")}
    online = _online(rollout, checks, verdict, rule)
    thresholds = rollout_rule.RuleConfig(**rule).to_json()
    if verdict["decision"] == rollout_rule.PROMOTE:
        reason = f"rollout {rollout['id']}: {verdict['reason']}"
        try:
            pointer = move_champion(
                version, {"pointer": champion["pointer"], "etag": champion["etag"]},
                manifest_sha256=rollout.get("candidate_manifest_sha256"),
                reason=reason, actor=actor, action="promoted")
        except (RegistryError, ArtifactError) as exc:
            verdict = {**verdict, "decision": rollout_rule.ROLLBACK,
                       "reason": f"the rule said promote, but the champion did not move: {exc}"}
        else:
            end_variant(rollout["id"], PROMOTED, reason)
            details = {"rollout_id": rollout["id"],
                       "manifest_sha256": (fetched or {}).get("manifest_sha256")}
            status = write_champion_status(pointer, details)
            record_decision(candidate=version, decision="promoted", reason=reason, actor=actor,
                            champion_before=before, champion_after=version,
                            thresholds=thresholds, decided_by="rollout",
                            online_figures=online, **metrics)
            announce_champion(version, "promoted", before, actor)
            reload = run_reload(version, check_rollout=True, rollout=None)
            outcome = {**base, "decision": PROMOTED, "reason": reason, "champion": version,
                       "verdict": verdict, "reload": reload, "status_write": status}
            publish_rollout(rollout, checks, verdict, outcome)
            logger.info("rollout %s: %s promoted: %s", rollout["id"], version, reason)
            return outcome
    reason = f"rollout {rollout['id']} rolled back: {verdict['reason']}"
    end_variant(rollout["id"], ROLLED_BACK, reason)
    try:
        mark_rejected(version, reason, actor)
    except RegistryError as exc:  # it became the champion by another way meanwhile
        logger.warning("%s not marked rejected: %s", version, exc)
    record_decision(candidate=version, decision=AUDIT_ROLLED_BACK, reason=reason, actor=actor,
                    champion_before=before, champion_after=before, thresholds=thresholds,
                    decided_by="rollout", online_figures=online, **metrics)
    reload = run_reload(before, check_rollout=True, rollout=None)
    outcome = {**base, "decision": ROLLED_BACK, "reason": reason, "champion": before,
               "verdict": verdict, "reload": reload}
    publish_rollout(rollout, checks, verdict, outcome)
    logger.info("rollout %s: %s", rollout["id"], reason)
    return outcome


def _bake(rollout: dict[str, Any], rule: dict[str, Any], checks: list[dict[str, Any]],
          bake_minutes: float, extend_minutes: float | None, check_every_s: float,
          max_extensions: int, interleave: float, canary: float
          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Check every ``check_every_s`` until a breach, a stop, or a decision at a look.

    Returns (verdict, last figures, the ended record if the rollout was ended elsewhere).
    """
    logger = get_run_logger()
    step = max(0.5, float(check_every_s))
    look = 1
    deadline = time.monotonic() + max(0.0, bake_minutes) * 60.0
    extend_s = (bake_minutes if extend_minutes is None else extend_minutes) * 60.0
    while True:
        time.sleep(max(0.0, min(step, deadline - time.monotonic())))
        state = rollout_state(rollout["id"])
        figures = figures_task(rollout)
        checks.append(summary(figures))
        if state is None or state.get("ended_at"):
            return {"decision": rollout_rule.ROLLBACK, "reason": "ended outside the flow",
                    "breach": False, "arms": [], "details": {}}, figures, state or {}
        found = breach(figures, rule)
        if found is not None:
            logger.warning("rollout %s: %s", rollout["id"], found["reason"])
            return found, figures, None
        if time.monotonic() < deadline:
            publish_rollout(rollout, checks)
            continue
        verdict = judge_rollout(figures, rule, look, interleave, canary)
        publish_rollout(rollout, checks, verdict)
        logger.info("rollout %s look %d: %s", rollout["id"], look, verdict["reason"])
        if verdict["decision"] != rollout_rule.EXTEND or look > max_extensions:
            return verdict, figures, None
        look += 1
        deadline = time.monotonic() + extend_s


def _abort(rollout: dict[str, Any], reason: str, champion: str | None) -> None:
    """End the rollout after a failure (best effort) and signal serving."""
    logger = get_run_logger()
    try:
        end_variant.fn(rollout["id"], ROLLED_BACK, reason)
    except Exception as exc:  # noqa: BLE001 - reported; the original failure is raised
        logger.error("rollout %s could not be ended: %s", rollout["id"], exc)
        return
    try:
        from bookrec.settings import get_settings
        from tasks.reload import publish_signal

        publish_signal(get_settings(), champion)
    except Exception as exc:  # noqa: BLE001
        logger.warning("reload signal after the aborted rollout failed: %s", exc)

