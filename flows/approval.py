"""The approval flow: wait for a human's answer on a close call, then promote or reject.

Started by the promote flow when the gate asks (never as its subflow, so it holds no
nightly slot). It waits with an input form in the Prefect UI (approve or reject, a
reason, who answers): suspended when it runs from a deployment (the worker's
infrastructure is released and the run is started again once answered), paused in its
own process otherwise. ``bookrec approve`` / ``bookrec reject`` answer the same form.
Approving moves the champion by compare-and-swap from the champion the gate saw, so of
two approvals of two candidates only the first can win; the other is refused. No answer
within ``approval_timeout_s`` means rejected.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment
from pydantic import Field

from bookrec.artifacts import ArtifactError
from bookrec.registry import RegistryError
from tasks.approval import conclude_expired
from tasks.registry import (
    announce_champion,
    mark_rejected,
    move_champion,
    publish_decision,
    read_champion,
    record_decision,
    refuse,
    write_champion_status,
)
from tasks.reload import run_reload


class Answer(RunInput):
    """The approval form."""

    decision: Literal["approve", "reject"] = Field(description="approve or reject the candidate")
    reason: str = Field("", description="why (required to reject)")
    approver: str = Field("ui", description="who answers")


def wait_for_answer(timeout_s: float, poll_s: float) -> Answer:
    """Suspend (deployment runs) or pause (a local process) until answered or timed out."""
    timeout = max(1, int(timeout_s))
    if deployment.id:
        return suspend_flow_run(wait_for_input=Answer, timeout=timeout, key="approval")
    poll = max(1, int(poll_s))
    return pause_flow_run(wait_for_input=Answer, timeout=timeout, poll_interval=poll,
                          key="approval")


@flow(name="approval")
def approval_flow(
    candidate: str,
    champion: dict[str, Any],
    manifest_sha256: str,
    reason: str,
    deadline: str,
    timeout_s: float,
    poll_s: float = 10.0,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Wait for the answer on ``candidate``; ``champion`` is the pointer state the gate saw.

    Returns ``{"candidate", "decision", "reason", "champion", "decided_by"}``.
    """
    logger = get_run_logger()
    before = champion["pointer"]["version"] if champion.get("pointer") else None
    try:
        answer = wait_for_answer(timeout_s, poll_s)
    except FlowPauseTimeout:
        why = f"no answer by {deadline}: rejected"
        conclude_expired(candidate, {"flow_run_id": _run_id()}, why)
        logger.info("candidate %s: %s", candidate, why)
        return {"candidate": candidate, "decision": "rejected", "reason": why,
                "champion": before, "decided_by": "timeout"}
    who = answer.approver or "ui"
    said = answer.reason or "(no reason given)"
    if answer.decision == "reject":
        why = f"rejected by {who}: {said}"
        mark_rejected(candidate, why, who)
        record_decision(candidate=candidate, decision="rejected", reason=why, actor=who,
                        champion_before=before, champion_after=before, decided_by=who)
        result = {"candidate": candidate, "decision": "rejected", "reason": why,
                  "champion": before}
        publish_decision("approval", candidate, result)
        return {**result, "decided_by": who}
    why = f"approved by {who}: {said} (gate: {reason})"
    try:
        pointer = move_champion(candidate, champion, manifest_sha256=manifest_sha256,
                                reason=why, actor=who, action="promoted")
    except (RegistryError, ArtifactError) as exc:
        why = f"approved by {who} but not promoted: {exc}"
        mark_rejected(candidate, why, who)
        now = read_champion()["pointer"]
        refuse(candidate, now["version"] if now else None, why, who)
    status = write_champion_status(pointer, details)
    record_decision(candidate=candidate, decision="promoted", reason=why, actor=who,
                    champion_before=before, champion_after=candidate, decided_by=who)
    result = {"candidate": candidate, "decision": "promoted", "reason": why,
              "champion": candidate}
    publish_decision("approval", candidate, result)
    announce_champion(candidate, "promoted", before, who)
    reload = run_reload(candidate)
    logger.info("candidate %s promoted: %s", candidate, why)
    return {**result, "decided_by": who, "reload": reload, "status_write": status}


def _run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.id
