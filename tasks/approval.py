"""Prefect tasks for approvals of close calls: ask, show, start the waiting run, expire.

When the gate asks, the promote flow marks the candidate ``awaiting_approval`` in the
registry, publishes what a human needs to decide (metrics side by side, overall and per
reader segment, and five readers' lists before and after) and starts a separate
``approval`` flow run that waits for the answer. That run is not part of the promote or
nightly run, so a waiting approval holds no nightly concurrency slot: with an
``approval/<name>`` deployment it is a deployment run (which suspends, releasing its
infrastructure); without one it runs in a detached local process, paused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bookrec import audit
from bookrec.db import get_engine
from bookrec.registry import Registry
from bookrec.reports import SAMPLE_READERS, approval_markdown
from bookrec.settings import get_settings
from tasks.runs import launch_flow_run

APPROVAL_ENTRYPOINT = "flows/approval.py:approval_flow"


def deadline_after(seconds: float, now: datetime | None = None) -> str:
    """The ISO time an approval asked now expires."""
    return ((now or datetime.now(UTC)) + timedelta(seconds=seconds)).isoformat()


@task(name="start-approval-run", cache_policy=NO_CACHE)
def start_approval_run(parameters: dict[str, Any]) -> dict[str, Any]:
    """Create the ``approval`` flow run that waits for the answer: its id, UI address and
    deadline (``approval_timeout_s`` from now; the run gets the timeout and poll interval).

    Uses the ``approval`` deployment named like the current run's (default ``local``)
    when the server has it; otherwise runs the flow's entrypoint in a detached process
    with Prefect's own engine (``python -m prefect.flow_engine``), logging to the log dir.
    Never retried: a retry could start a second waiting run.
    """
    from prefect.runtime import deployment

    from flows.approval import approval_flow

    settings = get_settings()
    deadline = deadline_after(settings.approval_timeout_s)
    parameters = {**parameters, "deadline": deadline, "timeout_s": settings.approval_timeout_s,
                  "poll_s": settings.approval_poll_s}
    run = launch_flow_run(approval_flow, APPROVAL_ENTRYPOINT,
                          f"approval/{deployment.name or 'local'}", parameters,
                          f"approval-{parameters['candidate']}")
    return {**run, "deadline": deadline}


@task(name="mark-awaiting-approval")
def mark_awaiting(version: str, approval: dict[str, Any]) -> dict[str, Any]:
    """The candidate's registry status becomes ``awaiting_approval`` with ``approval``."""
    return Registry.from_settings(get_settings()).mark_awaiting_approval(version, approval)


def reader_lists(report: dict[str, Any] | None) -> dict[str, list[str]]:
    """The golden readers' lists (ISBNs) from a smoke report, first ``SAMPLE_READERS``."""
    answers = ((report or {}).get("answers") or {}).get("recommend") or {}
    return {user: [r["isbn"] for r in rows]
            for user, rows in list(answers.items())[:SAMPLE_READERS]}


@task(name="publish-approval-request")
def publish_approval_request(
    candidate: str, champion: str | None, verdict: dict[str, Any], approval: dict[str, Any],
    before_report: dict[str, Any] | None, after_report: dict[str, Any],
) -> str:
    """The approval page as a markdown artifact (key ``approval-request``); returns it."""
    text = approval_markdown(candidate, champion, verdict, approval,
                             reader_lists(before_report), reader_lists(after_report))
    create_markdown_artifact(text, key="approval-request",
                             description=f"approval needed for {candidate}")
    return text


def conclude_expired(version: str, status: dict[str, Any], reason: str) -> None:
    """Record an unanswered approval as rejected by "timeout" (status and audit row)."""
    settings = get_settings()
    registry = Registry.from_settings(settings)
    registry.mark_rejected(version, reason, by="timeout")
    champion = registry.champion_state().version
    audit.record_decision(
        get_engine(settings), candidate=version, decision="rejected", reason=reason,
        actor="timeout", champion_before=champion, champion_after=champion,
        decided_by="timeout", flow_run_id=status.get("flow_run_id"),
    )


def expire_overdue(now: datetime | None = None, grace_s: float = 60.0) -> list[str]:
    """Reject every approval whose deadline passed (plus ``grace_s`` for the waiting run
    to record it itself); returns the versions. A suspended run that times out is failed
    by the Prefect server without running our code, so this sweep records the outcome."""
    now = now or datetime.now(UTC)
    expired = []
    for version, status in Registry.from_settings(get_settings()).awaiting_approval().items():
        deadline = datetime.fromisoformat(status["deadline"])
        if now >= deadline + timedelta(seconds=grace_s):
            conclude_expired(version, status, f"no answer by {status['deadline']}: rejected")
            expired.append(version)
    return expired


@task(name="expire-overdue-approvals")
def expire_overdue_approvals() -> list[str]:
    """Task form of ``expire_overdue`` (the promote flow runs it first)."""
    return expire_overdue()
