"""Prefect tasks for the model registry: thin wrappers over bookrec.registry, gate, smoke, audit.

Tasks that touch the artifact store or PostgreSQL retry transient failures
(``tasks.retries``); a refusal (lost race, missing version, tampered files) fails at once, because
it would fail the same way again. The compare-and-swap itself is never retried by
Prefect: a lost race is a decision for a human or the next run.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from pathlib import Path
from typing import Any, NoReturn

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bookrec import audit, gate, reports, smoke
from bookrec.artifacts import ArtifactError
from bookrec.db import get_engine
from bookrec.registry import ChampionState, Registry, RegistryError
from bookrec.settings import get_settings
from tasks.retries import IO_RETRIES

MODEL_CACHE = "model-cache"


class PromotionRefused(RuntimeError):
    """The promotion or rollback was refused; ``payload`` is what the CLI prints."""

    def __init__(self, payload: dict[str, Any]):
        super().__init__(payload["reason"])
        self.payload = payload


def _registry() -> Registry:
    return Registry.from_settings(get_settings())


def current_actor() -> str:
    """Who is acting: the Prefect flow run (when there is one) and the OS user and host."""
    from prefect.runtime import flow_run

    who = f"{getpass.getuser()}@{socket.gethostname()}"
    name = flow_run.name
    return f"{flow_run.flow_name}/{name} ({who})" if name else who


@task(name="read-champion", **IO_RETRIES)
def read_champion() -> dict[str, Any]:
    """The champion pointer with its ETag: ``{"pointer": ... | None, "etag": ... | None}``."""
    state = _registry().champion_state()
    return {"pointer": state.pointer, "etag": state.etag}


@task(name="choose-candidate", **IO_RETRIES)
def choose_candidate(version: str | None) -> str:
    """``version`` if it is a complete version, else the newest never promoted nor rejected."""
    registry = _registry()
    if version is None:
        found = registry.next_candidate()
        if found is None:
            raise RegistryError("no candidate: every complete version was promoted or rejected")
        return found
    # Present but altered is not a refusal: the verification step rejects it with the reason.
    with contextlib.suppress(ArtifactError):
        registry.check_complete(version)
    status = registry.status(version) or {}
    if status.get("status") == "promoted":
        raise RegistryError(
            f"{version} was promoted before; use `bookrec rollback {version}` to return to it"
        )
    if status.get("status") == "awaiting_approval":
        raise RegistryError(
            f"{version} is awaiting approval (flow run {status.get('flow_run_id')}); "
            f"answer with `bookrec approve {version}` or `bookrec reject {version} --reason ...`"
        )
    return version


@task(name="choose-rollback-target", **IO_RETRIES)
def choose_rollback_target(version: str | None) -> dict[str, Any]:
    """The rollback target and the manifest sha256 recorded when it was promoted."""
    registry = _registry()
    target = registry.rollback_target(version)
    status = registry.status(target) or {}
    return {
        "version": target,
        "manifest_sha256": status.get("manifest_sha256"),
        "answers_sha256": (status.get("details") or {}).get("answers_sha256"),
        "golden_sha256": (status.get("details") or {}).get("golden_sha256"),
    }


@task(name="read-manifest", **IO_RETRIES)
def read_manifest(version: str | None) -> dict[str, Any] | None:
    """A version's manifest from the store (None for no version)."""
    return _registry().manifest(version) if version else None


@task(name="fetch-version", **IO_RETRIES)
def fetch_version(version: str, expected_manifest_sha256: str | None = None) -> dict[str, Any]:
    """Download and verify a version into the local model cache.

    Returns ``{"path": ..., "manifest_sha256": ..., "error": None}``, or ``path`` None and
    the verification error (a tampered or incomplete version is a verdict, not a crash).
    """
    settings = get_settings()
    registry = Registry.from_settings(settings)
    try:
        path = registry.fetch_version(
            version,
            settings.home_dir / MODEL_CACHE,
            expected_manifest_sha256=expected_manifest_sha256,
        )
    except (ArtifactError, RegistryError) as exc:
        return {"path": None, "manifest_sha256": None, "error": f"{type(exc).__name__}: {exc}"}
    from bookrec.artifacts import manifest_sha256

    return {"path": str(path), "manifest_sha256": manifest_sha256(path), "error": None}


@task(name="smoke-test")
def smoke_test(fetched: dict[str, Any], isolated: bool = True) -> dict[str, Any]:
    """Load the fetched version with the serving loader and answer the golden queries: in a
    separate process (a new candidate may crash or exhaust memory), or here for a version
    that passed the same test when it was promoted (``isolated=False``, the rollback)."""
    if fetched.get("path") is None:
        return {"ok": False, "error": f"verification failed: {fetched.get('error')}"}
    if isolated:
        report = smoke.run_smoke(fetched["path"])
    else:
        report = smoke.smoke(Path(fetched["path"]), smoke.DEFAULT_GOLDEN)
    report["golden_sha256"] = smoke.answers_sha256(smoke.DEFAULT_GOLDEN)
    return report


@task(name="judge-candidate")
def judge_candidate(
    candidate_manifest: dict[str, Any],
    champion_manifest: dict[str, Any] | None,
    smoke_report: dict[str, Any],
    require_approval: bool = False,
    roll_out: bool = False,
) -> dict[str, Any]:
    """The gate's verdict (``bookrec.gate.judge``) under the configured thresholds;
    ``roll_out`` asks for online judgement (the ``rolling_out`` outcome) on a clean pass."""
    thresholds = gate.Thresholds.from_mapping(get_settings().gate_thresholds)
    return gate.judge(candidate_manifest, champion_manifest, smoke_report, thresholds,
                      require_approval=require_approval, roll_out=roll_out)


@task(name="move-champion-pointer", **IO_RETRIES)
def move_champion(
    version: str,
    champion: dict[str, Any],
    *,
    manifest_sha256: str | None,
    reason: str,
    actor: str,
    action: str,
) -> dict[str, Any]:
    """Compare-and-swap the pointer from the ``champion`` state read earlier to ``version``.

    Retried on transient failures: a retry that finds the pointer already naming this
    version and manifest (the first attempt landed) succeeds. A concurrent change raises
    ``PromotionConflict`` (never retried).
    """
    return _registry().swap_champion(
        version,
        by=actor,
        reason=reason,
        expected=ChampionState(champion["pointer"], champion["etag"]),
        manifest_sha256=manifest_sha256,
        action=action,
    )


@task(name="record-champion-status", **IO_RETRIES)
def record_champion_status(
    pointer: dict[str, Any], details: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Write the new champion's status object; retried on its own, never redoing the swap."""
    return _registry().record_champion_status(pointer, details=details)


def write_champion_status(pointer: dict[str, Any], details: dict[str, Any] | None = None) -> str:
    """Run ``record_champion_status`` after a swap; its failure is reported, not raised,
    because the promotion has happened (the pointer, with its history, is the truth)."""
    state = record_champion_status(pointer, details, return_state=True)
    if state.is_completed():
        return "written"
    return f"failed: {state.result(raise_on_failure=False)}"


@task(name="mark-rejected", **IO_RETRIES)
def mark_rejected(version: str, reason: str, actor: str) -> dict[str, Any]:
    """Leave the rejected version in the store with a status object saying why."""
    return _registry().mark_rejected(version, reason, by=actor)


@task(name="record-decision", **IO_RETRIES)
def record_decision(
    *,
    candidate: str | None,
    decision: str,
    reason: str,
    actor: str,
    champion_before: str | None,
    champion_after: str | None,
    candidate_metrics: dict[str, Any] | None = None,
    champion_metrics: dict[str, Any] | None = None,
    thresholds: dict[str, Any] | None = None,
    decided_by: str | None = None,
    flow_run_id: str | None = None,
    online_figures: dict[str, Any] | None = None,
) -> int:
    """Append the decision to the ``promotions`` audit table; returns the row id.

    ``flow_run_id`` defaults to the current Prefect flow run; ``online_figures`` is a
    rollout's (the figures its rule judged).
    """
    from prefect.runtime import flow_run

    settings = get_settings()
    return audit.record_decision(
        get_engine(settings),
        candidate=candidate,
        decision=decision,
        reason=reason,
        actor=actor,
        champion_before=champion_before,
        champion_after=champion_after,
        candidate_metrics=candidate_metrics,
        champion_metrics=champion_metrics,
        thresholds=thresholds,
        decided_by=decided_by,
        flow_run_id=flow_run_id or flow_run.id,
        online_figures=online_figures,
    )


def refuse(
    version: str | None, champion: str | None, reason: str, actor: str, key: str = "candidate"
) -> NoReturn:
    """Record the refusal (with no candidate when it names no version) and fail the run
    with ``PromotionRefused``; ``key`` names the version in the payload."""
    record_decision(candidate=version, decision="refused", reason=reason, actor=actor,
                    champion_before=champion, champion_after=champion)
    raise PromotionRefused(
        {key: version, "decision": "refused", "reason": reason, "champion": champion}
    )


@task(name="publish-decision")
def publish_decision(
    kind: str, version: str, result: dict[str, Any], verdict: dict[str, Any] | None = None
) -> None:
    """The decision (markdown) and the candidate-vs-champion table as Prefect artifacts."""
    create_markdown_artifact(reports.decision_markdown(kind, version, result, verdict),
                             key=f"{kind}-decision",
                             description=f"{kind} decision for {version}")
    if verdict and verdict["table"]:
        create_table_artifact(verdict["table"], key=f"{kind}-candidate-vs-champion",
                              description=f"{version} vs the champion at decision time")


@task(name="announce-champion")
def announce_champion(version: str, action: str, previous: str | None, actor: str) -> None:
    """Emit the ``bookrec.model.promoted`` Prefect event (automations can react to it)."""
    from prefect.events import emit_event

    emit_event(
        event="bookrec.model.promoted",
        resource={"prefect.resource.id": f"bookrec.model.{version}",
                  "prefect.resource.name": version},
        payload={"version": version, "action": action, "previous": previous, "by": actor},
    )
