"""Prefect tasks for operations: publishing the pipeline's metrics to CloudWatch."""

from __future__ import annotations

from typing import Any

from prefect import task

from bookrec import cloudwatch
from bookrec.settings import get_settings
from tasks.retries import IO_RETRIES


@task(name="publish-pipeline-metrics", **IO_RETRIES)
def publish_pipeline_metrics(
    ingest_report: dict | None = None,
    train_result: dict | None = None,
    training_seconds: float | None = None,
    promote_result: dict | None = None,
    nightly_seconds: float | None = None,
    nightly_failed: bool | None = None,
) -> dict[str, Any]:
    """Turn the stages' results into CloudWatch metrics and send them to the configured sink."""
    metrics = cloudwatch.stage_metrics(
        ingest_report=ingest_report,
        train_result=train_result,
        training_seconds=training_seconds,
        promote_result=promote_result,
        nightly_seconds=nightly_seconds,
        nightly_failed=nightly_failed,
    )
    return cloudwatch.publish(metrics, get_settings())
