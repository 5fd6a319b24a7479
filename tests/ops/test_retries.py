"""The one retry policy: transient failures are retried, everything else fails at once."""

from __future__ import annotations

import botocore.exceptions
import psycopg2
import pytest
import redis.exceptions
import requests
import sqlalchemy as sa
from prefect import flow, task

from bookrec.artifacts import ArtifactError
from bookrec.cloudwatch import MetricsError
from bookrec.registry import PromotionConflict, RegistryError
from bookrec.sources import IngestFileError
from bookrec.store import ObjectNotFound, PreconditionFailed, StoreError
from tasks.reload import InstanceRefused
from tasks.retries import io_retries, is_transient


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutMetricData",
    )


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("reset"),
        TimeoutError("slow"),
        requests.ConnectionError("refused"),
        StoreError("s3: InternalError"),
        sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        psycopg2.OperationalError("server closed the connection"),
        redis.exceptions.ConnectionError("refused"),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        _client_error("Throttling", 400),
        _client_error("InternalFailure", 500),
    ],
    ids=type,
)
def test_transient_failures(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        None,
        IngestFileError("bx-books.csv", "is empty"),
        MetricsError("nan"),
        RegistryError("no candidate"),
        PromotionConflict("lost the race"),
        ArtifactError("tampered"),
        ObjectNotFound("gone"),
        PreconditionFailed("changed"),
        InstanceRefused("HTTP 401"),
        FileNotFoundError("x"),
        PermissionError("denied"),
        ValueError("bad"),
        _client_error("AccessDenied", 403),
    ],
    ids=type,
)
def test_permanent_failures(exc):
    assert not is_transient(exc)


def test_a_task_retries_a_transient_failure_and_not_a_permanent_one(prefect_harness):
    errors = {"transient": ConnectionError, "permanent": MetricsError}
    calls: list[str] = []

    @task(**io_retries(retries=2, first_delay_s=0))
    def flaky(kind: str) -> str:
        calls.append(kind)
        if len(calls) < 3:
            raise errors[kind]("boom")
        return "done"

    @flow
    def run(kind: str) -> str:
        return flaky(kind)

    assert run("transient") == "done" and calls == ["transient"] * 3
    calls.clear()
    with pytest.raises(MetricsError):
        run("permanent")
    assert calls == ["permanent"]
