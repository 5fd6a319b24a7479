"""API request logs: one JSON line per request, and batched inserts into ``api_logs``.

Each record is encoded to JSON once, on the request path (orjson, ~1 us), and queued; a
background thread (``serving.batchwriter``) writes the lines (one write per batch) and
inserts the same bytes into PostgreSQL as one JSON array per batch. Without the background
thread (the Flask test client, ``flask run``) each line is written at once. When PostgreSQL
is down the batch is dropped and counted (``bookrec_api_log_records_dropped_total``), and
requests are not slowed down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from bookrec.settings import Settings
from serving.batchwriter import BatchWriter
from serving.metrics import Metrics

request_log = logging.getLogger("bookrec.api")

_MAX_QUEUE = 50_000
# The record's fields and their column types; ``ts`` goes into ``logged_at``.
_COLUMNS = (
    ("ts", "logged_at", "timestamptz"),
    ("request_id", "request_id", "text"),
    ("method", "method", "text"),
    ("route", "route", "text"),
    ("path", "path", "text"),
    ("status", "status", "smallint"),
    ("latency_ms", "latency_ms", "double precision"),
    ("model_version", "model_version", "text"),
    ("source", "source", "text"),
    ("user_id", "user_id", "bigint"),
    ("client", "client", "text"),
    ("variant", "variant", "text"),
    ("rollout_id", "rollout_id", "text"),
)
_INSERT = (
    f"INSERT INTO api_logs ({', '.join(c for _, c, _ in _COLUMNS)}) "
    f"SELECT {', '.join(f for f, _, _ in _COLUMNS)} FROM json_to_recordset(%s::json) "
    f"AS r({', '.join(f'{f} {t}' for f, _, t in _COLUMNS)})"
)


class ApiLogWriter(BatchWriter):
    """Formats the per-request log line and ships the records to PostgreSQL in batches."""

    def __init__(self, settings: Settings, metrics: Metrics, engine: Callable[[], Engine] | None):
        """``engine`` is a callable returning the engine (None disables database logging)."""
        # queued: (JSON line, line already written)
        super().__init__("api-log-writer", settings, engine, max_queue=_MAX_QUEUE,
                         dropped=metrics.api_log_dropped, written=metrics.api_log_written)
        self.metrics = metrics

    def record(self, rec: dict[str, Any]) -> None:
        """Stamp, encode and queue one request's record (never blocks)."""
        rec["ts"] = datetime.now(UTC)  # orjson writes it as ISO 8601 (RFC 3339)
        path = rec.get("path")
        if path and "\x00" in path:  # PostgreSQL text cannot hold NUL (e.g. /%00)
            rec["path"] = path.replace("\x00", "\ufffd")
        try:
            line = orjson.dumps(rec)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: log a replacement, never fail
            line = orjson.dumps(
                {
                    k: v.encode("utf-8", "replace").decode() if isinstance(v, str) else v
                    for k, v in rec.items()
                }
            )
        written = not self._writer.started  # no writer thread: the line now, the row on flush()
        if written:
            self._write_lines([line])
            if self._engine is None:
                return
        if not self._offer((line, written)) and not written:
            self._write_lines([line])  # the writer is stuck: keep the line, drop the row

    def request(
        self, *, request_id: str, method: str, route: str, path: str, status: int,
        elapsed: float, version: str, source: str | None, user_id: int | None,
        client: str | None, variant: str | None, rollout_id: str | None,
    ) -> None:
        """Record one answered request (the Flask path and ``serving/fastpath.py``)."""
        self.record(
            {
                "request_id": request_id,
                "method": method,
                "route": route,
                "path": path[:500],
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "model_version": version,
                "source": source,
                "user_id": user_id,
                "client": client,
                "variant": variant,
                "rollout_id": rollout_id,
            }
        )

    @staticmethod
    def _write_lines(lines: list[bytes]) -> None:
        if lines and request_log.isEnabledFor(logging.INFO):
            request_log.info(b"\n".join(lines).decode())

    def _before_insert(self, batch: list[tuple[bytes, bool]]) -> None:
        self._write_lines([line for line, done in batch if not done])

    def _insert(self, batch: list[tuple[bytes, bool]]) -> None:
        """One ``INSERT ... SELECT FROM json_to_recordset`` of the batch's JSON lines."""
        self._execute(_INSERT, (b"[" + b",".join(line for line, _ in batch) + b"]").decode())


def now() -> float:
    """A monotonic clock for request latency."""
    return time.perf_counter()
