"""Pipeline metrics for CloudWatch: rows ingested, training time, NDCG@20, promotion decisions.

Two sinks, chosen by ``settings.cloudwatch_metrics``: ``emf`` writes one Embedded
Metric Format JSON line (CloudWatch Logs turns it into metrics when the process's
output is shipped there, as the ECS tasks' logs are), ``api`` calls ``PutMetricData``
at ``settings.cloudwatch_endpoint_url`` (AWS, or moto's server in tests), ``off``
does nothing. Values are checked before anything is sent, so a NaN metric is an
error that names the metric rather than a silent gap in a dashboard.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from bookrec.evaluation import PRIMARY
from bookrec.settings import Settings

SINKS = ("emf", "api", "off")
UNITS = frozenset(
    {"Seconds", "Milliseconds", "Count", "Percent", "Bytes", "Megabytes", "None", "Count/Second"}
)
# PutMetricData takes up to 1000 values per call; small batches keep request bodies small.
_API_BATCH = 20
# One EMF document may declare at most 100 metrics.
_EMF_MAX_METRICS = 100


class MetricsError(ValueError):
    """A metric is malformed or the metrics sink is misconfigured."""


@dataclass(frozen=True)
class Metric:
    """One named, finite value with a CloudWatch unit."""

    name: str
    value: float
    unit: str = "None"

    def __post_init__(self) -> None:
        """Refuse names, values and units that CloudWatch would reject or misread."""
        if not self.name or len(self.name) > 255 or not self.name.isascii():
            raise MetricsError(f"metric name {self.name!r}: must be 1-255 ASCII characters")
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise MetricsError(f"metric {self.name}: value {self.value!r} is not a number")
        if not math.isfinite(self.value):
            raise MetricsError(f"metric {self.name}: value {self.value!r} is not finite")
        if self.unit not in UNITS:
            raise MetricsError(f"metric {self.name}: unit {self.unit!r} not in {sorted(UNITS)}")


def pipeline_metrics(
    *,
    rows_ingested: int | None = None,
    rows_quarantined: int | None = None,
    training_seconds: float | None = None,
    ndcg_at_20: float | None = None,
    decision: str | None = None,
    nightly_seconds: float | None = None,
    nightly_failed: bool | None = None,
) -> list[Metric]:
    """The pipeline's metrics for whichever facts are known (None means "not measured")."""
    metrics: list[Metric] = []
    if rows_ingested is not None:
        metrics.append(Metric("RowsIngested", rows_ingested, "Count"))
    if rows_quarantined is not None:
        metrics.append(Metric("RowsQuarantined", rows_quarantined, "Count"))
    if training_seconds is not None:
        metrics.append(Metric("TrainingSeconds", training_seconds, "Seconds"))
    if ndcg_at_20 is not None:
        metrics.append(Metric("NDCGAt20", ndcg_at_20, "None"))
    if decision is not None:
        if decision not in ("promoted", "rejected"):
            raise MetricsError(f"decision {decision!r}: expected 'promoted' or 'rejected'")
        metrics.append(Metric("ModelPromoted", int(decision == "promoted"), "Count"))
        metrics.append(Metric("ModelRejected", int(decision == "rejected"), "Count"))
    if nightly_seconds is not None:
        metrics.append(Metric("NightlySeconds", nightly_seconds, "Seconds"))
    if nightly_failed is not None:
        metrics.append(Metric("NightlyFailed", int(nightly_failed), "Count"))
        metrics.append(Metric("NightlySucceeded", int(not nightly_failed), "Count"))
    return metrics


def dimensions(settings: Settings) -> dict[str, str]:
    """Dimensions every pipeline metric carries, so environments never mix on one graph."""
    return {"Environment": settings.environment}


def emf_document(
    metrics: Iterable[Metric],
    *,
    namespace: str,
    dims: Mapping[str, str],
    timestamp_ms: int | None = None,
) -> dict[str, Any]:
    """One Embedded Metric Format document (the JSON CloudWatch Logs extracts metrics from)."""
    metrics = list(metrics)
    if not metrics:
        raise MetricsError("an EMF document needs at least one metric")
    if len(metrics) > _EMF_MAX_METRICS:
        raise MetricsError(f"{len(metrics)} metrics: EMF allows at most {_EMF_MAX_METRICS}")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise MetricsError(f"duplicate metric names in one document: {names}")
    clash = set(names) & set(dims)
    if clash:
        raise MetricsError(f"metric names clash with dimension names: {sorted(clash)}")
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [sorted(dims)],
                    "Metrics": [{"Name": m.name, "Unit": m.unit} for m in metrics],
                }
            ],
        }
    }
    document.update(dims)
    document.update({m.name: m.value for m in metrics})
    return document


def cloudwatch_client(settings: Settings) -> Any:
    """A boto3 CloudWatch client for the configured endpoint and region."""
    import boto3

    return boto3.client(
        "cloudwatch",
        endpoint_url=settings.cloudwatch_endpoint_url,
        region_name=settings.aws_region,
    )


def put_metric_data(
    metrics: Iterable[Metric],
    settings: Settings,
    *,
    client: Any = None,
    timestamp: datetime | None = None,
) -> int:
    """Send ``metrics`` with ``PutMetricData`` in small batches; returns how many were sent."""
    metrics = list(metrics)
    client = client or cloudwatch_client(settings)
    when = timestamp or datetime.now(UTC)
    dims = [{"Name": k, "Value": v} for k, v in sorted(dimensions(settings).items())]
    data = [
        {
            "MetricName": m.name,
            "Value": float(m.value),
            "Unit": m.unit,
            "Timestamp": when,
            "Dimensions": dims,
        }
        for m in metrics
    ]
    for start in range(0, len(data), _API_BATCH):
        client.put_metric_data(
            Namespace=settings.cloudwatch_namespace, MetricData=data[start : start + _API_BATCH]
        )
    return len(data)


def publish(
    metrics: Iterable[Metric], settings: Settings, *, stream: IO[str] | None = None
) -> dict[str, Any]:
    """Send ``metrics`` to the configured sink; returns what was done (sink, count, EMF line)."""
    metrics = list(metrics)
    sink = settings.cloudwatch_metrics
    if sink not in SINKS:
        raise MetricsError(f"BOOKREC_CLOUDWATCH_METRICS={sink!r}: expected one of {SINKS}")
    if sink == "off" or not metrics:
        return {"sink": sink, "count": 0}
    if sink == "api":
        return {"sink": sink, "count": put_metric_data(metrics, settings)}
    document = emf_document(
        metrics, namespace=settings.cloudwatch_namespace, dims=dimensions(settings)
    )
    line = json.dumps(document, separators=(",", ":"), sort_keys=True)
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()
    return {"sink": sink, "count": len(metrics), "line": line}


def _ingested_counts(report: Mapping[str, Any]) -> tuple[int, int]:
    """(rows loaded, rows quarantined) summed over the files of an ingest report."""
    files = report.get("files")
    if not isinstance(files, Mapping):
        raise MetricsError("ingest report: field 'files' is missing or not a mapping")
    loaded = quarantined = 0
    for kind, counts in files.items():
        try:
            loaded += int(counts["inserted"]) + int(counts["updated"]) + int(counts["unchanged"])
            quarantined += int(counts["quarantined"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MetricsError(f"ingest report: files.{kind} lacks a count ({exc})") from exc
    return loaded, quarantined


def stage_metrics(
    *,
    ingest_report: Mapping[str, Any] | None = None,
    train_result: Mapping[str, Any] | None = None,
    training_seconds: float | None = None,
    promote_result: Mapping[str, Any] | None = None,
    nightly_seconds: float | None = None,
    nightly_failed: bool | None = None,
) -> list[Metric]:
    """The pipeline metrics found in the stages' result dicts (absent stages send nothing)."""
    rows = quarantined = None
    if ingest_report is not None:
        rows, quarantined = _ingested_counts(ingest_report)
    ndcg = None
    if train_result is not None:
        value = (train_result.get("metrics") or {}).get(PRIMARY)
        ndcg = None if value is None else float(value)
    decision = None
    if promote_result is not None:
        raw = promote_result.get("decision")
        decision = raw if raw in ("promoted", "rejected") else None
    return pipeline_metrics(
        rows_ingested=rows,
        rows_quarantined=quarantined,
        training_seconds=training_seconds,
        ndcg_at_20=ndcg,
        decision=decision,
        nightly_seconds=nightly_seconds,
        nightly_failed=nightly_failed,
    )
