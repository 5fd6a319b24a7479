"""Prefect tasks of a rollout: start and end the variant in the registry, read its online
figures, judge them by ``bookrec.rollout_rule``, publish them, and start a rollout run.

Thin wrappers: the registry (``Registry.start_rollout`` / ``end_rollout``), the figures
(``bookrec.rollout.figures``, the only SQL) and the rule are domain code. Starting or
ending a rollout is a compare-and-swap in the registry and is never retried by Prefect
when refused; reading figures retries transient database failures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from bookrec import reports, rollout_rule
from bookrec.db import get_engine
from bookrec.registry import Registry
from bookrec.settings import get_settings
from tasks.retries import IO_RETRIES
from tasks.runs import launch_flow_run

ROLLOUT_ENTRYPOINT = "flows/rollout.py:rollout_flow"
MAX_CHECKS_KEPT = 200  # checks kept in the audit row and the artifact (the newest)


def _registry() -> Registry:
    return Registry.from_settings(get_settings())


@task(name="start-rollout", cache_policy=NO_CACHE)
def start_variant(candidate: str, interleave: float, canary: float, actor: str) -> dict[str, Any]:
    """Start serving ``candidate`` beside the champion (``Registry.start_rollout``): the
    rollout record. Refused (``RolloutRunning`` ...) if another rollout runs."""
    from prefect.runtime import flow_run

    return _registry().start_rollout(candidate, interleave=interleave, canary=canary,
                                     started_by=actor, flow_run_id=flow_run.id)


@task(name="running-rollout", cache_policy=NO_CACHE, **IO_RETRIES)
def running_rollout() -> dict[str, Any] | None:
    """The running rollout's record, or None."""
    return _registry().current_rollout()


@task(name="end-rollout", cache_policy=NO_CACHE, **IO_RETRIES)
def end_variant(rollout_id: str, decision: str, reason: str) -> dict[str, Any]:
    """End the rollout (the champion is not moved here); idempotent, so retried."""
    return _registry().end_rollout(rollout_id, decision, reason)


@task(name="rollout-state", cache_policy=NO_CACHE, **IO_RETRIES)
def rollout_state(rollout_id: str) -> dict[str, Any] | None:
    """The rollout's record if it is still the running one, else its ended record."""
    registry = _registry()
    current = registry.current_rollout()
    if current is not None and current.get("id") == rollout_id:
        return current
    return registry.rollout(rollout_id)


def read_figures(rollout: dict[str, Any]) -> dict[str, Any]:
    """The rollout's online figures now (``bookrec.rollout.figures``)."""
    from bookrec import rollout as online_rollout

    return online_rollout.figures(get_engine(get_settings()), rollout)


@task(name="read-rollout-figures", cache_policy=NO_CACHE, **IO_RETRIES)
def figures_task(rollout: dict[str, Any]) -> dict[str, Any]:
    """Task form of ``read_figures``."""
    return read_figures(rollout)


def summary(figures: dict[str, Any], at: str | None = None) -> dict[str, Any]:
    """The figures without the per-reader arrays (what the audit row and artifact keep)."""
    readers = figures.get("readers") or {}
    inter = readers.get("interleave") or {}
    credits = {"champion": sum(inter.get("champion") or []),
               "candidate": sum(inter.get("candidate") or [])}
    return {"at": at or datetime.now(UTC).isoformat(), "variants": figures.get("variants") or {},
            "interleave_credits": credits}


@task(name="judge-rollout", cache_policy=NO_CACHE)
def judge_rollout(figures: dict[str, Any], rule: dict[str, Any], look: int, interleave: float,
                  canary: float) -> dict[str, Any]:
    """The rule's verdict at ``look`` (promote, rollback or extend) with each arm's test."""
    cfg = rollout_rule.RuleConfig(**rule)
    return rollout_rule.judge(figures, cfg, look=look, interleave=interleave,
                              canary=canary).to_json()


def breach(figures: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any] | None:
    """A rollback verdict (JSON) if the candidate breaches the error or latency limits."""
    found = rollout_rule.check_breach(figures, rollout_rule.RuleConfig(**rule))
    return found.to_json() if found else None


@task(name="publish-rollout")
def publish_rollout(rollout: dict[str, Any], checks: list[dict[str, Any]],
                    verdict: dict[str, Any] | None = None,
                    outcome: dict[str, Any] | None = None) -> None:
    """The rollout page as a markdown artifact: key ``rollout-figures`` while it runs (one
    version per check), ``rollout-decision`` at the end."""
    text = reports.rollout_markdown(rollout, checks[-MAX_CHECKS_KEPT:], verdict, outcome)
    key = "rollout-decision" if outcome else "rollout-figures"
    what = f"decision on {rollout['candidate']}" if outcome else (
        f"figures of {rollout['candidate']} at check {len(checks)}")
    create_markdown_artifact(text, key=key, description=f"rollout {what}")


def launch_run(parameters: dict[str, Any], deployment_name: str | None = None) -> dict[str, Any]:
    """Start a ``rollout`` flow run that outlives the caller: its id, UI address and how.

    Uses the ``rollout/<deployment_name>`` deployment (default: the current run's
    deployment name, else ``local``) when the server has it, so the run goes to a worker;
    otherwise creates the run and executes it in a detached process with Prefect's own
    engine, logging to ``<home>/logs/rollout-<run id>.log`` (as the approval run does).
    """
    from prefect.runtime import deployment

    from flows.rollout import rollout_flow

    name = f"rollout/{deployment_name or deployment.name or 'local'}"
    return launch_flow_run(rollout_flow, ROLLOUT_ENTRYPOINT, name, parameters,
                           f"rollout-{parameters['version']}")


@task(name="start-rollout-run", cache_policy=NO_CACHE)
def start_rollout_run(parameters: dict[str, Any]) -> dict[str, Any]:
    """Task form of ``launch_run`` (the promote flow's "roll out" outcome). Never retried:
    a retry could start a second rollout run (which the registry would refuse)."""
    return launch_run(parameters)
