"""Which failures are transient, and the one retry policy of the tasks that do I/O.

A transient failure (a dropped connection, a timeout, a throttled or failing AWS service,
an S3 or database hiccup) may pass on the next try. Everything else fails the same way
again and is never retried: a bad file, a malformed metric, a refusal (a lost race, a
missing or tampered version, an instance that refuses a reload), a permission error.
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import psycopg2
import redis.exceptions
import sqlalchemy as sa
from prefect.tasks import exponential_backoff

from bookrec.store import ObjectNotFound, PreconditionFailed, StoreError

_TRANSIENT = (
    StoreError,
    OSError,  # ConnectionError, TimeoutError, socket.gaierror, requests' connection errors
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
)
# Subclasses of the above that answer the same on every try.
_PERMANENT = (
    ObjectNotFound,
    PreconditionFailed,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
_AWS_RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "SlowDown", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "InternalFailure", "ServiceUnavailable",
})


def is_transient(exc: BaseException | None) -> bool:
    """True for a failure worth another try (see the module docstring); False otherwise."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error") or {}
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        return error.get("Code") in _AWS_RETRYABLE_CODES or status == 429 or status >= 500
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, _PERMANENT)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed run only if its error is transient."""
    return is_transient(state.result(raise_on_failure=False))


def io_retries(retries: int = 3, first_delay_s: float = 2.0) -> dict[str, Any]:
    """The retry policy for a task that does I/O, as ``@task`` keyword arguments:
    transient failures only, exponential backoff from ``first_delay_s`` with 30 % jitter."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=first_delay_s),
        "retry_jitter_factor": 0.3,
        "retry_condition_fn": retry_transient,
    }


IO_RETRIES = io_retries()
