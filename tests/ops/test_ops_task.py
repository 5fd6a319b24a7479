"""The metrics task: stage results in, CloudWatch datapoints out (moto over HTTP)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from prefect.states import Failed

from bookrec import cloudwatch
from bookrec.cloudwatch import MetricsError
from bookrec.settings import get_settings
from tasks.ops import publish_pipeline_metrics
from tasks.retries import retry_transient

INGEST_REPORT = {
    "files": {
        "books": {
            "rows_read": 12,
            "inserted": 10,
            "updated": 1,
            "unchanged": 0,
            "merged": 0,
            "quarantined": 1,
            "reasons": {"bad_isbn": 1},
        },
        "ratings": {
            "rows_read": 40,
            "inserted": 30,
            "updated": 0,
            "unchanged": 5,
            "merged": 2,
            "quarantined": 3,
            "reasons": {},
        },
    },
    "duration_s": 0.5,
}


def test_stage_metrics_reads_the_stage_results():
    metrics = cloudwatch.stage_metrics(
        ingest_report=INGEST_REPORT,
        train_result={"version": "v1", "metrics": {"ndcg@20": 0.05, "recall@20": 0.1}},
        training_seconds=3.0,
        promote_result={"candidate": "v1", "decision": "promoted"},
    )
    values = {m.name: m.value for m in metrics}
    assert values == {
        "RowsIngested": 46,
        "RowsQuarantined": 4,
        "TrainingSeconds": 3.0,
        "NDCGAt20": 0.05,
        "ModelPromoted": 1,
        "ModelRejected": 0,
    }


def test_stage_metrics_without_an_evaluation_and_undecided_promotions():
    # A training run without evaluation records no NDCG@20: nothing is sent for it.
    assert cloudwatch.stage_metrics(train_result={"metrics": {}}) == []
    # A refused promotion (no decision either way) is not counted as a rejection.
    assert cloudwatch.stage_metrics(promote_result={"decision": "refused"}) == []


def test_malformed_ingest_report_names_the_field():
    with pytest.raises(MetricsError, match="'files'"):
        cloudwatch.stage_metrics(ingest_report={"duration_s": 1})
    with pytest.raises(MetricsError, match=r"files\.ratings lacks a count"):
        cloudwatch.stage_metrics(ingest_report={"files": {"ratings": {"inserted": 1}}})


def test_task_retries_service_errors_but_not_malformed_metrics():
    assert retry_transient(None, None, Failed(data=ConnectionError("reset"))) is True
    assert retry_transient(None, None, Failed(data=MetricsError("nan"))) is False


def test_task_publishes_to_cloudwatch(moto_server: str, monkeypatch: pytest.MonkeyPatch):
    namespace = f"bookrec-task-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BOOKREC_CLOUDWATCH_METRICS", "api")
    monkeypatch.setenv("BOOKREC_CLOUDWATCH_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("BOOKREC_CLOUDWATCH_NAMESPACE", namespace)
    get_settings.cache_clear()
    try:
        environment = get_settings().environment
        result = publish_pipeline_metrics.fn(
            ingest_report=INGEST_REPORT, nightly_seconds=61.0, nightly_failed=True
        )
    finally:
        get_settings.cache_clear()
    assert result == {"sink": "api", "count": 5}
    client = boto3.client("cloudwatch", endpoint_url=moto_server, region_name="us-east-1")
    now = datetime.now(UTC)
    points = client.get_metric_statistics(
        Namespace=namespace,
        MetricName="NightlyFailed",
        Dimensions=[{"Name": "Environment", "Value": environment}],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    assert sum(p["Sum"] for p in points) == 1
