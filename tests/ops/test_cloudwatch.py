"""Pipeline metrics: validation, the EMF line, and PutMetricData against moto's server."""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from bookrec import cloudwatch
from bookrec.cloudwatch import Metric, MetricsError
from bookrec.settings import Settings


@pytest.fixture
def cw_settings(moto_server: str, tmp_path) -> Settings:
    """Settings that send metrics to moto's CloudWatch in a namespace of their own."""
    return Settings(
        home=tmp_path,
        cloudwatch_metrics="api",
        cloudwatch_endpoint_url=moto_server,
        cloudwatch_namespace=f"bookrec-test-{uuid.uuid4().hex[:8]}",
        environment="ci",
    )


def _statistic(settings: Settings, name: str, stat: str = "Sum") -> float:
    client = boto3.client(
        "cloudwatch", endpoint_url=settings.cloudwatch_endpoint_url, region_name="us-east-1"
    )
    now = datetime.now(UTC)
    points = client.get_metric_statistics(
        Namespace=settings.cloudwatch_namespace,
        MetricName=name,
        Dimensions=[{"Name": "Environment", "Value": settings.environment}],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=60,
        Statistics=[stat],
    )["Datapoints"]
    assert points, f"no datapoints for {name}"
    return sum(p[stat] for p in points)


def test_pipeline_metrics_maps_facts_to_named_units():
    metrics = cloudwatch.pipeline_metrics(
        rows_ingested=1200, training_seconds=12.5, ndcg_at_20=0.031, decision="rejected"
    )
    by_name = {m.name: m for m in metrics}
    assert by_name["RowsIngested"] == Metric("RowsIngested", 1200, "Count")
    assert by_name["TrainingSeconds"].unit == "Seconds"
    assert by_name["NDCGAt20"].value == pytest.approx(0.031)
    assert by_name["ModelPromoted"].value == 0 and by_name["ModelRejected"].value == 1
    assert "NightlyFailed" not in by_name  # not measured means not sent


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "NDCGAt20", "value": math.nan}, "NDCGAt20: value nan is not finite"),
        ({"name": "X", "value": math.inf}, "not finite"),
        ({"name": "X", "value": "3"}, "is not a number"),
        ({"name": "X", "value": True}, "is not a number"),
        ({"name": "", "value": 1}, "1-255 ASCII"),
        ({"name": "X", "value": 1, "unit": "Parsecs"}, "unit 'Parsecs'"),
    ],
)
def test_bad_metrics_are_refused_with_their_name(kwargs, message):
    with pytest.raises(MetricsError, match=message.replace("(", r"\(")):
        Metric(**kwargs)


def test_unknown_decision_and_unknown_sink_are_refused(tmp_path):
    with pytest.raises(MetricsError, match="decision 'maybe'"):
        cloudwatch.pipeline_metrics(decision="maybe")
    settings = Settings(home=tmp_path, cloudwatch_metrics="statsd")
    with pytest.raises(MetricsError, match="BOOKREC_CLOUDWATCH_METRICS='statsd'"):
        cloudwatch.publish([Metric("X", 1)], settings)


def test_emf_line_follows_the_embedded_metric_format(tmp_path):
    settings = Settings(home=tmp_path, environment="ci", cloudwatch_namespace="bookrec")
    out = io.StringIO()
    result = cloudwatch.publish(
        cloudwatch.pipeline_metrics(rows_ingested=7, training_seconds=1.5), settings, stream=out
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and result["count"] == 2
    doc = json.loads(lines[0])
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "bookrec"
    assert directive["Dimensions"] == [["Environment"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "RowsIngested": "Count",
        "TrainingSeconds": "Seconds",
    }
    # Every declared metric and dimension is a top-level member with its value.
    assert doc["RowsIngested"] == 7 and doc["TrainingSeconds"] == 1.5
    assert doc["Environment"] == "ci"
    assert abs(doc["_aws"]["Timestamp"] / 1000 - datetime.now(UTC).timestamp()) < 60


def test_emf_refuses_duplicates_and_empty_documents():
    with pytest.raises(MetricsError, match="duplicate"):
        cloudwatch.emf_document([Metric("A", 1), Metric("A", 2)], namespace="n", dims={})
    with pytest.raises(MetricsError, match="at least one"):
        cloudwatch.emf_document([], namespace="n", dims={})
    with pytest.raises(MetricsError, match="clash"):
        cloudwatch.emf_document(
            [Metric("Environment", 1)], namespace="n", dims={"Environment": "x"}
        )


def test_off_sends_nothing(tmp_path):
    out = io.StringIO()
    settings = Settings(home=tmp_path, cloudwatch_metrics="off")
    assert cloudwatch.publish([Metric("A", 1)], settings, stream=out) == {"sink": "off", "count": 0}
    assert out.getvalue() == ""


def test_put_metric_data_reaches_moto(cw_settings: Settings):
    metrics = cloudwatch.pipeline_metrics(
        rows_ingested=1234,
        training_seconds=42.0,
        ndcg_at_20=0.0625,
        decision="promoted",
        nightly_failed=False,
    )
    result = cloudwatch.publish(metrics, cw_settings)
    assert result == {"sink": "api", "count": len(metrics)}
    assert _statistic(cw_settings, "RowsIngested") == 1234
    assert _statistic(cw_settings, "TrainingSeconds", "Maximum") == 42.0
    assert _statistic(cw_settings, "NDCGAt20", "Average") == pytest.approx(0.0625)
    assert _statistic(cw_settings, "ModelPromoted") == 1
    assert _statistic(cw_settings, "ModelRejected") == 0
    assert _statistic(cw_settings, "NightlyFailed") == 0


def test_more_metrics_than_one_batch_are_all_sent(cw_settings: Settings):
    metrics = [Metric(f"Custom{i:02d}", i, "Count") for i in range(45)]
    assert cloudwatch.put_metric_data(metrics, cw_settings) == 45
    client = cloudwatch.cloudwatch_client(cw_settings)
    names = {
        m["MetricName"]
        for page in client.get_paginator("list_metrics").paginate(
            Namespace=cw_settings.cloudwatch_namespace
        )
        for m in page["Metrics"]
    }
    assert names == {f"Custom{i:02d}" for i in range(45)}
    assert _statistic(cw_settings, "Custom44") == 44
