"""API request logs: one JSON line per request, and batched inserts into ``api_logs``.

Each record is encoded to JSON once, on the request path (orjson, ~1 us), and queued; a
background thread writes the lines (one write per batch) and inserts the same bytes into
PostgreSQL as one JSON array per batch (``json_to_recordset``), so the parsing happens in
the database rather than under this worker's GIL. Without the background thread (the Flask
test client, ``flask run``) each line is written at once. When PostgreSQL is down the batch
is dropped and counted (``bookrec_api_log_records_dropped_total``), and requests are not
slowed down.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from bookrec.settings import Settings
from serving.metrics import Metrics
from serving.periodic import Periodic

log = logging.getLogger(__name__)
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
)
_INSERT = (
    f"INSERT INTO api_logs ({', '.join(c for _, c, _ in _COLUMNS)}) "
    f"SELECT {', '.join(f for f, _, _ in _COLUMNS)} FROM json_to_recordset(%s::json) "
    f"AS r({', '.join(f'{f} {t}' for f, _, t in _COLUMNS)})"
)


class ApiLogWriter:
    """Formats the per-request log line and ships the records to PostgreSQL in batches."""

    def __init__(self, settings: Settings, metrics: Metrics, engine: Callable[[], Engine] | None):
        """``engine`` is a callable returning the engine (None disables database logging)."""
        self.metrics = metrics
        self.batch_size = max(1, settings.api_log_batch_size)
        self._engine = engine
        self._queue: deque[tuple[bytes, bool]] = deque()  # (JSON line, line already written)
        self._writer = Periodic("api-log-writer", settings.api_log_flush_interval_s, self.flush)

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
        if len(self._queue) >= _MAX_QUEUE:  # the writer is stuck: keep the line, drop the row
            if not written:
                self._write_lines([line])
            self.metrics.api_log_dropped.inc()
            return
        self._queue.append((line, written))

    @staticmethod
    def _write_lines(lines: list[bytes]) -> None:
        if lines and request_log.isEnabledFor(logging.INFO):
            request_log.info(b"\n".join(lines).decode())

    def start(self) -> None:
        """Start the background writer (once, in the serving process)."""
        self._writer.start()

    def stop(self) -> None:
        """Flush what is queued and stop the writer."""
        self._writer.stop()

    def _drain(self) -> list[tuple[bytes, bool]]:
        batch: list[tuple[bytes, bool]] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.popleft())
            except IndexError:
                break
        return batch

    def flush(self) -> int:
        """Write and load every queued record now, in batches; returns how many rows loaded."""
        written = 0
        database_ok = self._engine is not None
        while batch := self._drain():
            self._write_lines([line for line, done in batch if not done])
            if self._engine is None:
                continue
            if not database_ok:  # it failed on an earlier batch: do not wait on it again
                self.metrics.api_log_dropped.inc(len(batch))
                continue
            try:
                self._insert([line for line, _ in batch])
            except Exception as exc:  # noqa: BLE001 - any database failure drops the batch
                database_ok = False
                self.metrics.api_log_dropped.inc(len(batch))
                log.warning("api_logs: dropped %d records (%s)", len(batch), exc.__class__.__name__)
                continue
            written += len(batch)
            self.metrics.api_log_written.inc(len(batch))
        return written

    def _insert(self, lines: list[bytes]) -> None:
        """One ``INSERT ... SELECT FROM json_to_recordset`` of the batch's JSON lines."""
        document = (b"[" + b",".join(lines) + b"]").decode()
        raw = self._engine().raw_connection()
        try:
            with raw.cursor() as cur:
                cur.execute(_INSERT, (document,))
            raw.commit()
        except Exception:
            raw.rollback()
            raise
        finally:
            raw.close()


def now() -> float:
    """A monotonic clock for request latency."""
    return time.perf_counter()
