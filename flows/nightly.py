"""The nightly flow: ingest -> train -> promote (each a subflow) -> reload, then metrics.

Scheduled at 02:00 UTC by prefect.yaml with a deployment concurrency limit of 1, so two
nightly runs never overlap. Without a ``source`` it skips ingest and trains on what
PostgreSQL already holds (ratings posted through the API since the last run). A promotion
reloads serving itself (and emits the event that triggers the reload deployment);
the nightly flow signals again only if that reload did not succeed.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.ingest import ingest_flow
from flows.promote import promote_flow
from flows.train import Baseline, train_flow
from tasks.ops import publish_pipeline_metrics
from tasks.reload import run_reload


def _run_name() -> str:
    """Name a run after its source and the day it was due, e.g. ``nightly-sample-2026-11-26``."""
    source = (flow_run.get_parameters() or {}).get("source")
    label = str(source).rstrip("/").rsplit("/", 1)[-1] if source else "db-snapshot"
    due = flow_run.get_scheduled_start_time()
    return f"nightly-{label}-{due:%Y-%m-%d}"


@flow(name="nightly", flow_run_name=_run_name)
def nightly_flow(
    source: str | None = None,
    layout: Literal["auto", "original", "kaggle"] = "auto",
    baselines: list[Baseline] | None = None,
) -> dict[str, Any]:
    """Refresh the data, train a candidate, promote it if it passes the gate, reload serving.

    ``source`` is a folder or ``s3://`` prefix of Book-Crossing CSVs in ``layout``; None
    trains on the current database. ``baselines`` are evaluated next to the candidate;
    the default is only ``most_popular``, the one the promotion gate compares a first
    model against (the train deployment's default evaluates all four for the report).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    try:
        report = ingest_flow(source=source, layout=layout) if source else None
        if report is None:
            logger.info("No source given: training on the ratings already in PostgreSQL")
        train_started = time.perf_counter()
        trained = train_flow(baselines=baselines or ["most_popular"])
        training_seconds = time.perf_counter() - train_started
        decision = promote_flow(version=trained["version"])
        reloaded = decision.get("reload")
        if decision["decision"] == "promoted" and (reloaded or {}).get("status") != "ok":
            # The promotion's own reload did not reach serving: signal once more. Like the
            # promotion, report a failure rather than raise: the pointer has moved and
            # serving instances poll it.
            reloaded = run_reload(decision["champion"])
        logger.info(
            "Candidate %s %s: %s", trained["version"], decision["decision"], decision["reason"]
        )
    except Exception:
        # Count the failure for the CloudWatch alarm, then fail the run with the original error.
        publish_pipeline_metrics(
            nightly_seconds=time.perf_counter() - started, nightly_failed=True, return_state=True
        )
        raise
    publish_pipeline_metrics(
        ingest_report=report,
        train_result=trained,
        training_seconds=training_seconds,
        promote_result=decision,
        nightly_seconds=time.perf_counter() - started,
        nightly_failed=False,
    )
    return {
        "source": source,
        "ingest": report,
        "version": trained["version"],
        "metrics": trained.get("metrics"),
        "decision": decision["decision"],
        "reason": decision["reason"],
        "champion": decision["champion"],
        "reload": reloaded,
        "seconds": round(time.perf_counter() - started, 3),
    }
