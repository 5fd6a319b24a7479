"""Prefect tasks for operations: publishing the pipeline's metrics to CloudWatch."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from bookrec import cloudwatch
from bookrec.settings import get_settings


def _retry_unless_malformed(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network and service failures; a malformed metric fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), cloudwatch.MetricsError)


@task(
    name="publish-pipeline-metrics",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.3,
    retry_condition_fn=_retry_unless_malformed,
)
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
