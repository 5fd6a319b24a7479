"""API request logs: one JSON line per request, and batched inserts into ``api_logs``.

The request thread only formats a line and appends to a bounded queue; a background
thread inserts the records in batches. When PostgreSQL is down the batch is dropped and
counted (``bookrec_api_log_records_dropped_total``), and requests are not slowed down.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bookrec.settings import Settings
from serving.metrics import Metrics

log = logging.getLogger(__name__)
request_log = logging.getLogger("bookrec.api")

API_LOGS = sa.table(
    "api_logs",
    sa.column("logged_at", sa.DateTime(timezone=True)),
    sa.column("request_id", sa.Text),
    sa.column("method", sa.Text),
    sa.column("route", sa.Text),
    sa.column("path", sa.Text),
    sa.column("status", sa.SmallInteger),
    sa.column("latency_ms", sa.Float),
    sa.column("model_version", sa.Text),
    sa.column("source", sa.Text),
    sa.column("user_id", sa.BigInteger),
    sa.column("client", sa.Text),
)
_MAX_QUEUE = 50_000


class ApiLogWriter:
    """Formats the per-request log line and ships the records to PostgreSQL in batches."""

    def __init__(self, settings: Settings, metrics: Metrics, engine: Callable[[], Engine] | None):
        """``engine`` is a callable returning the engine (None disables database logging)."""
        self.metrics = metrics
        self.batch_size = max(1, settings.api_log_batch_size)
        self.interval_s = settings.api_log_flush_interval_s
        self._engine = engine
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=_MAX_QUEUE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, rec: dict[str, Any]) -> None:
        """Log one request as a JSON line and queue it for the database (never blocks)."""
        rec.setdefault("logged_at", datetime.now(UTC))
        if request_log.isEnabledFor(logging.INFO):
            line = {k: v for k, v in rec.items() if k != "logged_at"}
            line["ts"] = rec["logged_at"].isoformat()
            request_log.info(json.dumps(line, separators=(",", ":")))
        if self._engine is None:
            return
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self.metrics.api_log_dropped.inc()

    def start(self) -> None:
        """Start the background writer (once, in the serving process)."""
        if self._engine is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="api-log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush what is queued and stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.interval_s)
            self.flush()

    def _drain(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def flush(self) -> int:
        """Insert every queued record now, in batches; returns how many were written."""
        if self._engine is None:
            return 0
        written = 0
        while batch := self._drain():
            try:
                with self._engine().begin() as conn:
                    conn.execute(sa.insert(API_LOGS), batch)
            except Exception as exc:  # noqa: BLE001 - any database failure drops the batch
                self.metrics.api_log_dropped.inc(len(batch))
                log.warning("api_logs: dropped %d records (%s)", len(batch), exc.__class__.__name__)
                return written
            written += len(batch)
            self.metrics.api_log_written.inc(len(batch))
        return written


def now() -> float:
    """A monotonic clock for request latency."""
    return time.perf_counter()
